"""Raster sources: what a raster view reads, checked and described, and the open handles it reads through.

:func:`resolve_sources` opens every configured source once (a path or a GDAL dataset name such as
``NETCDF:"x.nc":t2m``), checks it (missing or unreadable files, no CRS and no ``crs:`` override, band
indexes out of range, complex or mixed band types, a ``nodata`` override the bands cannot hold are
errors naming the file or setting; :mod:`~geoembed.views.raster.nodata` warns of an override that
differs from the file's value and of an undeclared fill) and describes it (CRS, bands, nodata,
resolution, fingerprint of every file behind it). A source's CRS is the configured override, else the
file's; its nodata is the configured override, else the file's; a band without one whose dataset has
a mask (internal mask or alpha band) is masked by it instead (:func:`band_nodata`).

Handles: each chunk opens its sources itself (rasterio datasets are not picklable) through a
per-thread cache of open handles keyed by path, size and mtime (:func:`open_cached`); the build closes
them when it finishes (:func:`close_cached_datasets`; on a distributed cluster the workers keep at
most 8 handles per thread). A replaced file is therefore opened afresh.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoembed.config.build import RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io import gdalnames
from geoembed.io.rasters import open_raster, raster_crs, raster_fingerprint
from geoembed.views.raster.nodata import check_nodata_override, warn_undeclared_fill

__all__ = [
    "RasterSource",
    "band_nodata",
    "check_dtypes",
    "close_cached_datasets",
    "default_bands",
    "file_key",
    "nodata_json",
    "open_cached",
    "resolve_sources",
]


@dataclass(frozen=True)
class RasterSource:
    """One raster input: ``bands`` are 1-based indexes (None = :func:`default_bands`); ``nodata``
    overrides the file's, and ``crs`` (WKT) the file's CRS."""

    path: str
    bands: tuple[int, ...] | None = None
    nodata: float | None = None
    crs: str | None = None

    def crs_wkt(self, ds) -> str:
        """The CRS chips are read in: the override, else the open dataset's."""
        return self.crs if self.crs is not None else ds.crs.to_wkt()


def default_bands(ds) -> tuple[int, ...]:
    """The bands a source gives when none are configured: all but alpha bands (an alpha band is the
    others' validity mask, applied to them, not data), or all when every band is alpha."""
    from rasterio.enums import ColorInterp

    data = tuple(b for b in range(1, ds.count + 1) if ds.colorinterp[b - 1] != ColorInterp.alpha)
    return data or tuple(range(1, ds.count + 1))


_local = threading.local()
_DATASETS_LOCK = threading.Lock()
_ALL_DATASET_CACHES: list[dict] = []
_MAX_OPEN_PER_THREAD = 8


def open_cached(path: str, crs: str | None = None):
    """Open a raster through a per-thread cache of handles, keyed by path, size and mtime (of the
    files behind a GDAL name); ``crs``: the configured override (a file without a CRS is fine then).

    Consecutive chunks then share GDAL's block cache, so a tile on the border of two chunk windows
    is decompressed once per thread instead of once per chunk. A replaced file gets a new handle.
    """
    try:
        key = file_key(path)
    except OSError:
        return open_raster(path, crs=crs)  # open_raster raises the clear error
    cache = getattr(_local, "datasets", None)
    if cache is None:
        cache = _local.datasets = {}
        with _DATASETS_LOCK:
            _ALL_DATASET_CACHES.append(cache)
    ds = cache.pop(key, None)
    if ds is None or ds.closed:
        ds = open_raster(path, crs=crs)
        while len(cache) >= _MAX_OPEN_PER_THREAD:
            cache.pop(next(iter(cache))).close()
    cache[key] = ds  # most recently used last
    return ds


def close_cached_datasets() -> None:
    """Close every raster handle cached by :func:`extract_chips` (call when no chunk is running)."""
    with _DATASETS_LOCK:
        for cache in _ALL_DATASET_CACHES:
            for ds in list(cache.values()):
                ds.close()
            cache.clear()


def band_nodata(ds, bands: Sequence[int], override: float | None) -> tuple[list, list[bool]]:
    """Effective nodata per band and whether the dataset mask must be read instead."""
    from rasterio.enums import MaskFlags

    nodata, use_mask = [], []
    for b in bands:
        nd = override if override is not None else ds.nodatavals[b - 1]
        flags = ds.mask_flag_enums[b - 1]
        nodata.append(None if nd is None else float(nd))
        use_mask.append(nd is None and (MaskFlags.per_dataset in flags or MaskFlags.alpha in flags))
    return nodata, use_mask


def check_dtypes(ds, path: str, bands: Sequence[int]) -> None:
    """Chips hold real numbers: complex bands (e.g. SAR SLC) and bands of mixed types are refused."""
    types = {ds.dtypes[b - 1] for b in bands}
    if len(types) > 1:
        raise InputError(f"raster {path}: bands {list(bands)} have different data types {sorted(types)}; "
                         "list them as separate sources")
    kind = np.dtype(types.pop()).kind
    if kind not in "uif":
        raise InputError(f"raster {path}: data type {ds.dtypes[bands[0] - 1]} is not supported (real integer "
                         "or float bands only; convert complex data to amplitude or intensity first)")


def file_key(path: str) -> tuple:
    """What identifies a raster's content cheaply: path, size and mtime (of each file behind a GDAL
    name; the name alone when remote). Raises OSError when a file is missing."""
    if gdalnames.is_remote(path):
        return (path,)
    if not os.path.isfile(path) and gdalnames.is_gdal_name(path):
        return (path, *((st.st_size, st.st_mtime_ns) for st in map(os.stat, gdalnames.local_files(path))))
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _abs_path(p: str) -> str:
    return gdalnames.absolute(p) if gdalnames.is_gdal_name(p, os.getcwd()) else os.path.abspath(p)


def _stem(path: str) -> str:
    """A short name of a source for its band names: the file's stem (``x:t2m`` for ``NETCDF:"x.nc":t2m``)."""
    prefix, inner, suffix = gdalnames.split(path)
    if inner is None or prefix.startswith("/vsi") or (not prefix and not suffix):
        return Path(path).stem
    tail = suffix.strip('":/').replace("/", "_")
    return f"{_stem(inner)}:{tail}" if tail else _stem(inner)


def nodata_json(v: float | None) -> float | str | None:
    """A nodata value for JSON (NaN as ``"nan"``)."""
    if v is None:
        return None
    return "nan" if math.isnan(v) else v


def resolve_sources(cfg: RasterViewConfig) -> tuple[list[RasterSource], list[dict]]:
    """Open and check every source of a raster view; returns the sources and their metadata.

    Raises InputError naming the file (missing, unreadable, no CRS) and ConfigError naming the
    setting (band index out of range, a CRS or nodata override that cannot apply).
    """
    sources, infos = [], []
    for k, path in enumerate(cfg.sources):
        p = _abs_path(path)
        crs_override = cfg.crs[k] if cfg.crs is not None else None
        with open_raster(p, crs=crs_override) as ds:
            crs = raster_crs(ds, crs_override, where=f"view {cfg.name}: crs[{k}] for {path}")
            sel = cfg.bands[k] if cfg.bands is not None else None
            if sel is not None:
                if not sel:
                    raise ConfigError(f"view {cfg.name}: bands[{k}] for {path} is empty")
                bad = [b for b in sel if not 1 <= b <= ds.count]
                if bad:
                    raise ConfigError(
                        f"view {cfg.name}: bands[{k}] = {sel} but raster {path} has bands 1..{ds.count}"
                    )
            bands = tuple(int(b) for b in sel) if sel is not None else default_bands(ds)
            check_dtypes(ds, p, bands)
            override = cfg.nodata[k] if cfg.nodata is not None else None
            check_nodata_override(ds, p, bands, override, f"view {cfg.name}: nodata[{k}]")
            warn_undeclared_fill(ds, p, bands, override, f"view {cfg.name}: source {k}")
            nodata, use_mask = band_nodata(ds, bands, override)
            epsg = crs.to_epsg()
            stem = _stem(path)
            infos.append({
                "path": p,
                "crs_wkt": crs.to_wkt(),
                "crs_epsg": epsg,
                "bands": list(bands),
                "band_names": [ds.descriptions[b - 1] or f"{stem}:b{b}" for b in bands],
                "dtype": ds.dtypes[bands[0] - 1],
                "nodata": [nodata_json(v) for v in nodata],
                "nodata_source": "config" if override is not None else "file",
                "uses_mask": [bool(u) for u in use_mask],
                "res": list(ds.res),
                "shape": [ds.height, ds.width],
                "bounds": list(ds.bounds),
                "files": [str(f) for f in ds.files],
            })
        sources.append(RasterSource(p, bands, override, None if crs_override is None else crs.to_wkt()))
    for info in infos:
        info["fingerprint"] = raster_fingerprint(info["path"], files=info.pop("files"))
    return sources, infos


