"""Raster sources: what a raster view reads, checked and described, and the open handles it reads through.

:func:`resolve_sources` opens every configured file once, checks it (missing or unreadable files, no
CRS, band indexes out of range, complex or mixed band types are errors naming the file or setting) and
describes it (CRS, bands, nodata, resolution, sha256 fingerprint). A source's nodata is the configured
override, else the file's; a band without one whose dataset has a mask (internal mask or alpha band)
is masked by it instead (:func:`band_nodata`).

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
from geoembed.io.rasters import open_raster, raster_fingerprint

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
    overrides the file's."""

    path: str
    bands: tuple[int, ...] | None = None
    nodata: float | None = None


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


def open_cached(path: str):
    """Open a raster through a per-thread cache of handles, keyed by path, size and mtime.

    Consecutive chunks then share GDAL's block cache, so a tile on the border of two chunk windows
    is decompressed once per thread instead of once per chunk. A replaced file gets a new handle.
    """
    remote = "://" in path or path.startswith("/vsi")
    try:
        st = None if remote else os.stat(path)
    except OSError:
        return open_raster(path)  # open_raster raises the clear error
    key = (path, None if st is None else (st.st_size, st.st_mtime_ns))
    cache = getattr(_local, "datasets", None)
    if cache is None:
        cache = _local.datasets = {}
        with _DATASETS_LOCK:
            _ALL_DATASET_CACHES.append(cache)
    ds = cache.pop(key, None)
    if ds is None or ds.closed:
        ds = open_raster(path)
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
    """What identifies a file's content cheaply: path, size and mtime (the path alone when remote)."""
    if "://" in path or path.startswith("/vsi"):
        return (path,)
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _abs_path(p: str) -> str:
    return p if ("://" in p or p.startswith("/vsi")) else os.path.abspath(p)


def nodata_json(v: float | None) -> float | str | None:
    """A nodata value for JSON (NaN as ``"nan"``)."""
    if v is None:
        return None
    return "nan" if math.isnan(v) else v


def resolve_sources(cfg: RasterViewConfig) -> tuple[list[RasterSource], list[dict]]:
    """Open and check every source of a raster view; returns the sources and their metadata.

    Raises InputError naming the file (missing, unreadable, no CRS) and ConfigError naming the
    setting (band index out of range).
    """
    sources, infos = [], []
    for k, path in enumerate(cfg.sources):
        p = _abs_path(path)
        with open_raster(p) as ds:
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
            nodata, use_mask = band_nodata(ds, bands, override)
            epsg = ds.crs.to_epsg()
            stem = Path(path).stem
            infos.append({
                "path": p,
                "crs_wkt": ds.crs.to_wkt(),
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
        sources.append(RasterSource(p, bands, override))
    for info in infos:
        info["fingerprint"] = raster_fingerprint(info["path"], files=info.pop("files"))
    return sources, infos


