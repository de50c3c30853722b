"""Opening user rasters with clear errors, their CRS (or the config's override), their files and
fingerprints, and their footprints in EPSG:4326.

A raster is named by a path or any GDAL dataset name (a subdataset such as ``NETCDF:"x.nc":t2m``, a
``/vsizip/`` member, a URL; :mod:`geoembed.io.gdalnames`). A file without a CRS (NetCDF often keeps it
in an attribute GDAL does not read) is given one by the config's ``crs:`` override, which applies when
geoembed reads the file; the file itself is never edited.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioIOError

from geoembed.errors import ConfigError, InputError
from geoembed.geo.lon import split_at_antimeridian
from geoembed.io import gdalnames

__all__ = ["open_raster", "parse_crs", "raster_crs", "raster_files", "raster_fingerprint", "raster_footprint",
           "warn_once"]

log = logging.getLogger(__name__)
_WARNED: set = set()


def warn_once(key, message: str, logger: logging.Logger = log) -> None:
    """Log a warning about an input once per process (a build resolves the same source several times)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _open(p: str):
    """``rasterio.open`` with errors that name the raster and say what GDAL said."""
    if not gdalnames.is_remote(p):
        for f in gdalnames.local_files(p):
            if not Path(f).is_file():
                raise InputError(f"raster {p} does not exist" if f == p else f"raster {p}: {f} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except RasterioIOError as err:
        raise InputError(f"cannot read raster {p}: {err}{_subdatasets_hint(p)}") from None


def _subdatasets_hint(p: str) -> str:
    """For a subdataset name GDAL cannot open: the subdatasets its file does hold."""
    prefix, inner, _ = gdalnames.split(p)
    if inner is None or not prefix or prefix.startswith("/vsi"):
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(inner) as ds:
                subs = list(ds.subdatasets)
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return f" ({inner} holds the subdatasets {', '.join(subs[:10])}{' ...' if len(subs) > 10 else ''})" if subs else ""


def parse_crs(value: str, where: str) -> CRS:
    """A CRS given in the config (``EPSG:4326``, WKT, PROJ string ...); ConfigError naming ``where``."""
    try:
        crs = CRS.from_user_input(value)
    except (CRSError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {value!r} is not a CRS ({err})") from None
    return crs


def raster_crs(ds, crs: str | None = None, where: str | None = None) -> CRS:
    """The CRS geoembed uses for an open raster: the override ``crs`` when given (a warning names
    both when the file declares another one), else the file's."""
    if crs is None:
        return ds.crs
    given = parse_crs(crs, where or f"crs of raster {ds.name}")
    if ds.crs is not None and ds.crs != given:
        warn_once(("crs", ds.name, given.to_wkt()),
                  f"raster {ds.name} declares the CRS {ds.crs.to_string() or ds.crs.to_wkt()}; the configured crs "
                  f"{crs} is used instead")
    return given


def open_raster(path: str | os.PathLike, crs: str | None = None):
    """Open a raster (GeoTIFF, COG, VRT, a GDAL dataset name) for reading.

    Raises InputError naming the raster when it (or the file behind a GDAL name) is missing or
    unreadable, holds only subdatasets, has no geotransform, or has no CRS while ``crs`` (the
    config's override) is not given. Remote names (``s3://``, ``https://``, ``/vsicurl/``) are passed
    to GDAL unchanged.
    """
    p = str(path)
    ds = _open(p)
    if ds.count == 0:
        subs = list(ds.subdatasets)
        ds.close()
        if subs:
            raise InputError(f"raster {p} holds no bands of its own but {len(subs)} subdatasets; name one as the "
                             f"source, e.g. {subs[0]} (all: {', '.join(subs[:10])}{' ...' if len(subs) > 10 else ''})")
        raise InputError(f"raster {p} has no bands")
    if ds.crs is None and crs is None:
        ds.close()
        raise InputError(f"raster {p} has no CRS: give one in the config with `crs:` (a raster view: one entry "
                         "per source, e.g. `crs: [EPSG:4326]`; region or weight: `crs: EPSG:4326`), or "
                         "georeference the file (gdal_edit.py -a_srs)")
    if ds.transform.is_identity:
        ds.close()
        raise InputError(f"raster {p} has no geotransform (pixel coordinates only)")
    return ds


def raster_files(path: str | os.PathLike, files: list[str] | None = None) -> list[str]:
    """Every file GDAL reads for a raster, in GDAL's order (``files``: the open dataset's ``files``
    when the caller has them): sidecars, a VRT's sources (those of a VRT inside it too), and for a
    GDAL name the file behind it (a subdataset's file, a ``/vsizip/`` member's archive). Remote
    sources are kept as named."""
    p = str(path)
    if files is None:
        with _open(p) as ds:
            files = list(ds.files)
    out: list[str] = []
    seen: set[str] = set()

    def add(name: str, depth: int) -> None:
        for f in ([name] if gdalnames.is_remote(name) else gdalnames.local_files(name)):
            if f in seen:
                continue
            seen.add(f)
            out.append(f)
            if depth < 8 and f != p and f.lower().endswith(".vrt") and os.path.isfile(f):
                with _open(f) as inner:
                    for g in inner.files:
                        add(str(g), depth + 1)

    for f in [str(f) for f in files] or [p]:
        add(f, 0)
    return out


def raster_fingerprint(path: str | os.PathLike, files: list[str] | None = None) -> str:
    """Fingerprint of a raster with every file GDAL reads for it (:func:`raster_files`): a GeoTIFF
    alone is its file's fingerprint; a VRT (or a file with sidecars such as .ovr, .msk, .aux.xml)
    combines those of all its files in GDAL's order, so a changed mosaic tile changes the VRT's
    fingerprint too; a GDAL name combines its form (paths left out) with its files' fingerprints.
    ``files``: the dataset's ``files`` when the caller has it open already."""
    from geoembed.io.fingerprint import source_fingerprint, text_fingerprint

    p = str(path)
    if gdalnames.is_remote(p):
        return source_fingerprint(p)
    files = raster_files(p, files)
    prints = [source_fingerprint(f) for f in files]
    if gdalnames.is_gdal_name(p, os.getcwd()):
        return text_fingerprint({"name": gdalnames.template(p), "files": prints})
    if len(files) == 1:
        return source_fingerprint(p)
    return text_fingerprint({"files": prints})


def raster_footprint(path: str | os.PathLike, densify: int = 21, crs: str | None = None):
    """The raster's extent as a shapely (Multi)Polygon in EPSG:4326 (edges densified before
    reprojection), with longitudes in [-180, 180]: an extent across the antimeridian (a UTM zone 60
    or 1 raster, a geographic raster from 170 to 190 degrees or over 0..360) is split there into
    its parts on either side, so that points on both sides are inside it. ``crs``: the config's
    override of the raster's CRS."""
    import shapely
    from pyproj import Transformer

    with open_raster(path, crs=crs) as ds:
        left, bottom, right, top = ds.bounds
        src_crs = raster_crs(ds, crs)
    t = np.linspace(0.0, 1.0, densify)
    xs = np.concatenate([left + (right - left) * t, np.full(densify, right),
                         right - (right - left) * t, np.full(densify, left)])
    ys = np.concatenate([np.full(densify, bottom), bottom + (top - bottom) * t,
                         np.full(densify, top), top - (top - bottom) * t])
    tr = Transformer.from_crs(src_crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(xs, ys)
    # a continuous ring (no jump of ~360 degrees where an edge crosses the antimeridian)
    lon = np.unwrap(np.asarray(lon, dtype=np.float64), period=360.0)
    ring = shapely.make_valid(shapely.Polygon(np.column_stack([lon, lat])))
    return split_at_antimeridian(ring)
