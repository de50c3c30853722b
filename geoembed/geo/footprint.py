"""Training footprints and distances to them: great-circle and azimuthal-equidistant distances, the
point at a distance and bearing, points uniform in area inside a region, and a vectorised support index
(containment and distance to a footprint, 0 inside).

The footprint is a shapely (Multi)Polygon in EPSG:4326 with longitudes in [-180, 180], split at the
antimeridian when it crosses it. Containment is tested in degrees (that is how the footprint is defined)
with a prepared geometry, so points inside cost almost nothing. Points outside are projected, with the
densified footprint taken as one continuous shape, to a spherical azimuthal equidistant projection
centred on the footprint, and the planar distance there is reported: exact from the centre, within a few
percent for a continent-sized footprint and points on another continent; good for a support flag.
"""

from __future__ import annotations

import numpy as np

from geoembed.errors import InputError
from geoembed.geo.lon import continuous_lon, east_of_antimeridian, split_at_antimeridian, wrap_lon

__all__ = ["EARTH_RADIUS_KM", "SupportIndex", "aeqd_km", "destination", "haversine_km", "training_footprint",
           "uniform_in_area"]

EARTH_RADIUS_KM = 6371.0088


def haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in km between arrays of points given in degrees."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def destination(lon, lat, bearing_deg, distance_km) -> tuple[np.ndarray, np.ndarray]:
    """The points ``distance_km`` along the great circle leaving (lon, lat) at ``bearing_deg`` (clockwise
    from north), all in degrees; longitudes wrapped to [-180, 180)."""
    lon1, lat1, brg = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon, lat, bearing_deg))
    d = np.asarray(distance_km, dtype=np.float64) / EARTH_RADIUS_KM
    sin_lat2 = np.sin(lat1) * np.cos(d) + np.cos(lat1) * np.sin(d) * np.cos(brg)
    lat2 = np.arcsin(np.clip(sin_lat2, -1.0, 1.0))
    lon2 = lon1 + np.arctan2(np.sin(brg) * np.sin(d) * np.cos(lat1), np.cos(d) - np.sin(lat1) * sin_lat2)
    return wrap_lon(np.degrees(lon2)), np.degrees(lat2)


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


def uniform_in_area(geom, n: int, rng: np.random.Generator, accept=None, share: float = 1.0,
                    max_rounds: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform in area on the sphere inside the lon/lat ``geom`` (rejection from its bounding
    box, latitude drawn through sin(lat); a region across the antimeridian is drawn from the box around
    its unwrapped parts) for which ``accept(lon, lat)`` holds (a raster's valid-data area, covering
    about ``share`` of ``geom``). Deterministic for ``rng``'s state; InputError after ``max_rounds``
    rounds of draws without n points."""
    import shapely

    geom = east_of_antimeridian(geom)
    x0, y0, x1, y1 = geom.bounds
    s0, s1 = np.sin(np.radians(y0)), np.sin(np.radians(y1))
    shapely.prepare(geom)
    out_lon, out_lat = [], []
    got = 0
    for _ in range(max_rounds):
        m = max(1024, int((n - got) * 1.3 * geom.envelope.area / max(geom.area, 1e-12)))
        if share < 1.0:  # more draws for a sparse valid area, at most 4 M per round
            m = max(m, min(int(m / max(share, 1e-9)), 1 << 22))
        lon = rng.uniform(x0, x1, m)
        lat = np.degrees(np.arcsin(rng.uniform(s0, s1, m)))
        inside = shapely.contains_xy(geom, lon, lat)
        if accept is not None:
            sel = np.flatnonzero(inside)
            inside[sel] = accept(wrap_lon(lon[sel]), lat[sel])
        out_lon.append(lon[inside])
        out_lat.append(lat[inside])
        got += int(inside.sum())
        if got >= n:
            break
    lon, lat = np.concatenate(out_lon)[:n], np.concatenate(out_lat)[:n]
    lon = wrap_lon(lon)
    if len(lon) < n:
        raise InputError(f"could not draw {n} points inside the region (got {len(lon)}): is it degenerate?")
    return lon, lat

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
