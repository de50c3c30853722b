"""The compiled inner loops of the OSM view: disk aggregates (:class:`geoembed.views.osm_geom.DiskIndex`)
and nearest distances.

One call sums, for every query point, the primitives of a grid index inside the disk of radius ``r``
around it, per category: the grid rows the disk covers, each split into a fully-inside column range
(read from the per-row prefix sums) and the rim cells on either side, whose primitives are classified
one by one (surely inside or outside by their anchor distance and reach; the thin band exactly) and,
when they cross the circle, evaluated in closed form. The arithmetic is that of the module docstring
of :mod:`geoembed.views.osm_geom`; the winding term of polygon areas (a point-in-polygon query) is added
by the caller.

:func:`nearest_distances` serves :class:`geoembed.views.osm_geom.NearestIndex`: the distance to the
nearest segment on the same kind of grid, searched ring by ring outwards. Everything runs without the GIL.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["KIND_AREA", "KIND_COUNT", "KIND_LENGTH", "disk_sums", "nearest_distances", "segment_lengths"]

KIND_COUNT, KIND_LENGTH, KIND_AREA = 0, 1, 2
_EPS = 1e-12  # squared distances are within a few ulps: margins for the sure classes


@njit(inline="always", nogil=True, cache=True)
def _roots(s0x, s0y, s1x, s1y, qx, qy, r):
    """Relative start, direction and the roots ``r1 <= r2`` of ``|p + t d| = r`` (``-b / a`` twice
    when the line misses the circle) of one segment."""
    px = s0x - qx
    py = s0y - qy
    dx = s1x - s0x
    dy = s1y - s0y
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    c = px * px + py * py - r * r
    sq = math.sqrt(max(b * b - a * c, 0.0))
    if a <= 0.0:  # degenerate segment: b = 0, sq = 0, both roots 0
        a = 1.0
    return px, py, dx, dy, (-b - sq) / a, (-b + sq) / a


@njit(inline="always", nogil=True, cache=True)
def _length_in_disk(s0x, s0y, s1x, s1y, qx, qy, r):
    _, _, dx, dy, r1, r2 = _roots(s0x, s0y, s1x, s1y, qx, qy, r)
    t1 = min(max(r1, 0.0), 1.0)
    t2 = min(max(r2, 0.0), 1.0)
    return math.hypot(dx, dy) * (t2 - t1)


@njit(inline="always", nogil=True, cache=True)
def _arc_term(px, py, dx, dy, root, cx, r):
    """``G(theta)`` at the crossing ``p + root d`` (relative to the centre, whose x from the grid origin
    is ``cx``), theta in [0, 2 pi) from the reference point q + (r, 0)."""
    ex = px + root * dx
    ey = py + root * dy
    th = math.atan2(ey, ex)
    if th < 0.0:
        th += 2.0 * math.pi
    return ey * (cx + ex * 0.5) + (0.5 * r * r) * th

@njit(inline="always", nogil=True, cache=True)
def _green(s0x, s0y, s1x, s1y, qx, qy, r, x0):
    """x dy over the part of an oriented edge inside the disk (x from ``x0``) plus the crossing terms
    ``-delta * G(theta)`` of the circle's arcs (entering: +G, leaving: -G)."""
    px, py, dx, dy, r1, r2 = _roots(s0x, s0y, s1x, s1y, qx, qy, r)
    t1 = min(max(r1, 0.0), 1.0)
    t2 = min(max(r2, 0.0), 1.0)
    xm = (t1 + t2) * 0.5 * dx + (s0x - x0)
    line = xm * ((t2 - t1) * dy)
    if r1 < r2:
        if 0.0 <= r1 < 1.0:
            line += _arc_term(px, py, dx, dy, r1, qx - x0, r)
        if 0.0 <= r2 < 1.0:
            line -= _arc_term(px, py, dx, dy, r2, qx - x0, r)
    return line



@njit(nogil=True, cache=True)
def disk_sums(kind, qx, qy, r, x0, y0, cell, nrows, ncols, h, prefix, cell_start, anchor, cat, value, radius,
              data, out):
    """Add to ``out`` (n, n_cat) the sums inside the disks of radius ``r`` around ``(qx, qy)``.

    ``prefix`` (nrows, ncols + 1, n_cat) holds per-row prefix sums over cells; ``cell_start``
    (nrows * ncols + 1) the CSR start of each cell's primitives, whose ``anchor`` (m, 2), ``cat``,
    ``value``, reach ``radius`` and ``data`` (m, 2 or 4) follow. ``kind``: KIND_COUNT (points; ``hypot
    <= r`` counts), KIND_LENGTH (segments) or KIND_AREA (oriented polygon edges; the arcs' winding term
    is not included).
    """
    inv = 1.0 / cell
    r_out = (r + h) * inv
    r_in = (r - h) * inv
    m = int(math.ceil(r_out)) + 1
    r2 = r * r
    lo2 = r2 * (1.0 - _EPS)
    hi2 = r2 * (1.0 + _EPS)
    in2 = (r - h) ** 2 * (1.0 - _EPS) if r > h else -1.0
    out2 = (r + h) ** 2 * (1.0 + _EPS)
    n_cat = out.shape[1]
    acc = np.zeros(n_cat)  # one query's rim sums (in cache), added to ``out`` once per query
    for q in range(qx.shape[0]):
        qxq = qx[q]
        qyq = qy[q]
        fx = (qxq - x0) * inv
        fy = (qyq - y0) * inv
        qrow = math.floor(fy)
        frac = fy - qrow
        for kk in range(-m, m + 1):
            row = int(qrow) + kk
            if row < 0 or row >= nrows:
                continue
            dyl = kk - frac
            dy_near = max(max(dyl, -1.0 - dyl), 0.0)
            if dy_near > r_out:
                continue
            dy_far = max(-dyl, dyl + 1.0)
            w_out = math.sqrt(max(r_out * r_out - dy_near * dy_near, 0.0))
            c0f = math.floor(fx - w_out)
            c1f = math.floor(fx + w_out)
            if c1f < 0 or c0f >= ncols:
                continue
            c0 = int(max(c0f, 0.0))
            c1 = int(min(c1f, ncols - 1.0))
            a = c1 + 1
            b = c1
            if dy_far <= r_in:
                w_in = math.sqrt(max(r_in * r_in - dy_far * dy_far, 0.0))
                ai = int(max(math.ceil(fx - w_in), c0))
                bi = int(min(math.floor(fx + w_in) - 1.0, c1))
                if ai <= bi:
                    a = ai
                    b = bi
                    for k in range(n_cat):
                        out[q, k] += prefix[row, b + 1, k] - prefix[row, a, k]
            base = row * ncols
            for part in range(2):  # the rim: cells [c0, a) and (b, c1]
                if part == 0:
                    p0 = cell_start[base + c0]
                    p1 = cell_start[base + a]
                else:
                    p0 = cell_start[base + b + 1]
                    p1 = cell_start[base + c1 + 1]
                if kind == KIND_COUNT:
                    for p in range(p0, p1):
                        ddx = anchor[p, 0] - qxq
                        ddy = anchor[p, 1] - qyq
                        d2 = ddx * ddx + ddy * ddy
                        # branch-free for the sure cases (inside or outside is a coin toss on the rim)
                        v = 1.0 if d2 <= lo2 else 0.0
                        if lo2 < d2 <= hi2 and math.hypot(ddx, ddy) <= r:  # a tie within rounding
                            v = 1.0
                        acc[cat[p]] += v
                    continue
                for p in range(p0, p1):
                    ddx = anchor[p, 0] - qxq
                    ddy = anchor[p, 1] - qyq
                    d2 = ddx * ddx + ddy * ddy
                    v = value[p] if d2 <= in2 else 0.0
                    if in2 < d2 < out2:
                        dist = math.sqrt(d2)
                        rad = radius[p]
                        if dist + rad <= r:
                            v = value[p]
                        elif dist - rad < r:
                            if kind == KIND_LENGTH:
                                v = _length_in_disk(data[p, 0], data[p, 1], data[p, 2], data[p, 3], qxq, qyq, r)
                            else:
                                v = _green(data[p, 0], data[p, 1], data[p, 2], data[p, 3], qxq, qyq, r, x0)
                    acc[cat[p]] += v
        for k in range(n_cat):
            out[q, k] += acc[k]
            acc[k] = 0.0


@njit(nogil=True, cache=True)
def segment_lengths(seg, qx, qy, r, out):
    """``out[i]``: length of segment ``seg[i]`` (x0, y0, x1, y1) inside the disk of radius ``r``
    around ``(qx[i], qy[i])``."""
    for i in range(seg.shape[0]):
        out[i] = _length_in_disk(seg[i, 0], seg[i, 1], seg[i, 2], seg[i, 3], qx[i], qy[i], r)


@njit(inline="always", nogil=True, cache=True)
def _segment_distance(s0x, s0y, s1x, s1y, qx, qy):
    """Distance from (qx, qy) to the segment (a point when both ends coincide)."""
    dx = s1x - s0x
    dy = s1y - s0y
    a = dx * dx + dy * dy
    t = 0.0
    if a > 0.0:
        t = min(max(((qx - s0x) * dx + (qy - s0y) * dy) / a, 0.0), 1.0)
    return math.hypot(s0x + t * dx - qx, s0y + t * dy - qy)


@njit(nogil=True, cache=True)
def nearest_distances(qx, qy, cap, x0, y0, cell, nrows, ncols, h, cell_start, data, out):
    """``out[q] = min(out[q], cap, distance from query q to the nearest segment)`` over the segments
    ``data`` (m, 4) binned by midpoint on a grid (CSR ``cell_start``; every point of a segment lies
    within ``h`` of its midpoint). Rings of cells around the query's cell are searched outwards until
    the ring's lower bound ``(k - 1) * cell - h`` reaches the best distance found (or ``cap``)."""
    for q in range(qx.shape[0]):
        qxq = qx[q]
        qyq = qy[q]
        best = min(cap, out[q])
        ci = min(max(int(math.floor((qxq - x0) / cell)), 0), ncols - 1)
        ri = min(max(int(math.floor((qyq - y0) / cell)), 0), nrows - 1)
        kmax = max(max(ci, ncols - 1 - ci), max(ri, nrows - 1 - ri))
        for k in range(kmax + 1):
            if (k - 1) * cell - h >= best:
                break
            for r in range(max(ri - k, 0), min(ri + k, nrows - 1) + 1):
                edge = r == ri - k or r == ri + k
                step = 1 if edge else 2 * k  # ring rows in full, other rows at the two ends only
                c = ci - k
                while c <= ci + k:
                    if 0 <= c < ncols:
                        cid = r * ncols + c
                        for p in range(cell_start[cid], cell_start[cid + 1]):
                            d = _segment_distance(data[p, 0], data[p, 1], data[p, 2], data[p, 3], qxq, qyq)
                            if d < best:
                                best = d
                    c += step
        out[q] = best
