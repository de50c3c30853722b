"""Training footprints and distances to them: great-circle and azimuthal-equidistant distances, and a
vectorised support index (containment and distance to a footprint, 0 inside).

The footprint is a shapely (Multi)Polygon in EPSG:4326 with longitudes in [-180, 180], split at the
antimeridian when it crosses it. Containment is tested in degrees (that is how the footprint is defined)
with a prepared geometry, so points inside cost almost nothing. Points outside are projected, with the
densified footprint taken as one continuous shape, to a spherical azimuthal equidistant projection
centred on the footprint, and the planar distance there is reported: exact from the centre, within a few
percent for a continent-sized footprint and points on another continent; good for a support flag.
"""

from __future__ import annotations

import numpy as np

from geoembed.geo.lon import continuous_lon, east_of_antimeridian, split_at_antimeridian

__all__ = ["EARTH_RADIUS_KM", "SupportIndex", "aeqd_km", "haversine_km", "training_footprint"]

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in km between arrays of points given in degrees."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def aeqd_km(lon: np.ndarray, lat: np.ndarray, lon0: float, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    """Spherical azimuthal equidistant projection centred on (lon0, lat0); x, y in km."""
    lam = np.radians(np.asarray(lon, dtype=np.float64) - lon0)
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    phi0 = np.radians(lat0)
    sin_phi, cos_phi, cos_lam = np.sin(phi), np.cos(phi), np.cos(lam)
    cos_c = np.clip(np.sin(phi0) * sin_phi + np.cos(phi0) * cos_phi * cos_lam, -1.0, 1.0)
    c = np.arccos(cos_c)
    sin_c = np.sin(c)
    k = np.where(sin_c > 1e-12, c / np.where(sin_c > 1e-12, sin_c, 1.0), 1.0)
    x = EARTH_RADIUS_KM * k * cos_phi * np.sin(lam)
    y = EARTH_RADIUS_KM * k * (np.cos(phi0) * sin_phi - np.sin(phi0) * cos_phi * cos_lam)
    return x, y


def training_footprint(lon: np.ndarray, lat: np.ndarray):
    """Convex hull of the locations in lon/lat (a small buffer when degenerate), split at the
    antimeridian when they cross it."""
    import shapely

    hull = shapely.MultiPoint(np.column_stack([continuous_lon(lon), np.asarray(lat, dtype=np.float64)])).convex_hull
    if hull.geom_type != "Polygon" or hull.area == 0:
        hull = hull.buffer(1e-3)
    return split_at_antimeridian(hull)


class SupportIndex:
    """Vectorised containment and distance-to-footprint for one training footprint."""

    def __init__(self, footprint, densify_deg: float = 0.05) -> None:
        import shapely

        if footprint is None or shapely.is_empty(footprint):
            raise ValueError("the bundle has no training footprint")
        self.footprint = footprint
        self._prepared = shapely.from_wkb(shapely.to_wkb(footprint))
        shapely.prepare(self._prepared)
        whole = east_of_antimeridian(footprint)  # a footprint split at 180 is projected as one shape
        centre = whole.centroid
        self.centre = (float(centre.x), float(centre.y))
        dense = shapely.segmentize(whole, densify_deg)  # the projected outline follows the edges
        self._poly_km = shapely.transform(dense, lambda xy: np.column_stack(aeqd_km(xy[:, 0], xy[:, 1], *self.centre)))
        shapely.prepare(self._poly_km)

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """True where (lon, lat) lies inside or on the footprint (non-finite input gives False)."""
        import shapely

        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        ok = np.isfinite(lon) & np.isfinite(lat)
        if ok.all():
            return shapely.intersects_xy(self._prepared, lon, lat)
        inside = np.zeros(lon.shape, dtype=bool)
        inside[ok] = shapely.intersects_xy(self._prepared, lon[ok], lat[ok])
        return inside

    def distance_km(self, lon: np.ndarray, lat: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
        """Distance in km to the footprint: 0 inside, NaN for non-finite input."""
        import shapely

        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if inside is None:
            inside = self.contains(lon, lat)
        out = np.zeros(lon.shape, dtype=np.float64)
        finite = np.isfinite(lon) & np.isfinite(lat)
        out[~finite] = np.nan
        idx = np.flatnonzero(finite & ~inside)
        if len(idx):
            x, y = aeqd_km(lon[idx], lat[idx], *self.centre)
            out[idx] = shapely.distance(shapely.points(x, y), self._poly_km)
        return out
