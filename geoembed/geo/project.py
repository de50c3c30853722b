"""Local metric projections centred on a point set (pyproj), safe across the antimeridian; a global
equal-area projection for sampling uniformly in area."""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Transformer

from geoembed.errors import InputError
from geoembed.geo.lon import continuous_lon, wrap_lon

__all__ = ["EQUAL_AREA_PROJ", "equal_area_transformers", "local_crs", "local_metric_crs", "project_local",
           "to_local_metres", "utm_crs"]

#: Lambert's cylindrical equal-area projection on the WGS84 ellipsoid (authalic: uniform in its plane is
#: uniform in area on the Earth), without longitude wrapping (``+over``), so that a shape moved east of
#: the antimeridian (longitudes up to 540) stays one piece. Independent of the data: a shape's projected
#: coordinates never depend on which other shapes are projected with it.
EQUAL_AREA_PROJ = "+proj=cea +lon_0=0 +lat_ts=0 +ellps=WGS84 +units=m +over +no_defs"


def local_metric_crs(lon: float, lat: float) -> CRS:
    """A transverse Mercator projection centred on (lon, lat): metres, negligible distortion locally."""
    return CRS.from_proj4(f"+proj=tmerc +lat_0={lat:.8f} +lon_0={lon:.8f} +k=1 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")


def local_crs(lon: np.ndarray, lat: np.ndarray) -> CRS:
    """:func:`local_metric_crs` centred on the mean of the points (their longitudes taken continuously,
    so a set across the antimeridian is centred near 180, not near 0)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    return local_metric_crs(float(wrap_lon(np.nanmean(continuous_lon(lon)))), float(np.nanmean(lat)))


def to_local_metres(lon: np.ndarray, lat: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Project degrees to the given metric CRS."""
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(np.asarray(lon, float), np.asarray(lat, float))
    return np.asarray(x), np.asarray(y)


def project_local(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metres in the local projection of the points themselves (:func:`local_crs`)."""
    return to_local_metres(lon, lat, local_crs(lon, lat))


def utm_crs(lon: np.ndarray, lat: np.ndarray) -> CRS:
    """The UTM CRS of the centre of the points' extent (an extent across the antimeridian stays whole)."""
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    lon = continuous_lon(np.asarray(lon, dtype=float))
    lat = np.asarray(lat, dtype=float)
    cx, cy = float(wrap_lon((lon.min() + lon.max()) / 2)), (lat.min() + lat.max()) / 2
    info = query_utm_crs_info(datum_name="WGS 84", area_of_interest=AreaOfInterest(cx, cy, cx, cy))
    if not info:
        raise InputError(f"no UTM zone for the point extent centred at lon {cx}, lat {cy}")
    return CRS.from_epsg(int(info[0].code))


def equal_area_transformers():
    """(forward, inverse) pyproj Transformers between EPSG:4326 lon/lat and :data:`EQUAL_AREA_PROJ` metres
    (longitudes are not wrapped either way: wrap the inverse's output with :func:`~geoembed.geo.wrap_lon`)."""
    ea = CRS.from_proj4(EQUAL_AREA_PROJ)
    return (Transformer.from_crs("EPSG:4326", ea, always_xy=True),
            Transformer.from_crs(ea, "EPSG:4326", always_xy=True))
