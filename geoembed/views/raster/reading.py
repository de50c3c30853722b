"""Reading raster sources: windows and internal blocks, planned per group of nearby locations.

* Tiled GeoTIFFs and COGs at native resolution are read block by block through a process-wide cache of
  decoded blocks shared by all threads (:mod:`geoembed.io.tilecache`, ``GEOEMBED_TILE_CACHE_MB``,
  default 128): each block a chunk's chips touch is decoded once per process while it stays cached,
  also where chunks on different threads share it, and blocks no chip touches are never read
  (:func:`block_shape` says which sources qualify, :func:`plan_block_groups` and :func:`load_blocks`
  do the work).
* Other sources (striped or untiled files, VRTs and other formats) are read by windows: one per group
  of nearby locations covering all their chips, clipped to the raster (:func:`plan_windows`).
* When a chip pixel spans two or more source pixels (``resolution_m`` much coarser than the raster),
  the window is read decimated by that integer factor with GDAL ``average`` resampling (overviews are
  used when present), which keeps the read small and anti-aliases. The averaging cells are a global
  grid (``factor`` x ``factor`` source pixels from the raster's origin, :func:`align_box`), so a chip does
  not depend on the other locations; a partial last cell at the right or bottom edge is no data.

Memory: locations are grouped by recursive k-d halving on the longer axis: for windows, until each is
below ``max_window_bytes`` and not much larger than the chips it serves (``max_waste`` times their
summed footprints, windows under ~1 Mpx always accepted); for blocks, until a group's blocks fit in
``max_window_bytes``. Sparse locations over a big raster thus read small windows or only their own
blocks; locations whose chip misses a raster read nothing from it. Peak memory per task is the group's
window or block atlas (native dtype, capped by ``max_window_bytes``) plus the chunk's chips, plus the
shared block cache and GDAL's (``GDAL_CACHEMAX``, kept small by :func:`block_read_env`): it depends on
the chunk size, not on the number of locations.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from geoembed.errors import InputError
from geoembed.io.rasters import open_raster
from geoembed.io.tilecache import BlockArena
from geoembed.views.raster.sources import RasterSource

__all__ = [
    "align_box",
    "block_ids",
    "block_read_env",
    "block_shape",
    "load_blocks",
    "plan_block_groups",
    "plan_windows",
    "read_window",
]

_MIN_WINDOW_PX = 1 << 20
_MAX_BLOCK_PX = 1 << 22  # larger internal blocks are read by windows
_MAX_SLOT_MAP = 1 << 16  # block bounding box of one group of locations, in blocks
_local = threading.local()


def plan_windows(
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


def align_box(box: tuple[int, int, int, int], factor: int, width: int, height: int):
    """Grow a window to the global grid of ``factor`` x ``factor`` source pixels (cells start at
    multiples of ``factor``), without the partial last cell at the right and bottom edges, so that
    a decimated read has exactly ``factor`` source pixels per read pixel and the same cells
    whatever the other locations of the call."""
    x0, y0, x1, y1 = box
    x0, y0 = (x0 // factor) * factor, (y0 // factor) * factor
    x1 = min(-(-x1 // factor) * factor, (width // factor) * factor)
    y1 = min(-(-y1 // factor) * factor, (height // factor) * factor)
    return x0, y0, x1, y1


def read_window(ds, path: str, bands: Sequence[int], nodata: Sequence[float | None],
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


def block_shape(ds, bands: Sequence[int], factor: int) -> tuple[int, int] | None:
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


def plan_block_groups(tlo_x, thi_x, tlo_y, thi_y, max_blocks: int) -> list[np.ndarray]:
    """Split locations (given by their inclusive block ranges) into groups whose blocks fit in
    ``max_blocks`` slots and whose block bounding box is small enough for a dense slot map."""
    stack = [np.arange(len(tlo_x))]
    out = []
    while stack:
        idx = stack.pop()
        nx = int(thi_x[idx].max() - tlo_x[idx].min() + 1)
        ny = int(thi_y[idx].max() - tlo_y[idx].min() + 1)
        if len(idx) == 1 or (nx * ny <= _MAX_SLOT_MAP and len(block_ids(tlo_x, thi_x, tlo_y, thi_y, idx, nx))
                             <= max_blocks):
            out.append(idx)
            continue
        key = (tlo_x[idx] + thi_x[idx]) if nx >= ny else (tlo_y[idx] + thi_y[idx])
        order = np.argsort(key, kind="stable")
        half = len(idx) // 2
        stack.append(idx[order[half:]])
        stack.append(idx[order[:half]])
    return out


def block_ids(tlo_x, thi_x, tlo_y, thi_y, idx: np.ndarray, nx: int) -> np.ndarray:
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


def load_blocks(ds, arena: BlockArena, src_key: tuple, path: str, bands: Sequence[int],
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
        return read_window(ds, path, bands, nodata, use_mask, (x0, y0, x1, y1), 1,
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
        clean[k] = read_window(ds, path, bands, nodata, use_mask, (x0, y0, x1, y1), 1,
                                out=data[k, :, :y1 - y0, :x1 - x0],
                                out_mask=masks[k, :, :y1 - y0, :x1 - x0] if with_mask else None)[2]
    return data, masks, clean, np.arange(len(keys), dtype=np.int64), None


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
        with open_raster(src.path, crs=src.crs) as ds:
            bands = list(src.bands) if src.bands else list(range(1, ds.count + 1))
            tiled &= block_shape(ds, bands, 1) is not None
    if "GDAL_CACHEMAX" in os.environ or not tiled:
        yield
        return
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB_FOR_BLOCKS):
        yield


