"""Opening user rasters with clear errors, and their footprints in EPSG:4326."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from geoembed.errors import InputError


def open_raster(path: str | os.PathLike):
    """Open a raster (GeoTIFF, COG, VRT or any GDAL format) for reading.

    Raises InputError naming the file when it is missing, unreadable or has no CRS.
    Remote paths (``s3://``, ``https://``, ``/vsi...``) are passed to GDAL unchanged.
    """
    p = str(path)
    remote = "://" in p or p.startswith("/vsi")
    if not remote and not Path(p).is_file():
        raise InputError(f"raster {p} does not exist")
    try:
        ds = rasterio.open(p)
    except RasterioIOError as err:
        raise InputError(f"cannot read raster {p}: {err}") from None
    if ds.crs is None:
        ds.close()
        raise InputError(f"raster {p} has no CRS: georeference it (e.g. gdal_edit.py -a_srs) and retry")
    if ds.transform.is_identity:
        ds.close()
        raise InputError(f"raster {p} has no geotransform (pixel coordinates only)")
    return ds


def raster_footprint(path: str | os.PathLike, densify: int = 21):
    """The raster's extent as a shapely Polygon in EPSG:4326 (edges densified before reprojection)."""
    import shapely
    from pyproj import Transformer

    with open_raster(path) as ds:
        left, bottom, right, top = ds.bounds
        crs = ds.crs
    t = np.linspace(0.0, 1.0, densify)
    xs = np.concatenate([left + (right - left) * t, np.full(densify, right),
                         right - (right - left) * t, np.full(densify, left)])
    ys = np.concatenate([np.full(densify, bottom), bottom + (top - bottom) * t,
                         np.full(densify, top), top - (top - bottom) * t])
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(xs, ys)
    return shapely.make_valid(shapely.Polygon(np.column_stack([lon, lat])))
