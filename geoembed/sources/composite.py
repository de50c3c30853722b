"""Chips of a STAC raster view: the items under each location's chip, sampled and composited.

:func:`composite` is pure array work: per-item chip stacks (K, N, C, H, W) with NaN as no data, and
optionally per-item class chips whose classes outside ``keep`` are no data. An item's pixel is an
observation only where all its bands are valid and its class is kept; ``median`` takes each band's
median over the observations (the mean of the two middle ones for an even count), ``first`` the
first observation in item order (items come least cloudy first). A pixel without observation is NaN,
never zero.

:func:`read_stac_chunk` is the per-chunk reader: for each location it finds the items whose
footprint meets its chip (a shapely STRtree), samples every item once for all its locations (one
sampler call per item and batch of locations, :mod:`geoembed.sources.sampler`), stacks each
location's items by rank in item order, and composites. The stack is bounded: locations are taken in
batches so that it stays under ``max_stack_bytes``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from geoembed.errors import GeoembedError, InputError
from geoembed.sources.assets import StacAssets, StacItemAssets, gdal_path, load_hook
from geoembed.sources.extent import chip_bounds
from geoembed.sources.sampler import sample_chips, sample_classes

__all__ = ["composite", "item_hits", "read_stac_chunk"]


def composite(chips: np.ndarray, mask_classes: np.ndarray | None = None, keep: Sequence[int] | None = None,
              method: str = "median") -> np.ndarray:
    """Composite per-item chips (K, N, C, H, W) into (N, C, H, W) float32 (module docstring).

    ``mask_classes``: (K, N, H, W) or (K, N, 1, H, W) classes (NaN = none), with ``keep`` the classes
    that are observations; ``method``: ``median`` or ``first`` (first valid item along axis 0).
    """
    x = np.asarray(chips, dtype=np.float32)
    if x.ndim != 5:
        raise ValueError(f"chips must be (items, N, C, H, W), got shape {x.shape}")
    k, n, c, h, w = x.shape
    valid = np.isfinite(x).all(axis=2)  # (K, N, H, W)
    if mask_classes is not None:
        m = np.asarray(mask_classes)
        m = m[:, :, 0] if m.ndim == 5 else m
        if m.shape != valid.shape:
            raise ValueError(f"mask_classes shape {np.shape(mask_classes)} does not match chips {x.shape}")
        if keep is None:
            raise ValueError("mask_classes needs keep")
        valid &= np.isin(m, np.asarray(list(keep), dtype=np.float64))
    if k == 0:
        return np.full((n, c, h, w), np.nan, dtype=np.float32)
    if method == "first":
        idx = valid.argmax(axis=0)  # the first True along items (0 where none)
        out = np.take_along_axis(x, idx[None, :, None], axis=0)[0]
        out[np.broadcast_to(~valid.any(axis=0)[:, None], out.shape)] = np.nan
        return out
    if method != "median":
        raise ValueError(f"method must be median or first, not {method!r}")
    obs = np.where(valid[:, :, None], x, np.float32(np.nan))
    obs.sort(axis=0)  # NaN last
    count = valid.sum(axis=0)[:, None]  # (N, 1, H, W)
    lo = np.broadcast_to(np.maximum(count - 1, 0) // 2, (n, c, h, w))
    hi = np.broadcast_to(count // 2, (n, c, h, w))
    a = np.take_along_axis(obs, lo[None], axis=0)[0].astype(np.float64)
    b = np.take_along_axis(obs, np.minimum(hi, k - 1)[None], axis=0)[0].astype(np.float64)
    out = ((a + b) / 2.0).astype(np.float32)
    out[np.broadcast_to(count == 0, out.shape)] = np.nan
    return out


def item_hits(items: Sequence[StacItemAssets], lon: np.ndarray, lat: np.ndarray, chip_size: int,
              resolution_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(item index, location index) pairs where an item's footprint meets the location's chip,
    sorted by location and then item order. Footprints are in [-180, 180]; a chip across the
    antimeridian is also tested shifted by 360 degrees."""
    import shapely

    bounds = chip_bounds(lon, lat, chip_size, resolution_m)
    ok = np.flatnonzero(np.isfinite(bounds).all(1))
    known = [i for i, it in enumerate(items) if it.footprint is not None]
    pairs = [np.stack(np.meshgrid([i for i, it in enumerate(items) if it.footprint is None], ok,
                                  indexing="ij"), -1).reshape(-1, 2)]
    if known and len(ok):
        tree = shapely.STRtree([items[i].footprint for i in known])
        b = bounds[ok]
        for shift in (0.0, 360.0, -360.0):
            sel = np.ones(len(ok), bool) if shift == 0 else (b[:, 0] + shift <= 180.0) & (b[:, 2] + shift >= -180.0)
            if not sel.any():
                continue
            boxes = shapely.box(b[sel, 0] + shift, b[sel, 1], b[sel, 2] + shift, b[sel, 3])
            loc, tree_idx = tree.query(boxes, predicate="intersects")
            pairs.append(np.stack([np.asarray(known)[tree_idx], ok[sel][loc]], -1))
    allp = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    order = np.lexsort((allp[:, 0], allp[:, 1]))
    return allp[order, 0], allp[order, 1]


def _item_error(item: StacItemAssets, err: Exception, signed: dict[str, str]) -> InputError:
    text = str(err)
    for plain, path in signed.items():  # never show a signature
        text = text.replace(path, gdal_path(plain))
    text = re.sub(r"\?[^\s'\"]*", "?...", text) if signed else text
    return InputError(f"STAC item {item.id} (collection {item.collection}): {text}; check the network and the "
                      "asset URLs (signed URLs: stac.sign), then rerun: finished chunks are kept")


def _read_item(assets: StacAssets, item: StacItemAssets, lon, lat, chip_size: int, resolution_m: float,
               resampling: str, sign) -> tuple[np.ndarray, np.ndarray | None]:
    """One item's data chips (n, C, S, S) and class chips (n, S, S) (None without a mask)."""
    signed = {h: gdal_path(sign(h) if sign is not None else h) for h in (*item.hrefs, item.mask_href) if h}
    try:
        data = sample_chips([signed[h] for h in item.hrefs], lon, lat, chip_size=chip_size,
                            resolution_m=resolution_m, resampling=resampling, nodata=assets.nodata,
                            timeout_s=assets.timeout_s)
        classes = None
        if item.mask_href is not None:
            classes = sample_classes(signed[item.mask_href], lon, lat, chip_size=chip_size,
                                     resolution_m=resolution_m, timeout_s=assets.timeout_s)
    except (GeoembedError, RasterioError, CPLE_BaseError, OSError) as err:  # each names the file
        raise _item_error(item, err, signed if sign is not None else {}) from None
    if data.shape[1] != len(item.hrefs):
        raise InputError(f"STAC item {item.id}: assets {list(assets.asset_keys)} give {data.shape[1]} bands, not "
                         f"{len(item.hrefs)}: each asset must be a single band (list a multi-band asset's bands "
                         "as separate assets)")
    return data, classes


def read_stac_chunk(assets: StacAssets, lon: np.ndarray, lat: np.ndarray, *, chip_size: int,
                    resolution_m: float, resampling: str = "bilinear",
                    max_stack_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Composited chips for one chunk of locations (a pure function of its inputs).

    Returns ``chips`` float32 (n, C, chip_size, chip_size), NaN where no item gives a kept, valid
    pixel, and ``valid_fraction`` float32 (n,). Raises InputError naming the item on a read failure
    (unreachable file, no CRS, a multi-band asset).
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    n, c, s = len(lon), assets.channels, int(chip_size)
    out = np.full((n, c, s, s), np.nan, dtype=np.float32)
    it_idx, loc_idx = item_hits(assets.items, lon, lat, s, resolution_m)
    if len(loc_idx) == 0:
        return out, np.zeros(n, dtype=np.float32)
    first = np.r_[True, loc_idx[1:] != loc_idx[:-1]]
    rank = np.arange(len(loc_idx)) - np.maximum.accumulate(np.where(first, np.arange(len(loc_idx)), 0))
    per_loc = (c + (1 if assets.mask_keep is not None else 0)) * s * s * 4
    batch = max(1, max_stack_bytes // (per_loc * (int(rank.max()) + 1)))
    sign = load_hook(assets.sign)
    for b0 in range(0, n, batch):
        sel = np.flatnonzero((loc_idx >= b0) & (loc_idx < b0 + batch))
        if len(sel) == 0:
            continue
        k = int(rank[sel].max()) + 1
        nb = min(batch, n - b0)
        stack = np.full((k, nb, c, s, s), np.nan, dtype=np.float32)
        classes = np.full((k, nb, s, s), np.nan, dtype=np.float32) if assets.mask_keep is not None else None
        for i in np.unique(it_idx[sel]):
            rows = sel[it_idx[sel] == i]
            locs = loc_idx[rows]
            data, cls = _read_item(assets, assets.items[i], lon[locs], lat[locs], s, resolution_m, resampling, sign)
            stack[rank[rows], locs - b0] = data
            if classes is not None:
                classes[rank[rows], locs - b0] = cls
        out[b0:b0 + nb] = composite(stack, classes, assets.mask_keep, assets.composite)
    valid_fraction = np.isfinite(out).mean(axis=(1, 2, 3)).astype(np.float32) if c else np.zeros(n, np.float32)
    return out, valid_fraction
