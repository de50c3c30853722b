"""The compiled inner loop of the raster view: sample chips from decoded raster blocks.

One call fills the chips of a group of locations from an *atlas*: decoded blocks of one source in
their native dtype, ``atlas[slot, band, y, x]``, laid out on a grid of equal blocks
(``block_h`` x ``block_w`` read pixels; ``slot_map[ty - ty0, tx - tx0]`` is the slot of block
(ty, tx), -1 when not loaded). A whole window read is the one-block case. No float copy of the
source is made: values are converted as they are sampled.

For chip pixel (r, c) of location i the source position comes from the local quadratic model of
:func:`geoembed.views.raster.geometry.source_pixel_frame`, with the same floating-point operations as
:func:`geoembed.views.raster.geometry.chip_pixel_coords`, then shifted to the read grid
(``u = (col - ox) / sx``). ``nearest`` takes the read pixel containing (u, v); ``bilinear`` takes the
usual four neighbours of (u - 0.5, v - 0.5) with float32 weights, renormalised over the valid ones,
and gives NaN when the nearest neighbour is invalid. A value is invalid when it lies outside the
read grid, in a block that is not loaded, is NaN or infinite, equals the band's nodata (compared in
float64 after the nodata is cast to the band's dtype), or is 0 in the mask.

Each chip is done in two passes: positions and weights for all its pixels, then band by band the
gathers. The part of the source under a chip whose pixels, neighbours included, lie in *clean*
blocks (no invalid value; one block, or several inside the raster) is first converted to a small
float32 patch (contiguous, in cache), then gathered without any check; the other chips go through
block lookups and validity checks.
The kernel runs without the GIL, so threads sample chunks in parallel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["sample_chips"]


@njit(inline="always", nogil=True, cache=True)
def _locate(x, y, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0):
    """(slot, local y, local x) of read pixel (x, y); slot -1 when outside or not loaded."""
    if x < 0 or y < 0 or x >= grid_w or y >= grid_h:
        return -1, 0, 0
    ty = y // block_h
    tx = x // block_w
    jy = ty - ty0
    jx = tx - tx0
    if jy < 0 or jx < 0 or jy >= slot_map.shape[0] or jx >= slot_map.shape[1]:
        return -1, 0, 0
    return slot_map[jy, jx], y - ty * block_h, x - tx * block_w


@njit(inline="always", nogil=True, cache=True)
def _value(atlas, masks, use_mask, s, ly, lx, b, nd, has_nd):
    """(float32 value, valid) of band b at a located pixel."""
    if s < 0:
        return np.float32(np.nan), False
    v = atlas[s, b, ly, lx]
    f = np.float64(v)
    if not np.isfinite(f) or (has_nd and f == nd):
        return np.float32(np.nan), False
    if use_mask and masks[s, b, ly, lx] == 0:
        return np.float32(np.nan), False
    return np.float32(v), True


@njit(nogil=True, cache=True)
def _gather_clean(src, slot_base, plane, row_w, fy, fx, ix, iy, wxs, wys, off, nb, bilinear, o, ch0):
    """Chip values from a clean patch ``src`` (flat; plane ``plane``, row length ``row_w``, top-left
    read pixel (fy, fx) at ``slot_base``), without any checks; the same arithmetic as the checked
    path, so a chip does not depend on which path sampled it. Offsets are unsigned: no negative-index
    wraparound in the loads (they are in range by construction)."""
    npx = ix.shape[0]
    for p in range(npx):
        off[p] = np.uint64(slot_base + (iy[p] - fy) * row_w + (ix[p] - fx))
    rw = np.uint64(row_w)
    one = np.uint64(1)
    for b in range(nb):
        pb = np.uint64(b * plane)
        ob = o[ch0 + b].reshape(-1)
        if bilinear:
            for p in range(npx):
                q = off[p] + pb
                v00 = np.float32(src[q])
                v01 = np.float32(src[q + one])
                v10 = np.float32(src[q + rw])
                v11 = np.float32(src[q + rw + one])
                wx = wxs[p]
                top = (v01 - v00) * wx + v00
                bot = (v11 - v10) * wx + v10
                ob[p] = (bot - top) * wys[p] + top
        else:
            for p in range(npx):
                ob[p] = np.float32(src[off[p] + pb])


@njit(nogil=True, cache=True)
def sample_chips(atlas, masks, slot_map, clean, block_h, block_w, grid_h, grid_w, ty0, tx0,
                 ox, oy, sx, sy, col, row, coef, rows, fast_slot, box, dx, dy, nodata, has_nodata,
                 bilinear, out, ch0, n_valid):
    """Fill ``out[rows, ch0:ch0 + bands]`` (float32; every value written, NaN where invalid) with
    sampled chip values and add the number of valid values per row to ``n_valid``.

    ``col, row`` (n,) and ``coef`` (n, 2, 5) are the locations' source-pixel frames; ``rows`` the
    locations to fill. Per location k, ``box[k] = (x0, y0, x1, y1, bx, by)``: the read pixels its
    chip can touch, neighbours included, and the top-left pixel of the block ``fast_slot[k]`` that
    holds them all; ``fast_slot[k]`` is -2 when the box is inside the read grid but spans several
    blocks, -1 when it is not inside. ``clean`` (slots,) says which blocks hold no invalid value.
    ``dx, dy`` are the chip offsets in metres; ``nodata, has_nodata`` (bands,); ``masks`` has a zero
    first dimension when no mask is used.
    """
    nb = atlas.shape[1]
    use_mask = masks.shape[0] > 0
    size = dx.shape[0]
    npx = size * size
    plane = block_h * block_w
    flat = atlas.reshape(-1)
    one = np.float32(1.0)
    half = np.float32(0.5)
    nan = np.float32(np.nan)
    isx = 1.0 / sx
    isy = 1.0 / sy
    ix = np.empty(npx, np.int64)
    iy = np.empty(npx, np.int64)
    off = np.empty(npx, np.uint64)
    wxs = np.empty(npx, np.float32)
    wys = np.empty(npx, np.float32)
    fpatch = np.empty(nb * (size + 4) * (size + 4), np.float32)
    for k in range(rows.shape[0]):
        i = rows[k]
        fs = fast_slot[k]
        c0 = col[i] - ox
        r0 = row[i] - oy
        a0, a1, a2, a3, a4 = coef[i, 0, 0], coef[i, 0, 1], coef[i, 0, 2], coef[i, 0, 3], coef[i, 0, 4]
        b0, b1, b2, b3, b4 = coef[i, 1, 0], coef[i, 1, 1], coef[i, 1, 2], coef[i, 1, 3], coef[i, 1, 4]
        # pass 1: read-grid position (and bilinear weights) of every chip pixel
        xmin = ymin = np.int64(1) << 62
        xmax = ymax = -(np.int64(1) << 62)
        for yy in range(size):
            nn = dy[yy]
            alr_c = a1 * nn + a4 * nn * nn
            alr_r = b1 * nn + b4 * nn * nn
            for xx in range(size):
                ee = dx[xx]
                cross = nn * ee
                u = (c0 + a0 * ee + a2 * ee * ee) + alr_c
                u += a3 * cross
                v = (r0 + b0 * ee + b2 * ee * ee) + alr_r
                v += b3 * cross
                u *= isx
                v *= isy
                p = yy * size + xx
                if bilinear:
                    u -= 0.5
                    v -= 0.5
                    xf = np.floor(u)
                    yf = np.floor(v)
                    wxs[p] = np.float32(u - xf)
                    wys[p] = np.float32(v - yf)
                else:
                    xf = np.floor(u)
                    yf = np.floor(v)
                ix[p] = np.int64(xf)
                iy[p] = np.int64(yf)
                xmin = min(xmin, ix[p])
                xmax = max(xmax, ix[p])
                ymin = min(ymin, iy[p])
                ymax = max(ymax, iy[p])
        o = out[i]
        # the checks-free paths only for chips whose pixels (and neighbours) are inside their box
        reach = 1 if bilinear else 0
        if xmin < box[k, 0] or ymin < box[k, 1] or xmax + reach >= box[k, 2] or ymax + reach >= box[k, 3]:
            fs = -1
        # pass 2, fast: one clean block; its part under the chip to a float32 patch, then no checks
        if fs >= 0 and clean[fs]:
            # the patch spans exactly the pixels the chip reads (inside its box, checked above)
            x0, y0, x1, y1 = xmin, ymin, xmax + 1 + reach, ymax + 1 + reach
            ph, pw = y1 - y0, x1 - x0
            need = nb * ph * pw
            if need > fpatch.shape[0]:
                fpatch = np.empty(need, np.float32)
            oy0 = y0 - box[k, 5]
            ox0 = x0 - box[k, 4]
            for b in range(nb):
                for yy in range(ph):
                    src = np.uint64((fs * nb + b) * plane + (oy0 + yy) * block_w + ox0)
                    dst = np.uint64((b * ph + yy) * pw)
                    for xx in range(np.uint64(pw)):
                        fpatch[dst + xx] = flat[src + xx]
            _gather_clean(fpatch, 0, ph * pw, pw, y0, x0, ix, iy, wxs, wys, off, nb, bilinear, o, ch0)
            n_valid[i] += nb * npx
            continue
        # pass 2, patch: the box spans several blocks; copy it if they are all loaded and clean
        if fs == -2:
            # the patch spans exactly the pixels the chip reads (inside its box, checked above)
            x0, y0, x1, y1 = xmin, ymin, xmax + 1 + reach, ymax + 1 + reach
            ph, pw = y1 - y0, x1 - x0
            need = nb * ph * pw
            if need > fpatch.shape[0]:
                fpatch = np.empty(need, np.float32)
            # every block under the box loaded and clean (the box inside the read grid), then copied
            # rectangle by rectangle (an edge block fills the top-left part of its slot)
            good = x0 >= 0 and y0 >= 0 and x1 <= grid_w and y1 <= grid_h
            bty0, bty1 = y0 // block_h, (y1 - 1) // block_h
            btx0, btx1 = x0 // block_w, (x1 - 1) // block_w
            for ty in range(bty0, bty1 + 1):
                if not good:
                    break
                for tx in range(btx0, btx1 + 1):
                    jy, jx = ty - ty0, tx - tx0
                    if jy < 0 or jx < 0 or jy >= slot_map.shape[0] or jx >= slot_map.shape[1]:
                        good = False
                        break
                    s = slot_map[jy, jx]
                    if s < 0 or not clean[s]:
                        good = False
                        break
            if good:
                for ty in range(bty0, bty1 + 1):
                    ya, yb = max(y0, ty * block_h), min(y1, (ty + 1) * block_h)
                    for tx in range(btx0, btx1 + 1):
                        xa, xb = max(x0, tx * block_w), min(x1, (tx + 1) * block_w)
                        s = slot_map[ty - ty0, tx - tx0]
                        for b in range(nb):
                            for y in range(ya, yb):
                                src = np.uint64(((s * nb + b) * block_h + y - ty * block_h) * block_w
                                                + xa - tx * block_w)
                                dst = np.uint64((b * ph + y - y0) * pw + xa - x0)
                                for xx in range(np.uint64(xb - xa)):
                                    fpatch[dst + xx] = flat[src + xx]
            if good:
                _gather_clean(fpatch, 0, ph * pw, pw, y0, x0, ix, iy, wxs, wys, off, nb, bilinear, o, ch0)
                n_valid[i] += nb * npx
                continue
        # pass 2, general: block lookups, bounds and validity checks
        nv = 0
        for b in range(nb):
            nd = nodata[b]
            hn = has_nodata[b]
            ob = o[ch0 + b].reshape(-1)
            for p in range(npx):
                ob[p] = nan
                x = ix[p]
                y = iy[p]
                if not bilinear:
                    s, ly, lx = _locate(x, y, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0)
                    val, ok = _value(atlas, masks, use_mask, s, ly, lx, b, nd, hn)
                    if ok:
                        ob[p] = val
                        nv += 1
                    continue
                s, ly, lx = _locate(x, y, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0)
                v00, k00 = _value(atlas, masks, use_mask, s, ly, lx, b, nd, hn)
                s, ly, lx = _locate(x + 1, y, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0)
                v01, k01 = _value(atlas, masks, use_mask, s, ly, lx, b, nd, hn)
                s, ly, lx = _locate(x, y + 1, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0)
                v10, k10 = _value(atlas, masks, use_mask, s, ly, lx, b, nd, hn)
                s, ly, lx = _locate(x + 1, y + 1, slot_map, block_h, block_w, grid_h, grid_w, ty0, tx0)
                v11, k11 = _value(atlas, masks, use_mask, s, ly, lx, b, nd, hn)
                wx = wxs[p]
                wy = wys[p]
                if k00 and k01 and k10 and k11:  # lerp form: exact on constant fields
                    top = (v01 - v00) * wx + v00
                    bot = (v11 - v10) * wx + v10
                    ob[p] = (bot - top) * wy + top
                    nv += 1
                    continue
                if wy >= half:
                    near_ok = k11 if wx >= half else k10
                else:
                    near_ok = k01 if wx >= half else k00
                if not near_ok:
                    continue
                w00 = (one - wx) * (one - wy)
                w01 = wx * (one - wy)
                w10 = (one - wx) * wy
                w11 = wx * wy
                num = np.float32(0.0)
                den = np.float32(0.0)
                if k00:
                    num += v00 * w00
                    den += w00
                if k01:
                    num += v01 * w01
                    den += w01
                if k10:
                    num += v10 * w10
                    den += w10
                if k11:
                    num += v11 * w11
                    den += w11
                if den > 0:
                    ob[p] = num / den
                    nv += 1
        n_valid[i] += nv
