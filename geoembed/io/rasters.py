"""Opening user rasters with clear errors, and their footprints in EPSG:4326."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from geoembed.errors import InputError
from geoembed.geo.lon import split_at_antimeridian


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


def raster_fingerprint(path: str | os.PathLike, files: list[str] | None = None) -> str:
    """Fingerprint of a raster with every file GDAL reads for it: a GeoTIFF alone is its file's
    fingerprint; a VRT (or a file with sidecars such as .ovr, .msk, .aux.xml) combines those of all its
    files in GDAL's order, so a changed mosaic tile changes the VRT's fingerprint too. ``files``: the
    dataset's ``files`` when the caller has it open already."""
    from geoembed.io.fingerprint import source_fingerprint, text_fingerprint

    p = str(path)
    if "://" in p or p.startswith("/vsi"):
        return source_fingerprint(p)
    if files is None:
        with open_raster(p) as ds:
            files = list(ds.files)
    files = [str(f) for f in files] or [p]
    if len(files) == 1:
        return source_fingerprint(p)
    return text_fingerprint({"files": [source_fingerprint(f) for f in files]})


def raster_footprint(path: str | os.PathLike, densify: int = 21):
    """The raster's extent as a shapely (Multi)Polygon in EPSG:4326 (edges densified before
    reprojection), with longitudes in [-180, 180]: an extent across the antimeridian (a UTM zone 60
    or 1 raster, a geographic raster from 170 to 190 degrees or over 0..360) is split there into
    its parts on either side, so that points on both sides are inside it."""
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
    # a continuous ring (no jump of ~360 degrees where an edge crosses the antimeridian)
    lon = np.unwrap(np.asarray(lon, dtype=np.float64), period=360.0)
    ring = shapely.make_valid(shapely.Polygon(np.column_stack([lon, lat])))
    return split_at_antimeridian(ring)
