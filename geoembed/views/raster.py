"""The raster view: C x H x W chips centred on each location, from any number of rasters.

Geometry
    Every chip is north-up on a local azimuthal-equidistant grid centred on its own location
    (WGS84 ellipsoid): chip pixel (r, c) has its centre ``(c - (S-1)/2) * res`` metres east and
    ``((S-1)/2 - r) * res`` metres north of the location. The chip therefore does not depend on
    which chunk its location falls in, nor on the other locations.

    The chip centre is transformed exactly (pyproj, EPSG:4326 -> source CRS -> source pixel space).
    The offsets within a chip use a local second-order model of that map around the location:
    the Jacobian d(source col,row)/d(east,north) plus the second derivatives, from central
    differences over 8 geodesic offsets of half the chip extent (9 exact transforms per location
    and source, instead of S*S). The remaining error is third order in the chip half-extent: below
    0.002 source pixel for 256-pixel chips of 30 m in UTM (same or another zone) and EPSG:4326 at
    70 N, against the exact per-pixel transform (tests check it). A first-order model alone would
    be off by 0.13 source pixel for such chips on a geographic raster.

Sampling
    Each source is read once per group of nearby locations (one window covering all their chips,
    clipped to the raster; see "Memory"), converted to float32 with NaN for nodata, the dataset
    mask (when no nodata is declared) and anything outside the raster, then sampled with numpy
    fancy indexing.

    * ``nearest``: the source pixel containing the chip pixel centre.
    * ``bilinear``: the usual 4-neighbour weights, renormalised over the valid neighbours; the
      result is NaN when the pixel containing the sample point (the nearest neighbour) is invalid.
      So nodata holes and raster edges never bleed, and bilinear and nearest chips have exactly the
      same NaN pattern.

    When a chip pixel spans two or more source pixels (``resolution_m`` much coarser than the
    raster), the window is read decimated by that integer factor with GDAL ``average`` resampling
    (overviews are used when present), which keeps the read small and anti-aliases.

    Values are the raw band values (no scale/offset applied). ``valid_fraction`` is the fraction of
    non-NaN values over all bands and pixels of a chip; a row is valid when
    ``valid_fraction >= min_valid_fraction`` and > 0. A chip is never silently filled with zeros.

Memory
    A chunk's locations are split recursively (k-d halving on the longer axis) until each group's
    window is below ``max_window_bytes`` and not much larger than the chips it serves
    (``max_waste`` times their summed footprints, windows under ~1 Mpx always accepted). Spatially
    sorted chunks read one window per source; sparse locations over a big raster fall back to small
    per-group or per-location windows. Locations whose chip misses a raster read nothing from it.
    The sampling itself runs in batches of about 65k chip pixels (temporaries stay in cache).
    Peak memory per task is about the window table (16 bytes per pixel for up to 4 bands, capped
    by ``max_window_bytes``) plus the chunk's chips (n x C x S x S float32), plus GDAL's block cache
    (``GDAL_CACHEMAX``): it depends on the chunk size, not on the number of locations.

Handles
    Each task opens its sources itself (rasterio datasets are not picklable), through a per-thread
    cache of open handles keyed by path, size and mtime, so consecutive chunks on a thread share
    GDAL's block cache; ``build_raster_view`` closes them when it finishes (on a distributed
    cluster the workers keep at most 8 handles per thread).

Row order
    Store row i is ``locations`` row i. Chunks are contiguous row ranges of ``dask.chunk_size``
    rows, so the build is fastest when the caller passes locations in a spatial order (the
    sampler sorts by a space-filling key; :func:`spatial_order` gives a Hilbert order).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io.atomic import source_fingerprint, text_fingerprint
from geoembed.io.locations import validate_locations
from geoembed.io.rasters import open_raster
from geoembed.io.viewstore import ArraySpec, ViewStore

log = logging.getLogger(__name__)

LOCAL_PROJECTION = (
    "per-location azimuthal equidistant (WGS84), north-up, centred on the location; "
    "chip pixel positions in each source from a local second-order model of the transform"
)
_SAMPLES_PER_BATCH = 1 << 16
_MIN_WINDOW_PX = 1 << 20
_PAD = 2

__all__ = [
    "RasterSource",
    "build_raster_view",
    "chip_offsets",
    "chip_pixel_coords",
    "extract_chips",
    "resolve_sources",
    "source_pixel_frame",
    "spatial_order",
]


@dataclass(frozen=True)
class RasterSource:
    """One raster input: ``bands`` are 1-based indexes (None = all); ``nodata`` overrides the file's."""

    path: str
    bands: tuple[int, ...] | None = None
    nodata: float | None = None


# --------------------------------------------------------------------------- geometry
_local = threading.local()


def _transformer(crs_wkt: str):
    """A cached EPSG:4326 -> ``crs`` transformer (one per thread: pyproj objects are not shared)."""
    from pyproj import CRS, Transformer

    cache = getattr(_local, "transformers", None)
    if cache is None:
        cache = _local.transformers = {}
    tr = cache.get(crs_wkt)
    if tr is None:
        crs = CRS.from_wkt(crs_wkt)
        tr = cache[crs_wkt] = (Transformer.from_crs("EPSG:4326", crs, always_xy=True), crs.is_geographic)
    return tr


_DATASETS_LOCK = threading.Lock()
_ALL_DATASET_CACHES: list[dict] = []
_MAX_OPEN_PER_THREAD = 8


def _open_cached(path: str):
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


def _geod():
    from pyproj import Geod

    g = getattr(_local, "geod", None)
    if g is None:
        g = _local.geod = Geod(ellps="WGS84")
    return g


def chip_offsets(chip_size: int, resolution_m: float) -> tuple[np.ndarray, np.ndarray]:
    """East offsets per chip column and north offsets per chip row, in metres from the centre."""
    k = np.arange(chip_size, dtype=np.float64) - (chip_size - 1) / 2.0
    return k * resolution_m, -k * resolution_m


def source_pixel_frame(
    crs_wkt: str, transform, lon: np.ndarray, lat: np.ndarray, step_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source pixel coordinates of each location and the local quadratic model around it.

    Returns ``col, row`` (n,) in continuous pixel space (pixel centres at +0.5), ``coef`` (n, 2, 5):
    for (col, row), the coefficients of ``[e, n, e*e, e*n, n*n]`` (e, n = metres east/north of the
    location on its azimuthal-equidistant plane), from central differences with step ``step_m``
    over 9 points; and ``ok`` (n,) where all of it is finite.
    """
    tr, geographic = _transformer(crs_wkt)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n = len(lon)
    h = float(step_m)
    # AEQD offsets (east, north): distance and azimuth from the centre are exact geodesics.
    offs = [(0, 0), (h, 0), (-h, 0), (0, h), (0, -h), (h, h), (-h, h), (h, -h), (-h, -h)]
    lons = np.empty((len(offs), n))
    lats = np.empty((len(offs), n))
    lons[0], lats[0] = lon, lat
    geod = _geod()
    for k, (e, nn) in enumerate(offs[1:], start=1):
        az = np.degrees(np.arctan2(e, nn))
        lo, la, _ = geod.fwd(lon, lat, np.full(n, az), np.full(n, math.hypot(e, nn)))
        lons[k], lats[k] = lo, la
    x, y = tr.transform(lons.ravel(), lats.ravel(), errcheck=False)
    x = np.asarray(x, dtype=np.float64).reshape(len(offs), n)
    y = np.asarray(y, dtype=np.float64).reshape(len(offs), n)
    if geographic:  # keep offsets continuous across the antimeridian
        x[1:] = x[0] + (x[1:] - x[0] + 180.0) % 360.0 - 180.0
    inv = ~transform
    coef = np.empty((n, 2, 5))
    centre = []
    with np.errstate(invalid="ignore"):  # untransformable points are inf; they end up NaN and invalid
        rows_cols = (inv.a * x + inv.b * y + inv.c, inv.d * x + inv.e * y + inv.f)
    for k, f in enumerate(rows_cols):
        coef[:, k, 0] = (f[1] - f[2]) / (2 * h)
        coef[:, k, 1] = (f[3] - f[4]) / (2 * h)
        coef[:, k, 2] = (f[1] - 2 * f[0] + f[2]) / (2 * h * h)
        coef[:, k, 3] = (f[5] - f[6] - f[7] + f[8]) / (4 * h * h)
        coef[:, k, 4] = (f[3] - 2 * f[0] + f[4]) / (2 * h * h)
        centre.append(f[0])
    col, row = centre
    ok = np.isfinite(col) & np.isfinite(row) & np.isfinite(coef).all((1, 2)) & (np.abs(lat) < 89.9)
    return col, row, coef, ok


def chip_pixel_coords(
    col: np.ndarray, row: np.ndarray, coef: np.ndarray, chip_size: int, resolution_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates (m, S, S) of every chip pixel centre from :func:`source_pixel_frame`."""
    dx, dy = chip_offsets(chip_size, resolution_m)
    out = []
    for k, centre in enumerate((col, row)):
        a = coef[:, k]
        along_c = centre[:, None] + a[:, 0, None] * dx + a[:, 2, None] * dx * dx  # (m, S) per column
        along_r = a[:, 1, None] * dy + a[:, 4, None] * dy * dy  # (m, S) per row
        v = along_c[:, None, :] + along_r[:, :, None]
        v += a[:, 3, None, None] * (dy[:, None] * dx[None, :])
        out.append(v)
    return out[0], out[1]


def spatial_order(lon: np.ndarray, lat: np.ndarray, bits: int = 16) -> np.ndarray:
    """Indexes that sort points along a Hilbert curve over their bounding box (stable)."""
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n_side = 1 << bits

    def scale(v):
        lo, hi = np.min(v), np.max(v)
        return np.clip(((v - lo) / max(hi - lo, 1e-12) * (n_side - 1)).astype(np.int64), 0, n_side - 1)

    x, y = scale(lon), scale(lat)
    d = np.zeros(len(x), dtype=np.int64)
    s = n_side >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, n_side - 1 - x, x)
        y = np.where(flip, n_side - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return np.argsort(d, kind="stable")


# --------------------------------------------------------------------------- windows
def _plan_windows(
    lo_c: np.ndarray, hi_c: np.ndarray, lo_r: np.ndarray, hi_r: np.ndarray, max_px: int, max_waste: float
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Group chips (given by their pixel boxes) into windows of bounded size; k-d halving."""
    foot = (hi_c - lo_c).astype(np.float64) * (hi_r - lo_r)
    stack = [np.arange(len(lo_c))]
    out = []
    while stack:
        idx = stack.pop()
        x0, x1 = int(lo_c[idx].min()), int(hi_c[idx].max())
        y0, y1 = int(lo_r[idx].min()), int(hi_r[idx].max())
        area = float(x1 - x0) * float(y1 - y0)
        limit = min(max_px, max(_MIN_WINDOW_PX, max_waste * foot[idx].sum()))
        if len(idx) == 1 or area <= limit:
            out.append((idx, (x0, y0, x1, y1)))
            continue
        if x1 - x0 >= y1 - y0:
            key = lo_c[idx] + hi_c[idx]
        else:
            key = lo_r[idx] + hi_r[idx]
        order = np.argsort(key, kind="stable")
        half = len(idx) // 2
        stack.append(idx[order[half:]])
        stack.append(idx[order[:half]])
    return out


def _align_box(box: tuple[int, int, int, int], factor: int, width: int, height: int):
    """Grow a window to whole multiples of ``factor`` pixels (shifting it inside the raster) so that
    a decimated read has exactly ``factor`` source pixels per read pixel where the raster allows."""
    x0, y0, x1, y1 = box
    out = []
    for lo, hi, size in ((x0, x1, width), (y0, y1, height)):
        need = -(-(hi - lo) // factor) * factor
        hi = lo + need
        if hi > size:
            lo, hi = max(0, size - need), size
        out.append((lo, hi))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _read_window(ds, path: str, bands: Sequence[int], nodata: Sequence[float | None],
                 use_mask: Sequence[bool], box: tuple[int, int, int, int], factor: int) -> np.ndarray:
    """Read a window as a float32 table ((h + 4) * (w + 4), bands) with NaN for no data and a NaN
    border of 2 pixels, so that gathers need no bounds masks."""
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    x0, y0, x1, y1 = box
    win = Window(x0, y0, x1 - x0, y1 - y0)
    kw = {}
    if factor > 1:
        kw = {"out_shape": (len(bands), -(-(y1 - y0) // factor), -(-(x1 - x0) // factor)),
              "resampling": Resampling.average}
    try:
        arr = ds.read(list(bands), window=win, **kw)  # native dtype: GDAL's own conversion is slower
        masks = [
            ds.read_masks(band, window=win, **({"out_shape": arr.shape[1:]} if factor > 1 else {})) == 0
            if nd is None and um else None
            for band, nd, um in zip(bands, nodata, use_mask, strict=True)
        ]
    except RasterioError as err:
        raise InputError(f"cannot read raster {path} window {box}: {err}") from None
    nb, h, w = arr.shape
    # pixel-interleaved table padded to 1/2/4/8 bands (numpy's take moves 4..32-byte rows fastest),
    # with a NaN border of _PAD pixels; filled band by band (much faster than a transposed copy)
    bp = next((k for k in (1, 2, 4, 8) if k >= nb), nb)
    table = np.empty((h + 2 * _PAD, w + 2 * _PAD, bp), dtype=np.float32)
    for sl in (np.s_[:_PAD], np.s_[-_PAD:], np.s_[:, :_PAD], np.s_[:, -_PAD:]):
        table[sl] = np.nan
    table[:, :, nb:] = 0.0  # padding bands are never NaN (they would trigger the slow path)
    inner = table[_PAD:-_PAD, _PAD:-_PAD]
    for b in range(nb):
        band = arr[b]
        dst = inner[:, :, b]
        dst[...] = band
        nd = nodata[b]
        if nd is not None and not np.isnan(nd):
            bad = band == nd
            if bad.any():
                dst[bad] = np.nan
        if masks[b] is not None and masks[b].any():
            dst[masks[b]] = np.nan
    return table.reshape(-1, bp)


def _gather_nearest(table: np.ndarray, h: int, w: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Values (m, bands) of the pixels containing the points (col, row) of a padded window table."""
    wp = w + 2 * _PAD
    ci = np.clip(np.floor(col), -1, w).astype(np.intp)
    ri = np.clip(np.floor(row), -1, h).astype(np.intp)
    idx = (ri + _PAD) * wp + (ci + _PAD)
    return table.take(idx, axis=0)


def _gather_bilinear(table: np.ndarray, h: int, w: int, col: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Bilinear values (m, bands) at (col, row); renormalised over valid neighbours, NaN where the
    pixel containing the point is invalid."""
    wp = w + 2 * _PAD
    fx = col - 0.5
    fy = row - 0.5
    x0 = np.floor(fx)
    y0 = np.floor(fy)
    wx = (fx - x0).astype(np.float32)[:, None]
    wy = (fy - y0).astype(np.float32)[:, None]
    # clipping to [-2, w] keeps both neighbours in the NaN border when the point is far outside
    i00 = (np.clip(y0, -_PAD, h).astype(np.intp) + _PAD) * wp + (np.clip(x0, -_PAD, w).astype(np.intp) + _PAD)
    v00 = table.take(i00, axis=0)
    v01 = table.take(i00 + 1, axis=0)
    i00 += wp
    v10 = table.take(i00, axis=0)
    v11 = table.take(i00 + 1, axis=0)
    top = v01 - v00
    top *= wx
    top += v00
    out = np.subtract(v11, v10, out=v11)
    out *= wx
    out += v10
    out -= top
    out *= wy
    out += top  # lerp form: exact on constant fields; NaN if any neighbour is NaN
    bad = np.isnan(out)
    if bad.any():
        # the bottom pair was overwritten: gather it again for the few bad points
        r, b = np.nonzero(bad)
        v11r = table.take(i00[r] + 1, axis=0)[np.arange(len(r)), b]
        wxr, wyr = wx[r, 0], wy[r, 0]
        vs = np.stack([v00[r, b], v01[r, b], v10[r, b], v11r])
        ws = np.stack([(1 - wxr) * (1 - wyr), wxr * (1 - wyr), (1 - wxr) * wyr, wxr * wyr])
        ok = ~np.isnan(vs)
        num = np.where(ok, vs * ws, 0).sum(0)
        den = np.where(ok, ws, 0).sum(0)
        near = (wyr >= 0.5).astype(np.intp) * 2 + (wxr >= 0.5).astype(np.intp)
        near_ok = ok[near, np.arange(len(r))]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r, b] = np.where(near_ok & (den > 0), num / den, np.nan)
    return out


# --------------------------------------------------------------------------- chips
def _band_nodata(ds, bands: Sequence[int], override: float | None) -> tuple[list, list[bool]]:
    """Effective nodata per band and whether the dataset mask must be read instead."""
    from rasterio.enums import MaskFlags

    nodata, use_mask = [], []
    for b in bands:
        nd = override if override is not None else ds.nodatavals[b - 1]
        flags = ds.mask_flag_enums[b - 1]
        nodata.append(None if nd is None else float(nd))
        use_mask.append(nd is None and (MaskFlags.per_dataset in flags or MaskFlags.alpha in flags))
    return nodata, use_mask


def extract_chips(
    sources: Sequence[RasterSource],
    lon: np.ndarray,
    lat: np.ndarray,
    *,
    chip_size: int,
    resolution_m: float,
    resampling: str = "bilinear",
    max_window_bytes: int = 256 << 20,
    max_waste: float = 16.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Chips for one chunk of locations (a pure function of its inputs; opens its sources itself).

    ``max_window_bytes`` caps one window read (as a float32 table); ``max_waste`` is how much larger
    than the chips it serves a window may be before the locations are split into smaller groups.

    Returns ``chips`` float32 (n, C, chip_size, chip_size) with the sources' bands stacked in order
    and NaN where there is no data, and ``valid_fraction`` float32 (n,).
    """
    if resampling not in ("nearest", "bilinear"):
        raise ValueError(f"resampling must be nearest or bilinear, not {resampling!r}")
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n = len(lon)
    S = int(chip_size)
    opened = [(src, _open_cached(src.path)) for src in sources]
    band_sel = [list(src.bands) if src.bands else list(range(1, ds.count + 1)) for src, ds in opened]
    chips = np.full((n, sum(len(b) for b in band_sel), S, S), np.nan, dtype=np.float32)
    if n == 0:
        return chips, np.zeros(0, dtype=np.float32)
    offset = 0
    for (src, ds), bands in zip(opened, band_sel, strict=True):
        _sample_source(ds, src, bands, lon, lat, chips[:, offset:offset + len(bands)], resolution_m,
                       resampling, max_window_bytes, max_waste)
        offset += len(bands)
    valid_fraction = np.isfinite(chips).reshape(n, -1).mean(1).astype(np.float32)
    return chips, valid_fraction


def _sample_source(ds, src: RasterSource, bands: list[int], lon: np.ndarray, lat: np.ndarray,
                   out: np.ndarray, resolution_m: float, resampling: str, max_window_bytes: int,
                   max_waste: float) -> None:
    """Fill ``out`` (n, len(bands), S, S), pre-set to NaN, with one source's chips."""
    S = out.shape[-1]
    half = (S - 1) / 2.0 * resolution_m
    step = max(half, resolution_m, 1.0)
    nodata, use_mask = _band_nodata(ds, bands, src.nodata)
    col, row, coef, ok = source_pixel_frame(ds.crs.to_wkt(), ds.transform, lon, lat, step)
    # integer decimation when chip pixels span several source pixels (GDAL "average" read);
    # not with a nodata override, which GDAL would average into the data
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(np.abs(coef[:, 0, 0] * coef[:, 1, 1] - coef[:, 0, 1] * coef[:, 1, 0]))
    scale = scale[ok] * resolution_m
    factor = 1
    if src.nodata is None and len(scale):
        factor = max(1, int(np.floor(scale.min() + 1e-6)))
    margin = 0.5 + factor  # covers the bilinear neighbours on the (decimated) read grid
    a = np.abs(coef)
    ext_c = (a[:, 0, 0] + a[:, 0, 1]) * half + (a[:, 0, 2] + a[:, 0, 3] + a[:, 0, 4]) * half * half
    ext_r = (a[:, 1, 0] + a[:, 1, 1]) * half + (a[:, 1, 2] + a[:, 1, 3] + a[:, 1, 4]) * half * half
    with np.errstate(invalid="ignore"):
        lo_c = np.floor(np.clip(col - ext_c - margin, -1, ds.width + 1))
        hi_c = np.floor(np.clip(col + ext_c + margin, -1, ds.width + 1)) + 1
        lo_r = np.floor(np.clip(row - ext_r - margin, -1, ds.height + 1))
        hi_r = np.floor(np.clip(row + ext_r + margin, -1, ds.height + 1)) + 1
    ok &= np.isfinite(ext_c) & np.isfinite(ext_r)
    lo_c, hi_c = np.clip(lo_c, 0, ds.width), np.clip(hi_c, 0, ds.width)
    lo_r, hi_r = np.clip(lo_r, 0, ds.height), np.clip(hi_r, 0, ds.height)
    ok &= (hi_c > lo_c) & (hi_r > lo_r)
    touching = np.flatnonzero(ok)
    if len(touching) == 0:
        return
    max_px = max(1, max_window_bytes // (8 * len(bands))) * factor * factor
    groups = _plan_windows(lo_c[touching].astype(np.int64), hi_c[touching].astype(np.int64),
                           lo_r[touching].astype(np.int64), hi_r[touching].astype(np.int64),
                           max_px, max_waste)
    per_batch = max(1, _SAMPLES_PER_BATCH // (S * S))
    gather = _gather_nearest if resampling == "nearest" else _gather_bilinear
    for gidx, box in groups:
        loc = touching[gidx]
        if factor > 1:
            box = _align_box(box, factor, ds.width, ds.height)
        table = _read_window(ds, src.path, bands, nodata, use_mask, box, factor)
        h = -(-(box[3] - box[1]) // factor)
        w = -(-(box[2] - box[0]) // factor)
        sx, sy = (box[2] - box[0]) / w, (box[3] - box[1]) / h  # source pixels per read pixel
        for s0 in range(0, len(loc), per_batch):
            li = loc[s0:s0 + per_batch]
            c, r = chip_pixel_coords(col[li] - box[0], row[li] - box[1], coef[li], S, resolution_m)
            if factor > 1:
                c /= sx
                r /= sy
            vals = gather(table, h, w, c.ravel(), r.ravel())[:, :len(bands)]
            out[li] = vals.reshape(len(li), S, S, len(bands)).transpose(0, 3, 1, 2)


# --------------------------------------------------------------------------- sources
def _abs_path(p: str) -> str:
    return p if ("://" in p or p.startswith("/vsi")) else os.path.abspath(p)


def _nodata_json(v: float | None):
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
            bands = tuple(int(b) for b in sel) if sel is not None else tuple(range(1, ds.count + 1))
            override = cfg.nodata[k] if cfg.nodata is not None else None
            nodata, use_mask = _band_nodata(ds, bands, override)
            epsg = ds.crs.to_epsg()
            stem = Path(path).stem
            infos.append({
                "path": p,
                "crs_wkt": ds.crs.to_wkt(),
                "crs_epsg": epsg,
                "bands": list(bands),
                "band_names": [ds.descriptions[b - 1] or f"{stem}:b{b}" for b in bands],
                "dtype": ds.dtypes[bands[0] - 1],
                "nodata": [_nodata_json(v) for v in nodata],
                "nodata_source": "config" if override is not None else "file",
                "uses_mask": [bool(u) for u in use_mask],
                "res": list(ds.res),
                "shape": [ds.height, ds.width],
                "bounds": list(ds.bounds),
            })
        sources.append(RasterSource(p, bands, override))
    for info in infos:
        info["fingerprint"] = source_fingerprint(info["path"])
    return sources, infos


# --------------------------------------------------------------------------- build
def _coords_fingerprint(ids: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (ids.astype("<i8"), lon.astype("<f8"), lat.astype("<f8")):
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()


def _chunk_task(store: ViewStore, i: int, sources: list[RasterSource], lon: np.ndarray, lat: np.ndarray,
                chip_size: int, resolution_m: float, resampling: str, min_valid_fraction: float) -> int:
    """Compute and write chunk ``i`` of a raster view store; returns its number of valid rows."""
    chips, vf = extract_chips(sources, lon, lat, chip_size=chip_size, resolution_m=resolution_m,
                              resampling=resampling)
    valid = (vf >= min_valid_fraction) & (vf > 0)
    store.write_chunk(i, {"chips": chips}, vf, valid)
    return int(valid.sum())


def build_raster_view(
    cfg: RasterViewConfig,
    locations: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    dask_cfg: DaskConfig,
    overwrite: bool = False,
) -> ViewStore:
    """Build (or resume) the raster view store for ``locations`` at ``out_dir``.

    Store row i is ``locations`` row i; chunks are contiguous runs of ``dask_cfg.chunk_size`` rows
    (pass locations in a spatial order for the best I/O). Only chunks without a marker are computed,
    so a rerun after a crash finishes the missing ones and a rerun of a complete store does nothing.
    """
    import dask

    validate_locations(locations, "locations")
    sources, infos = resolve_sources(cfg)
    ids = locations["location_id"].to_numpy(dtype=np.int64)
    lon = locations["lon"].to_numpy(dtype=np.float64)
    lat = locations["lat"].to_numpy(dtype=np.float64)
    channels = sum(len(s.bands) for s in sources)
    S = cfg.chip_size
    attrs = {
        "view": cfg.name,
        "sources": [i["path"] for i in infos],
        "fingerprints": [i["fingerprint"] for i in infos],
        "crs": [{"epsg": i["crs_epsg"], "wkt": i["crs_wkt"]} for i in infos],
        "bands": [i["bands"] for i in infos],
        "band_names": [n for i in infos for n in i["band_names"]],
        "source_dtypes": [i["dtype"] for i in infos],
        "nodata": [i["nodata"] for i in infos],
        "nodata_source": [i["nodata_source"] for i in infos],
        "source_res": [i["res"] for i in infos],
        "channels": channels,
        "dtype": cfg.dtype,
        "chip_size": S,
        "resolution_m": cfg.resolution_m,
        "resampling": cfg.resampling,
        "local_projection": LOCAL_PROJECTION,
        "min_valid_fraction": cfg.min_valid_fraction,
        "values": "raw band values (no scale/offset), NaN = no data",
    }
    fingerprint = text_fingerprint({
        "config": cfg.model_dump(mode="json"),
        "sources": attrs["fingerprints"],
        "locations": _coords_fingerprint(ids, lon, lat),
        "chunk_size": dask_cfg.chunk_size,
    })
    store = ViewStore.create_or_resume(
        out_dir,
        location_ids=ids,
        arrays={"chips": ArraySpec((channels, S, S), cfg.dtype)},
        chunk_rows=dask_cfg.chunk_size,
        kind="raster",
        attrs=attrs,
        build_fingerprint=fingerprint,
        overwrite=overwrite,
    )
    pending = store.pending_chunks()
    log.info("raster view %s: %d of %d chunks to compute", cfg.name, len(pending), store.n_chunks)
    task = dask.delayed(_chunk_task, pure=True)
    tasks = []
    for i in pending:
        a, b = store.chunk_bounds(i)
        tasks.append(task(store, i, sources, lon[a:b], lat[a:b], S, cfg.resolution_m, cfg.resampling,
                          cfg.min_valid_fraction, dask_key_name=f"raster-{cfg.name}-chunk-{i}"))
    from geoembed.runtime import run_tasks

    try:
        run_tasks(tasks, scheduler=dask_cfg.scheduler, num_workers=dask_cfg.num_workers,
                  desc=f"raster view {cfg.name}")
    finally:
        close_cached_datasets()
    return store.finalize()
