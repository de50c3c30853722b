"""The raster view: C x H x W chips centred on each location, from any number of rasters.

Geometry
    Every chip is north-up on a local azimuthal-equidistant grid centred on its own location
    (WGS84 ellipsoid): chip pixel (r, c) has its centre ``(c - (S-1)/2) * res`` metres east and
    ``((S-1)/2 - r) * res`` metres north of the location. The chip therefore does not depend on
    which chunk its location falls in, nor on the other locations.

    The chip centre is transformed exactly (pyproj, EPSG:4326 -> source CRS -> source pixel space).
    The offsets within a chip use a local second-order model of that map around the location:
    the Jacobian d(source col,row)/d(east,north) plus the second derivatives, from central
    differences over 8 offsets of half the chip extent (9 exact transforms per location and
    source, instead of S*S). The offsets are geodesics: for chips up to 2 km corner to centre,
    below 80 degrees of latitude, from a second-order series (:func:`aeqd_offset`, within a few
    millimetres), else from pyproj's geodesic solver. The remaining error is third order in the
    chip half-extent: below 0.002 source pixel for 256-pixel chips of 30 m in UTM (same or another
    zone) and EPSG:4326 at 70 N, against the exact per-pixel transform (tests check it). A
    first-order model alone would be off by 0.13 source pixel for such chips on a geographic raster.

Sampling
    A compiled kernel (:mod:`geoembed.views.chip_kernel`, numba, no GIL) samples the chips straight
    from the decoded source values in their native dtype; no float copy of the raster is made.
    Invalid values are NaN in the chips: outside the raster, NaN in the source, equal to the
    band's nodata, or masked by the dataset mask when no nodata is declared.

    * ``nearest``: the source pixel containing the chip pixel centre.
    * ``bilinear``: the usual 4-neighbour weights, renormalised over the valid neighbours; the
      result is NaN when the pixel containing the sample point (the nearest neighbour) is invalid.
      So nodata holes and raster edges never bleed, and bilinear and nearest chips have exactly the
      same NaN pattern.

    Values are the raw band values (no scale/offset applied). ``valid_fraction`` is the fraction of
    non-NaN values over all bands and pixels of a chip; a row is valid when
    ``valid_fraction >= min_valid_fraction`` and > 0. A chip is never silently filled with zeros.

Reading
    * Tiled GeoTIFFs and COGs at native resolution are read block by block through a process-wide
      cache of decoded blocks shared by all threads (:mod:`geoembed.io.tilecache`,
      ``GEOEMBED_TILE_CACHE_MB``, default 128): each block a chunk's chips touch is decoded once
      per process while it stays cached, also where chunks on different threads share it, and
      blocks no chip touches are never read. The chips of a group of locations are sampled from an
      atlas of their blocks; a chip inside one block without invalid values takes a check-free path.
    * Other sources (striped or untiled files, VRTs and other formats) are read by windows: one per
      group of nearby locations covering all their chips, clipped to the raster.
    * When a chip pixel spans two or more source pixels (``resolution_m`` much coarser than the
      raster), the window is read decimated by that integer factor (per location) with GDAL
      ``average`` resampling (overviews are used when present), which keeps the read small and
      anti-aliases. The averaging cells are a global grid (``factor`` x ``factor`` source pixels
      from the raster's origin), so a chip does not depend on the other locations; a partial last
      cell at the right or bottom edge is no data.

Memory
    Locations are grouped by recursive k-d halving on the longer axis: for windows, until each is
    below ``max_window_bytes`` and not much larger than the chips it serves (``max_waste`` times
    their summed footprints, windows under ~1 Mpx always accepted); for blocks, until a group's
    blocks fit in ``max_window_bytes``. Sparse locations over a big raster thus read small windows
    or only their own blocks; locations whose chip misses a raster read nothing from it. Peak
    memory per task is the group's window or block atlas (native dtype, capped by
    ``max_window_bytes``) plus the chunk's chips (n x C x S x S float32), plus the shared block
    cache and GDAL's (``GDAL_CACHEMAX``): it depends on the chunk size, not on the number of
    locations.

Handles
    Each task opens its sources itself (rasterio datasets are not picklable), through a per-thread
    cache of open handles keyed by path, size and mtime; ``build_raster_view`` closes them when it
    finishes (on a distributed cluster the workers keep at most 8 handles per thread). Cached
    blocks are keyed by path, size and mtime too, so a replaced file is read afresh.

Row order
    Store row i is ``locations`` row i. Chunks are contiguous row ranges of ``dask.chunk_size``
    rows (fewer for large chips: at most 64 MB of chips per chunk), so the build is fastest when
    the caller passes locations in a spatial order (the sampler sorts by a space-filling key;
    :func:`geoembed.geo.hilbert_order` gives a Hilbert order).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.build import DaskConfig, RasterViewConfig
from geoembed.errors import ConfigError, InputError
from geoembed.io.fingerprint import text_fingerprint
from geoembed.io.locations import validate_locations
from geoembed.io.rasters import open_raster, raster_fingerprint
from geoembed.io.tilecache import BlockArena, tile_cache
from geoembed.io.viewstore import ArraySpec, ViewStore

log = logging.getLogger(__name__)

LOCAL_PROJECTION = (
    "per-location azimuthal equidistant (WGS84), north-up, centred on the location; "
    "chip pixel positions in each source from a local second-order model of the transform"
)
_MIN_WINDOW_PX = 1 << 20
_MAX_BLOCK_PX = 1 << 22  # larger internal blocks are read by windows
_MAX_SLOT_MAP = 1 << 16  # block bounding box of one group of locations, in blocks

__all__ = [
    "RasterSource",
    "build_raster_view",
    "aeqd_offset",
    "block_read_env",
    "raster_chunk_rows",
    "chip_offsets",
    "chip_pixel_coords",
    "default_bands",
    "extract_chips",
    "resolve_sources",
    "source_pixel_frame",
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


_WGS84_A = 6378137.0
_WGS84_E2 = (1 / 298.257223563) * (2 - 1 / 298.257223563)
_LOCAL_GEODESIC_M = 2000.0  # up to this distance (and 80 degrees) the series is within 3 mm of the geodesic


def aeqd_offset(lon: np.ndarray, lat: np.ndarray, east: float, north: float) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat (degrees) of the point ``east``, ``north`` metres from each location on its WGS84
    azimuthal-equidistant plane: the geodesic of that length and azimuth, to second order in the
    distance s (series from the geodesic equations with the local radii M, N; the remainder is
    about s^3 / R^2 (1 + tan^2 lat): at most 0.3 mm at 1 km, 6 mm at 2.8 km below 80 degrees)."""
    phi = np.radians(lat)
    sin, cos = np.sin(phi), np.cos(phi)
    tan = sin / cos
    w2 = 1.0 - _WGS84_E2 * sin * sin
    big_n = _WGS84_A / np.sqrt(w2)
    big_m = big_n * (1.0 - _WGS84_E2) / w2
    dm = 3.0 * _WGS84_E2 * big_m * sin * cos / w2  # dM/dphi
    dn = big_n * _WGS84_E2 * sin * cos / w2  # dN/dphi
    e, n = float(east), float(north)
    dphi = n / big_m - e * e * tan / (2.0 * big_n * big_m) - n * n * dm / (2.0 * big_m**3)
    dlam = e / (big_n * cos) + 0.5 * e * n * (
        tan / (big_n * big_n * cos) + (big_n * sin - dn * cos) / (big_m * big_n * big_n * cos * cos))
    return lon + np.degrees(dlam), lat + np.degrees(dphi)


def source_pixel_frame(
    crs_wkt: str, transform, lon: np.ndarray, lat: np.ndarray, step_m: float, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source pixel coordinates of each location and the local quadratic model around it.

    Returns ``col, row`` (n,) in continuous pixel space (pixel centres at +0.5), ``coef`` (n, 2, 5):
    for (col, row), the coefficients of ``[e, n, e*e, e*n, n*n]`` (e, n = metres east/north of the
    location on its azimuthal-equidistant plane), from central differences with step ``step_m``
    over 9 points; and ``ok`` (n,) where all of it is finite.

    The centre is always transformed exactly. Below 80 degrees of latitude the coefficients, which
    vary on the scale of the Earth's radius, are computed exactly at the corners of a fixed global
    lattice of anchors (at most 0.1 degree apart, closer for chips of many source pixels) and
    interpolated bilinearly, to about 1e-4 pixel at the chip edge (tests check it): for locations
    in a compact area that is a fraction of the transforms. Each location's result depends on its
    own coordinates only, never on the other locations of the call.

    With ``width`` (the raster's, in pixels) and a geographic CRS, longitudes are taken within 180
    degrees of the raster's centre, so a raster that ends at the antimeridian (or spans 0..360)
    serves the locations on both sides of it.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n = len(lon)
    tr, _ = _transformer(crs_wkt)
    x, y = tr.transform(lon, lat, errcheck=False)
    inv = ~transform
    with np.errstate(invalid="ignore"):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        x = _wrap_longitude(x, crs_wkt, transform, width)
        col = inv.a * x + inv.b * y + inv.c
        row = inv.d * x + inv.e * y + inv.f
        todo = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) < 80.0)
    coef = np.full((n, 2, 5), np.nan)
    done = np.zeros(n, dtype=bool)
    if todo.any():
        spacing = _anchor_spacing(crs_wkt, tuple(transform)[:6], float(step_m))
        idx = np.flatnonzero(todo)
        fx, fy = lon[idx] / spacing, lat[idx] / spacing
        ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
        corners = [(iy, ix), (iy, ix + 1), (iy + 1, ix), (iy + 1, ix + 1)]
        keys = np.concatenate([(cy << 32) + (cx + (1 << 31)) for cy, cx in corners])
        uniq, inverse = np.unique(keys, return_inverse=True)
        node_y, node_x = uniq >> 32, (uniq & 0xFFFFFFFF) - (1 << 31)
        _, _, ncoef, nok = _exact_frame(crs_wkt, transform, node_x * spacing, node_y * spacing, step_m)
        inverse = inverse.reshape(4, len(idx))
        good = nok[inverse].all(0)
        wx = (fx - ix)[:, None, None]
        wy = (fy - iy)[:, None, None]
        c00, c01, c10, c11 = (ncoef[inverse[k]] for k in range(4))
        interp = (c00 * (1 - wx) + c01 * wx) * (1 - wy) + (c10 * (1 - wx) + c11 * wx) * wy
        coef[idx[good]] = interp[good]
        done[idx[good]] = True
    rest = np.flatnonzero(~done)
    if len(rest):  # (the coefficients are derivatives: the same on either side of the antimeridian)
        coef[rest] = _exact_frame(crs_wkt, transform, lon[rest], lat[rest], step_m)[2]
    ok = np.isfinite(col) & np.isfinite(row) & np.isfinite(coef).all((1, 2)) & (np.abs(lat) < 89.9)
    return col, row, coef, ok


_ANCHOR_DEG = 0.1


def _wrap_longitude(x: np.ndarray, crs_wkt: str, transform, width: int | None) -> np.ndarray:
    """Geographic x within 180 degrees of the raster's centre longitude (unchanged otherwise)."""
    if width is None or not _transformer(crs_wkt)[1] or transform.b != 0:
        return x
    centre = transform.c + transform.a * width / 2.0
    return centre + (x - centre + 180.0) % 360.0 - 180.0


@functools.lru_cache(maxsize=64)
def _anchor_spacing(crs_wkt: str, transform: tuple, step_m: float) -> float:
    """Anchor lattice spacing (degrees, 0.1 / 2^k) that keeps the interpolation error near 1e-4
    pixel at the chip edge for any location below 80 degrees: a property of the source and the
    chip size alone. The relative error is about (d / R)^2 / 8 * (1 + 2 tan^2 lat)."""
    from pyproj import CRS

    crs = CRS.from_wkt(crs_wkt)
    px = min(abs(transform[0]), abs(transform[4])) or 1.0
    if crs.is_geographic:  # the smallest ground size of a pixel below 80 degrees: most pixels per metre
        px_m = px * 111_320.0 * math.cos(math.radians(80.0))
    else:
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        px_m = px * (unit or 1.0)
    ext_px = math.sqrt(2.0) * step_m / px_m + 1.0
    tan2 = math.tan(math.radians(80.0)) ** 2
    d_deg = 6.371e6 * math.sqrt(8e-4 / (ext_px * (1.0 + 2.0 * tan2))) / 111_320.0
    k = math.ceil(math.log2(_ANCHOR_DEG / d_deg)) if d_deg < _ANCHOR_DEG else 0
    return _ANCHOR_DEG / 2**k


def _exact_frame(crs_wkt: str, transform, lon: np.ndarray, lat: np.ndarray, step_m: float):
    """:func:`source_pixel_frame` with 9 exact transforms per location."""
    tr, geographic = _transformer(crs_wkt)
    n = len(lon)
    h = float(step_m)
    # AEQD offsets (east, north): distance and azimuth from the centre are exact geodesics.
    offs = [(0, 0), (h, 0), (-h, 0), (0, h), (0, -h), (h, h), (-h, h), (h, -h), (-h, -h)]
    lons = np.empty((len(offs), n))
    lats = np.empty((len(offs), n))
    lons[0], lats[0] = lon, lat
    # short offsets at moderate latitudes: a second-order series (mm-exact, 20x cheaper); else geodesics
    series = np.abs(lat) < 80.0 if math.hypot(h, h) <= _LOCAL_GEODESIC_M else np.zeros(n, dtype=bool)
    exact = np.flatnonzero(~series)
    for k, (e, nn) in enumerate(offs[1:], start=1):
        lons[k], lats[k] = aeqd_offset(lon, lat, e, nn)
        if len(exact):
            az = np.full(len(exact), np.degrees(np.arctan2(e, nn)))
            lo, la, _ = _geod().fwd(lon[exact], lat[exact], az, np.full(len(exact), math.hypot(e, nn)))
            lons[k, exact], lats[k, exact] = lo, la
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
    """Grow a window to the global grid of ``factor`` x ``factor`` source pixels (cells start at
    multiples of ``factor``), without the partial last cell at the right and bottom edges, so that
    a decimated read has exactly ``factor`` source pixels per read pixel and the same cells
    whatever the other locations of the call."""
    x0, y0, x1, y1 = box
    x0, y0 = (x0 // factor) * factor, (y0 // factor) * factor
    x1 = min(-(-x1 // factor) * factor, (width // factor) * factor)
    y1 = min(-(-y1 // factor) * factor, (height // factor) * factor)
    return x0, y0, x1, y1


def _read_window(ds, path: str, bands: Sequence[int], nodata: Sequence[float | None],
                 use_mask: Sequence[bool], box: tuple[int, int, int, int], factor: int,
                 out: np.ndarray | None = None, out_mask: np.ndarray | None = None) -> tuple:
    """Read a window (native dtype; decimated by ``factor`` with GDAL ``average``) and, for bands
    without nodata whose dataset has a mask, the mask (0 = no data), into ``out``/``out_mask`` when
    given. Returns ``(data, mask or None, clean)``: clean when no value is NaN, nodata or masked."""
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
        arr = ds.read(list(bands), window=win, out=out, **kw)
        mask = None
        if any(use_mask):
            mask = np.full(arr.shape, 255, dtype=np.uint8) if out_mask is None else out_mask
            for k, (band, um) in enumerate(zip(bands, use_mask, strict=True)):
                if um:
                    mask[k] = ds.read_masks(band, window=win, **({"out_shape": arr.shape[1:]} if factor > 1 else {}))
                else:
                    mask[k] = 255
    except RasterioError as err:
        raise InputError(f"cannot read raster {path} window {box}: {err}") from None
    clean = mask is None or bool((mask != 0).all())
    for k in range(len(bands)):
        if not clean:
            break
        if arr.dtype.kind == "f" and not np.isfinite(arr[k]).all():
            clean = False
        elif nodata[k] is not None and not math.isnan(nodata[k]) and (arr[k] == nodata[k]).any():
            clean = False
    return arr, mask, clean


def _block_shape(ds, bands: Sequence[int], factor: int) -> tuple[int, int] | None:
    """The (h, w) of the raster's internal tiles when it is read tile by tile through the shared
    block cache: tiled GeoTIFF/COG, tiles alike for the selected bands, native resolution."""
    if factor != 1 or ds.driver != "GTiff":
        return None
    shapes = {tuple(ds.block_shapes[b - 1]) for b in bands}
    if len(shapes) != 1:
        return None
    bh, bw = shapes.pop()
    single = bh >= ds.height and bw >= ds.width
    if min(bh, bw) < 16 or bh * bw > _MAX_BLOCK_PX or (bw >= ds.width and not single):
        return None  # strips (or huge blocks): windowed reads through GDAL's cache do better
    return int(bh), int(bw)


def _file_key(path: str) -> tuple:
    if "://" in path or path.startswith("/vsi"):
        return (path,)
    st = os.stat(path)
    return (path, st.st_size, st.st_mtime_ns)


def _plan_block_groups(tlo_x, thi_x, tlo_y, thi_y, max_blocks: int) -> list[np.ndarray]:
    """Split locations (given by their inclusive block ranges) into groups whose blocks fit in
    ``max_blocks`` slots and whose block bounding box is small enough for a dense slot map."""
    stack = [np.arange(len(tlo_x))]
    out = []
    while stack:
        idx = stack.pop()
        nx = int(thi_x[idx].max() - tlo_x[idx].min() + 1)
        ny = int(thi_y[idx].max() - tlo_y[idx].min() + 1)
        if len(idx) == 1 or (nx * ny <= _MAX_SLOT_MAP and len(_block_ids(tlo_x, thi_x, tlo_y, thi_y, idx, nx))
                             <= max_blocks):
            out.append(idx)
            continue
        key = (tlo_x[idx] + thi_x[idx]) if nx >= ny else (tlo_y[idx] + thi_y[idx])
        order = np.argsort(key, kind="stable")
        half = len(idx) // 2
        stack.append(idx[order[half:]])
        stack.append(idx[order[:half]])
    return out


def _block_ids(tlo_x, thi_x, tlo_y, thi_y, idx: np.ndarray, nx: int) -> np.ndarray:
    """Sorted unique ids ``(ty - ty0) * nx + (tx - tx0)`` of the blocks the locations ``idx`` touch."""
    lx, hx, ly, hy = tlo_x[idx], thi_x[idx], tlo_y[idx], thi_y[idx]
    ox, oy = lx.min(), ly.min()
    span_x = int((hx - lx).max()) + 1
    span_y = int((hy - ly).max()) + 1
    ids = []
    for j in range(span_y):
        for i in range(span_x):
            m = (lx + i <= hx) & (ly + j <= hy)
            ids.append((ly[m] + j - oy) * nx + (lx[m] + i - ox))
    return np.unique(np.concatenate(ids))


def _scratch(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable buffer viewed as an uninitialised array (no page faults per chunk)."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    bufs = getattr(_local, "scratch", None)
    if bufs is None:
        bufs = _local.scratch = {}
    buf = bufs.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _block_box(ds, block: tuple[int, int], ty: int, tx: int) -> tuple[int, int, int, int]:
    bh, bw = block
    x0, y0 = tx * bw, ty * bh
    return x0, y0, min(x0 + bw, ds.width), min(y0 + bh, ds.height)


def _load_blocks(ds, arena: BlockArena, src_key: tuple, path: str, bands: Sequence[int],
                 nodata: Sequence[float | None], use_mask: Sequence[bool], block: tuple[int, int],
                 tys: np.ndarray, txs: np.ndarray):
    """Blocks (tys, txs) pinned in the source's shared ``arena``: ``(data, masks, clean, slots,
    arena)``; the slots index ``data``. When the arena has no room for them next to the other
    threads' pinned blocks, they are decoded into a private buffer instead (``arena`` None)."""
    bh, bw = block
    dtype = arena.data.dtype
    with_mask = any(use_mask)

    def load(key, slot):
        _, ty, tx = key
        x0, y0, x1, y1 = _block_box(ds, block, ty, tx)
        return _read_window(ds, path, bands, nodata, use_mask, (x0, y0, x1, y1), 1,
                            out=arena.data[slot, :, :y1 - y0, :x1 - x0],
                            out_mask=arena.mask[slot, :, :y1 - y0, :x1 - x0] if with_mask else None)[2]

    keys = [(src_key, ty, tx) for ty, tx in zip(tys.tolist(), txs.tolist(), strict=True)]
    slots = arena.acquire(keys, load)
    if slots is not None:
        return arena.data, arena.mask, arena.clean, slots, arena
    data = _scratch("atlas", (len(keys), len(bands), bh, bw), dtype)
    masks = _scratch("masks", (len(keys), len(bands), bh, bw), np.dtype(np.uint8)) if with_mask \
        else np.empty((0, 1, 1, 1), dtype=np.uint8)
    clean = np.zeros(len(keys), dtype=np.bool_)
    for k, (ty, tx) in enumerate(zip(tys.tolist(), txs.tolist(), strict=True)):
        x0, y0, x1, y1 = _block_box(ds, block, ty, tx)
        clean[k] = _read_window(ds, path, bands, nodata, use_mask, (x0, y0, x1, y1), 1,
                                out=data[k, :, :y1 - y0, :x1 - x0],
                                out_mask=masks[k, :, :y1 - y0, :x1 - x0] if with_mask else None)[2]
    return data, masks, clean, np.arange(len(keys), dtype=np.int64), None


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
    band_sel = [list(src.bands) if src.bands else list(default_bands(ds)) for src, ds in opened]
    channels = sum(len(b) for b in band_sel)
    chips = np.empty((n, channels, S, S), dtype=np.float32)  # every value is written below
    n_valid = np.zeros(n, dtype=np.int64)
    if n == 0:
        return chips, np.zeros(0, dtype=np.float32)
    offset = 0
    for (src, ds), bands in zip(opened, band_sel, strict=True):
        _sample_source(ds, src, bands, lon, lat, chips, offset, n_valid, resolution_m, resampling,
                       max_window_bytes, max_waste)
        offset += len(bands)
    valid_fraction = (n_valid / float(channels * S * S)).astype(np.float32)
    return chips, valid_fraction


def _sample_source(ds, src: RasterSource, bands: list[int], lon: np.ndarray, lat: np.ndarray,
                   out: np.ndarray, ch0: int, n_valid: np.ndarray, resolution_m: float, resampling: str,
                   max_window_bytes: int, max_waste: float) -> None:
    """Fill ``out[:, ch0:ch0 + len(bands)]`` with one source's chips (NaN where invalid) and add the
    valid values per row to ``n_valid``."""
    from geoembed.views.chip_kernel import sample_chips

    S = out.shape[-1]
    half = (S - 1) / 2.0 * resolution_m
    step = max(half, resolution_m, 1.0)
    _check_dtypes(ds, src.path, bands)
    nodata, use_mask = _band_nodata(ds, bands, src.nodata)
    col, row, coef, ok = source_pixel_frame(ds.crs.to_wkt(), ds.transform, lon, lat, step, width=ds.width)
    # integer decimation when chip pixels span several source pixels (GDAL "average" read);
    # not with a nodata override, which GDAL would average into the data
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(np.abs(coef[:, 0, 0] * coef[:, 1, 1] - coef[:, 0, 1] * coef[:, 1, 0]))
    # per location (a chip must not depend on the other locations of the call)
    with np.errstate(invalid="ignore"):
        factor = np.where(ok, np.maximum(1, np.floor(np.nan_to_num(scale) * resolution_m + 1e-6)), 1).astype(np.int64)
    if src.nodata is not None:
        factor[:] = 1
    margin = 0.5 + factor  # covers the bilinear neighbours on the (decimated) read grid
    a = np.abs(coef)
    ext_c = (a[:, 0, 0] + a[:, 0, 1]) * half + (a[:, 0, 2] + a[:, 0, 3] + a[:, 0, 4]) * half * half
    ext_r = (a[:, 1, 0] + a[:, 1, 1]) * half + (a[:, 1, 2] + a[:, 1, 3] + a[:, 1, 4]) * half * half
    with np.errstate(invalid="ignore"):
        # source pixel box of each chip, neighbours included (unclipped, then clipped to the raster)
        lo_c = np.floor(np.clip(col - ext_c - margin, -1, ds.width + 1))
        hi_c = np.floor(np.clip(col + ext_c + margin, -1, ds.width + 1)) + 1
        lo_r = np.floor(np.clip(row - ext_r - margin, -1, ds.height + 1))
        hi_r = np.floor(np.clip(row + ext_r + margin, -1, ds.height + 1)) + 1
    ok &= np.isfinite(ext_c) & np.isfinite(ext_r)
    inside = ok & (lo_c >= 0) & (lo_r >= 0) & (hi_c <= ds.width) & (hi_r <= ds.height)
    lo_c, hi_c = np.clip(lo_c, 0, ds.width), np.clip(hi_c, 0, ds.width)
    lo_r, hi_r = np.clip(lo_r, 0, ds.height), np.clip(hi_r, 0, ds.height)
    ok &= (hi_c > lo_c) & (hi_r > lo_r)
    out[~ok, ch0:ch0 + len(bands)] = np.nan  # chips that miss the raster
    touching = np.flatnonzero(ok)
    if len(touching) == 0:
        return
    lo_c, hi_c = lo_c[touching].astype(np.int64), hi_c[touching].astype(np.int64)
    lo_r, hi_r = lo_r[touching].astype(np.int64), hi_r[touching].astype(np.int64)
    inside = inside[touching]
    factor = factor[touching]
    has_nd = np.array([v is not None and not math.isnan(v) for v in nodata], dtype=np.bool_)
    # nodata as the band stores it (a float32 band holds -9999.9 as -9999.900390625), as GDAL compares
    band_type = np.dtype(ds.dtypes[bands[0] - 1]).type
    nd = np.array([np.nan if v is None else float(band_type(v)) if np.dtype(band_type).kind == "f" else v
                   for v in nodata], dtype=np.float64)
    dx, dy = chip_offsets(S, resolution_m)
    bilinear = resampling == "bilinear"

    def run(loc, atlas, masks, slot_map, clean, block, grid, t0, origin, scl, fast_slot, box):
        sample_chips(atlas, masks, slot_map, clean, block[0], block[1], grid[0], grid[1], t0[0], t0[1],
                     float(origin[0]), float(origin[1]), float(scl[0]), float(scl[1]), col, row, coef,
                     loc.astype(np.int64), fast_slot.astype(np.int64), np.ascontiguousarray(box, dtype=np.int64),
                     dx, dy, nd, has_nd, bilinear, out, ch0, n_valid)

    block = _block_shape(ds, bands, 1)
    for f in np.unique(factor).tolist():
        sel = np.flatnonzero(factor == f)
        args = (touching[sel], lo_c[sel], hi_c[sel], lo_r[sel], hi_r[sel], inside[sel])
        if f == 1 and block is not None:  # tile by tile, through the process-wide store of decoded blocks
            _sample_blocks(ds, src, bands, nodata, use_mask, block, *args, run, max_window_bytes)
        else:  # window by window (striped or untiled files, decimated reads, other formats)
            _sample_windows(ds, src, bands, nodata, use_mask, f, *args, run, max_window_bytes, max_waste, out,
                            ch0)


def _check_dtypes(ds, path: str, bands: Sequence[int]) -> None:
    """Chips hold real numbers: complex bands (e.g. SAR SLC) and bands of mixed types are refused."""
    types = {ds.dtypes[b - 1] for b in bands}
    if len(types) > 1:
        raise InputError(f"raster {path}: bands {list(bands)} have different data types {sorted(types)}; "
                         "list them as separate sources")
    kind = np.dtype(types.pop()).kind
    if kind not in "uif":
        raise InputError(f"raster {path}: data type {ds.dtypes[bands[0] - 1]} is not supported (real integer "
                         "or float bands only; convert complex data to amplitude or intensity first)")


def _sample_blocks(ds, src: RasterSource, bands, nodata, use_mask, block, rows, lo_c, hi_c, lo_r, hi_r, inside,
                   run, max_window_bytes: int) -> None:
    """Sample the chips ``rows`` (boxes lo/hi, in source pixels) of a tiled source block by block."""
    bh, bw = block
    # the key covers all that a cached block depends on (clean depends on the nodata values)
    src_key = (_file_key(src.path), tuple(bands), tuple(use_mask), tuple(_nodata_json(v) for v in nodata))
    tlo_x, thi_x = lo_c // bw, (hi_c - 1) // bw
    tlo_y, thi_y = lo_r // bh, (hi_r - 1) // bh
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    arena = tile_cache().arena(src_key, dtype, len(bands), block, any(use_mask))
    # a group's blocks fit in the byte cap and in a quarter of the shared arena (room for other threads)
    block_bytes = bh * bw * len(bands) * (dtype.itemsize + (1 if any(use_mask) else 0))
    max_blocks = max(1, min(max_window_bytes // block_bytes, arena.capacity // 4))
    for gidx in _plan_block_groups(tlo_x, thi_x, tlo_y, thi_y, max_blocks):
        tx0, ty0 = int(tlo_x[gidx].min()), int(tlo_y[gidx].min())
        nx = int(thi_x[gidx].max()) - tx0 + 1
        ny = int(thi_y[gidx].max()) - ty0 + 1
        ids = _block_ids(tlo_x, thi_x, tlo_y, thi_y, gidx, nx)
        atlas, masks, clean, slots, pinned = _load_blocks(ds, arena, src_key, src.path, bands, nodata, use_mask,
                                                          block, ids // nx + ty0, ids % nx + tx0)
        try:
            slot_map = np.full((ny, nx), -1, dtype=np.int64)
            slot_map.ravel()[ids] = slots
            one = (tlo_x[gidx] == thi_x[gidx]) & (tlo_y[gidx] == thi_y[gidx])
            fast = np.where(one, slot_map[tlo_y[gidx] - ty0, tlo_x[gidx] - tx0], -2)
            fast = np.where(inside[gidx], fast, -1)
            box = np.stack([lo_c[gidx], lo_r[gidx], hi_c[gidx], hi_r[gidx], tlo_x[gidx] * bw,
                            tlo_y[gidx] * bh], 1)
            order = np.argsort(fast, kind="stable")  # block by block (in cache), in Hilbert order within
            run(rows[gidx][order], atlas, masks, slot_map, clean, block, (ds.height, ds.width),
                (ty0, tx0), (0, 0), (1.0, 1.0), fast[order], box[order])
        finally:
            if pinned is not None:
                pinned.release(slots.tolist())


def _sample_windows(ds, src: RasterSource, bands, nodata, use_mask, factor: int, rows, lo_c, hi_c, lo_r, hi_r,
                    inside, run, max_window_bytes: int, max_waste: float, out: np.ndarray, ch0: int) -> None:
    """Sample the chips ``rows`` by windows, read decimated by ``factor`` on the global grid of
    ``factor`` x ``factor`` source pixels (a partial last cell at the raster's right or bottom edge
    is left out: no data)."""
    max_px = max(1, max_window_bytes // (8 * len(bands))) * factor * factor
    for gidx, box in _plan_windows(lo_c, hi_c, lo_r, hi_r, max_px, max_waste):
        if factor > 1:
            box = _align_box(box, factor, ds.width, ds.height)
            if box[2] <= box[0] or box[3] <= box[1]:  # only the partial edge cells: no data
                out[rows[gidx], ch0:ch0 + len(bands)] = np.nan
                continue
        data, mask, clean = _read_window(ds, src.path, bands, nodata, use_mask, box, factor)
        h, w = data.shape[1:]
        sx, sy = (box[2] - box[0]) / w, (box[3] - box[1]) / h  # source pixels per read pixel
        fast = inside[gidx] & ((lo_c[gidx] - box[0]) / sx >= 0) & ((hi_c[gidx] - box[0]) / sx <= w) \
            & ((lo_r[gidx] - box[1]) / sy >= 0) & ((hi_r[gidx] - box[1]) / sy <= h)
        masks = mask[None] if mask is not None else np.empty((0, 1, 1, 1), dtype=np.uint8)
        # each chip's read pixels (neighbours included) on the window's read grid
        rbox = np.zeros((len(gidx), 6), dtype=np.int64)
        rbox[:, 0] = np.clip(np.floor((lo_c[gidx] - box[0]) / sx), 0, w)
        rbox[:, 1] = np.clip(np.floor((lo_r[gidx] - box[1]) / sy), 0, h)
        rbox[:, 2] = np.clip(np.ceil((hi_c[gidx] - box[0]) / sx), 0, w)
        rbox[:, 3] = np.clip(np.ceil((hi_r[gidx] - box[1]) / sy), 0, h)
        run(rows[gidx], np.ascontiguousarray(data)[None], masks, np.zeros((1, 1), dtype=np.int64),
            np.array([clean]), (h, w), (h, w), (0, 0),
            (box[0], box[1]), (sx, sy), np.where(fast, 0, -1), rbox)


_GDAL_CACHE_MB_FOR_BLOCKS = 32


@contextlib.contextmanager
def block_read_env(sources: Sequence[RasterSource]) -> Iterator[None]:
    """While sampling only tiled sources (read block by block into geoembed's own cache), GDAL's
    block cache is a second copy of every decoded block: use a small one (32 MB) unless the user
    set ``GDAL_CACHEMAX``. Filling a large one costs page faults: the benchmark raster's blocks
    decode in 1.1 s of CPU with 16 MB and 1.4 s with GDAL's default (5% of RAM)."""
    import rasterio

    tiled = True
    for src in sources:
        with open_raster(src.path) as ds:
            bands = list(src.bands) if src.bands else list(range(1, ds.count + 1))
            tiled &= _block_shape(ds, bands, 1) is not None
    if "GDAL_CACHEMAX" in os.environ or not tiled:
        yield
        return
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB_FOR_BLOCKS):
        yield


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
            bands = tuple(int(b) for b in sel) if sel is not None else default_bands(ds)
            _check_dtypes(ds, p, bands)
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
                "files": [str(f) for f in ds.files],
            })
        sources.append(RasterSource(p, bands, override))
    for info in infos:
        info["fingerprint"] = raster_fingerprint(info["path"], files=info.pop("files"))
    return sources, infos


# --------------------------------------------------------------------------- build
_MAX_CHUNK_BYTES = 64 << 20


def raster_chunk_rows(chunk_size: int, channels: int, chip_size: int) -> int:
    """Rows per chunk (and task) of a raster view: ``chunk_size``, or fewer so that a chunk's float32
    chips stay within 64 MB (large chips: 256 x 256 x 3 gives 85 rows), at least 16."""
    row_bytes = 4 * channels * chip_size * chip_size
    return int(max(1, min(chunk_size, max(16, _MAX_CHUNK_BYTES // row_bytes))))


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

    Store row i is ``locations`` row i; chunks are contiguous runs of ``dask_cfg.chunk_size`` rows,
    fewer where that many chips would exceed 64 MB of float32 (:func:`raster_chunk_rows`)
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
    chunk_rows = raster_chunk_rows(dask_cfg.chunk_size, channels, S)
    fingerprint = text_fingerprint({
        "config": cfg.model_dump(mode="json"),
        "sources": attrs["fingerprints"],
        "locations": _coords_fingerprint(ids, lon, lat),
        "chunk_size": chunk_rows,
    })
    store = ViewStore.create_or_resume(
        out_dir,
        location_ids=ids,
        arrays={"chips": ArraySpec((channels, S, S), cfg.dtype)},
        chunk_rows=chunk_rows,
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
        with block_read_env(sources):
            run_tasks(tasks, scheduler=dask_cfg.scheduler, num_workers=dask_cfg.num_workers,
                      desc=f"raster view {cfg.name}")
    finally:
        close_cached_datasets()
        tile_cache().clear()  # give the decoded blocks back once the view is built
    return store.finalize()
