"""Sampling chips: :func:`extract_chips`, the pure per-chunk computation of a raster view.

For each source, the chip geometry (:mod:`geoembed.views.raster.geometry`) gives every location's pixel
box in the source; the locations are then read in groups (:mod:`geoembed.views.raster.reading`: block by
block through the shared cache, or window by window) and a compiled kernel
(:mod:`geoembed.views.raster.kernel`, numba, no GIL) samples the chips straight from the decoded source
values in their native dtype; no float copy of the raster is made. Invalid values are NaN in the chips:
outside the raster, NaN in the source, equal to the band's nodata, or masked by the dataset mask when
no nodata is declared.

* ``nearest``: the source pixel containing the chip pixel centre.
* ``bilinear``: the usual 4-neighbour weights, renormalised over the valid neighbours; the result is
  NaN when the pixel containing the sample point (the nearest neighbour) is invalid. So nodata holes
  and raster edges never bleed, and bilinear and nearest chips have exactly the same NaN pattern.

Values are the raw band values (no scale/offset applied). ``valid_fraction`` is the fraction of non-NaN
values over all bands and pixels of a chip; a chip is never silently filled with zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from geoembed.io.tilecache import tile_cache
from geoembed.views.raster.geometry import chip_offsets, source_pixel_frame
from geoembed.views.raster.reading import (
    align_box,
    block_ids,
    block_shape,
    load_blocks,
    plan_block_groups,
    plan_windows,
    read_window,
)
from geoembed.views.raster.sources import (
    RasterSource,
    band_nodata,
    check_dtypes,
    default_bands,
    file_key,
    nodata_json,
    open_cached,
)

__all__ = ["extract_chips"]


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
    opened = [(src, open_cached(src.path, src.crs)) for src in sources]
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
    from geoembed.views.raster.kernel import sample_chips

    S = out.shape[-1]
    half = (S - 1) / 2.0 * resolution_m
    step = max(half, resolution_m, 1.0)
    check_dtypes(ds, src.path, bands)
    nodata, use_mask = band_nodata(ds, bands, src.nodata)
    col, row, coef, ok = source_pixel_frame(src.crs_wkt(ds), ds.transform, lon, lat, step, width=ds.width)
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

    block = block_shape(ds, bands, 1)
    for f in np.unique(factor).tolist():
        sel = np.flatnonzero(factor == f)
        args = (touching[sel], lo_c[sel], hi_c[sel], lo_r[sel], hi_r[sel], inside[sel])
        if f == 1 and block is not None:  # tile by tile, through the process-wide store of decoded blocks
            _sample_blocks(ds, src, bands, nodata, use_mask, block, *args, run, max_window_bytes)
        else:  # window by window (striped or untiled files, decimated reads, other formats)
            _sample_windows(ds, src, bands, nodata, use_mask, f, *args, run, max_window_bytes, max_waste, out,
                            ch0)


def _sample_blocks(ds, src: RasterSource, bands, nodata, use_mask, block, rows, lo_c, hi_c, lo_r, hi_r, inside,
                   run, max_window_bytes: int) -> None:
    """Sample the chips ``rows`` (boxes lo/hi, in source pixels) of a tiled source block by block."""
    bh, bw = block
    # the key covers all that a cached block depends on (clean depends on the nodata values)
    src_key = (file_key(src.path), tuple(bands), tuple(use_mask), tuple(nodata_json(v) for v in nodata))
    tlo_x, thi_x = lo_c // bw, (hi_c - 1) // bw
    tlo_y, thi_y = lo_r // bh, (hi_r - 1) // bh
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    arena = tile_cache().arena(src_key, dtype, len(bands), block, any(use_mask))
    # a group's blocks fit in the byte cap and in a quarter of the shared arena (room for other threads)
    block_bytes = bh * bw * len(bands) * (dtype.itemsize + (1 if any(use_mask) else 0))
    max_blocks = max(1, min(max_window_bytes // block_bytes, arena.capacity // 4))
    for gidx in plan_block_groups(tlo_x, thi_x, tlo_y, thi_y, max_blocks):
        tx0, ty0 = int(tlo_x[gidx].min()), int(tlo_y[gidx].min())
        nx = int(thi_x[gidx].max()) - tx0 + 1
        ny = int(thi_y[gidx].max()) - ty0 + 1
        ids = block_ids(tlo_x, thi_x, tlo_y, thi_y, gidx, nx)
        atlas, masks, clean, slots, pinned = load_blocks(ds, arena, src_key, src.path, bands, nodata, use_mask,
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
    for gidx, box in plan_windows(lo_c, hi_c, lo_r, hi_r, max_px, max_waste):
        if factor > 1:
            box = align_box(box, factor, ds.width, ds.height)
            if box[2] <= box[0] or box[3] <= box[1]:  # only the partial edge cells: no data
                out[rows[gidx], ch0:ch0 + len(bands)] = np.nan
                continue
        data, mask, clean = read_window(ds, src.path, bands, nodata, use_mask, box, factor)
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


