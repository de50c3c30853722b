"""Vectorised geometry kernels of the OSM view: exact disk aggregates over a cell grid, and the H3 hex
tensor layout.

Disk aggregates (:class:`DiskIndex`)
------------------------------------
Features are decomposed into small primitives with an additive value: points (count 1), line
segments no longer than ``max_part`` (length) and oriented polygon boundary edges no longer than
``max_part`` (area, below). Each primitive has an anchor (point, segment midpoint) within ``h`` metres
of all of it and is binned by anchor into a square grid of cell size ``s``, with per-row prefix sums
of its value per category.

For a disk of radius ``R`` centred at ``q``, grid row by grid row (all rows and all queries of a batch
at once as 2-D arrays): cells whose every anchor lies within ``R - h`` of ``q`` hold primitives wholly
inside the disk (the disk is convex) and are summed through the prefix sums; cells that may hold
anchors within ``R + h`` but are not wholly inside are rim cells, whose primitives are classified by
their own reach (wholly in, wholly out) and, when they cross the circle, evaluated exactly in closed
form. Work is proportional to the rows of the disk plus the primitives near its rim, not to all
primitives inside it. Queries run in batches in spatial order (neighbouring disks share cache lines);
a batch expands all its rim cell ranges into (query, primitive) pairs at once from the cell-sorted
(CSR) arrays, and squared anchor distances sort the pairs into surely in, surely out and a thin band
classified exactly (counts: ``hypot <= R`` as a brute force would; lines and edges: by their reach,
then the closed forms below for those crossing the circle). The kernels are numpy glue: for large
runs, call :func:`tune_malloc` in the worker (freed temporaries then stay mapped).

Areas use Green's theorem: ``area(P ∩ D) = ∮ x dy`` over the boundary of ``P ∩ D``, which is the part
of P's boundary inside D (edges oriented with the interior on the left: a per-edge, centre-independent
``x dy`` when the edge is wholly inside, so prefix-summable; a clipped closed form when it crosses the
circle) plus the arcs of the circle inside P. Writing ``G(θ) = cx R sin θ + R² (θ/2 + sin 2θ / 4)`` for
the integral of ``x dy`` along the circle from angle 0 (``cx`` the centre's x), summation by parts over
the arcs gives ``m0 π R² - Σ_k Δ_k G(θ_k)``, where ``m0`` is the number of polygons containing the
reference point ``q + (R, 0)`` (an STRtree point-in-polygon query) and each crossing of an edge with
the circle at angle ``θ_k`` changes the polygon multiplicity along the circle by ``Δ_k = ±1`` (-1 where
the edge enters the disk, +1 where it leaves). Overlapping polygons of one category add up. All
results equal the brute-force sums over features of count / length / area of ``feature ∩ disk`` up to
float rounding.

H3 hex tensor layout
--------------------
The 37 cells within 3 rings of a location's H3 cell are placed on a 7 x 7 axial grid by their H3 local
IJ offset ``(di, dj)`` from the centre cell: ``tensor[:, 3 + di, 3 + dj]``. In H3 local IJ the six
neighbours are ``(±1, 0), (0, ±1), (1, 1), (-1, -1)``, so the disk of radius 3 is
``max(|di|, |dj|, |di - dj|) <= 3``; the 12 positions with ``|di - dj| > 3`` (the corners toward
(+3, -3) and (-3, +3)) are not cells and stay 0. :data:`HEX_MASK` is that 7 x 7 0/1 array and
:data:`HEX_STENCIL` the 3 x 3 mask of the 7-tap hexagonal convolution in the same layout.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np
import shapely

HEX_OFFSETS = np.array([(di, dj) for di in range(-3, 4) for dj in range(-3, 4) if abs(di - dj) <= 3],
                       dtype=np.int64)
HEX_MASK = np.zeros((7, 7), dtype=np.float32)
HEX_MASK[3 + HEX_OFFSETS[:, 0], 3 + HEX_OFFSETS[:, 1]] = 1.0
HEX_STENCIL = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32)


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep freed heap memory mapped in this process (glibc; a no-op elsewhere). Returns whether set.

    A disk query allocates and frees many temporaries of a few MB per batch. glibc's defaults hand
    such blocks back to the kernel (mmap / heap trimming), and every reuse then page-faults and
    zeroes fresh pages: about half the query time. Raising the mmap and trim thresholds keeps them
    in the heap (at most ~1 GiB stays mapped). Process-wide, so only build tasks call it.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    _MALLOC_TUNED = bool(mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30)
                         and mallopt(m_top_pad, 64 << 20))
    return _MALLOC_TUNED


# ---------------------------------------------------------------------------- primitives
def representative_points(geoms: np.ndarray) -> np.ndarray:
    """(n, 2) anchor of each geometry: the point itself, a line's midpoint along its length, a
    polygon's point on surface."""
    geoms = np.asarray(geoms, dtype=object)
    tid = shapely.get_type_id(geoms)
    out = np.empty((len(geoms), 2))
    pt = tid == 0
    if pt.any():
        out[pt] = shapely.get_coordinates(geoms[pt])
    ln = np.isin(tid, (1, 2, 5))
    if ln.any():
        out[ln] = shapely.get_coordinates(shapely.line_interpolate_point(geoms[ln], 0.5, normalized=True))
    rest = ~(pt | ln)
    if rest.any():
        out[rest] = shapely.get_coordinates(shapely.point_on_surface(geoms[rest]))
    return out


def line_segments(geoms: np.ndarray, max_part: float) -> tuple[np.ndarray, np.ndarray]:
    """Segments (m, 4) ``x0, y0, x1, y1`` of (multi)line geometries, split to length <= ``max_part``,
    and the index of the geometry each came from."""
    geoms = np.asarray(geoms, dtype=object)
    parts, owner = shapely.get_parts(geoms, return_index=True)
    coords, pidx = shapely.get_coordinates(parts, return_index=True)
    if len(coords) < 2:
        return np.empty((0, 4)), np.empty(0, dtype=np.int64)
    same = pidx[1:] == pidx[:-1]
    seg = np.hstack([coords[:-1][same], coords[1:][same]])
    seg_owner = owner[pidx[:-1][same]]
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1])
    keep = length > 0
    seg, seg_owner, length = seg[keep], seg_owner[keep], length[keep]
    n = np.maximum(1, np.ceil(length / max_part).astype(np.int64))
    if (n > 1).any():
        rep = np.repeat(np.arange(len(seg)), n)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(n) - n, n)
        t0 = k / n[rep]
        t1 = (k + 1) / n[rep]
        s = seg[rep]
        d = s[:, 2:] - s[:, :2]
        seg = np.hstack([s[:, :2] + t0[:, None] * d, s[:, :2] + t1[:, None] * d])
        seg_owner = seg_owner[rep]
    return seg, seg_owner


def _polygon_parts(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid single polygons of each geometry and their owner index."""
    geoms = np.asarray(geoms, dtype=object)
    bad = ~shapely.is_valid(geoms)
    if bad.any():
        geoms = geoms.copy()
        geoms[bad] = shapely.make_valid(geoms[bad])
    idx = np.arange(len(geoms))
    for _ in range(3):  # flatten (nested) collections
        parts, o = shapely.get_parts(geoms, return_index=True)
        geoms, idx = parts, idx[o]
        if not (shapely.get_type_id(geoms) == 7).any():
            break
    poly = shapely.get_type_id(geoms) == 3
    return geoms[poly], idx[poly]


def polygon_edges(geoms: np.ndarray, max_part: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Oriented boundary edges of (multi)polygons: exteriors counter-clockwise, holes clockwise (so the
    interior is always on the left), split to length <= ``max_part``; invalid polygons are repaired
    with make_valid. Returns ``(edges (m, 4), edge_owner, polygons, polygon_owner)`` where owners index
    ``geoms`` and ``polygons`` are the valid single polygons the edges came from."""
    polys, owner = _polygon_parts(geoms)
    if len(polys) == 0:
        return np.empty((0, 4)), np.empty(0, dtype=np.int64), polys, owner
    polys = shapely.orient_polygons(polys, exterior_cw=False)
    rings, ridx = shapely.get_rings(polys, return_index=True)
    seg, sowner = line_segments(rings, max_part)
    return seg, owner[ridx[sowner]], polys, owner


# ---------------------------------------------------------------------------- closed-form kernels
def _chord(seg: np.ndarray, qx, qy, r: float) -> tuple:
    """Relative start ``p``, direction ``d`` and the roots ``t1 <= t2`` of ``|p + t d| = r`` of each
    segment (``t1 = t2 = -b / a`` when the line misses the circle); coordinates relative to the centre."""
    px = seg[:, 0] - qx
    py = seg[:, 1] - qy
    dx = seg[:, 2] - seg[:, 0]
    dy = seg[:, 3] - seg[:, 1]
    a = dx * dx + dy * dy
    b = px * dx + py * dy
    c = px * px + py * py - r * r
    disc = b * b - a * c
    np.maximum(disc, 0.0, out=disc)
    sq = np.sqrt(disc, out=disc)
    a[a <= 0] = 1.0  # degenerate segment: b = 0, sq = 0, both roots 0
    nb = -b
    r1 = (nb - sq) / a
    r2 = np.add(nb, sq, out=nb)
    r2 /= a
    return px, py, dx, dy, r1, r2


def segment_length_in_disk(seg: np.ndarray, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
    """Length of each segment ``(x0, y0, x1, y1)`` inside the disk of radius ``r`` around ``(qx, qy)``."""
    seg = np.asarray(seg, dtype=np.float64)
    _, _, dx, dy, r1, r2 = _chord(seg, qx, qy, r)
    t1 = np.clip(r1, 0.0, 1.0, out=r1)
    t2 = np.clip(r2, 0.0, 1.0, out=r2)
    t2 -= t1
    return np.hypot(dx, dy) * t2


def _green_integral(seg: np.ndarray, qx: np.ndarray, qy: np.ndarray, r: float, x0: float) -> np.ndarray:
    """For oriented polygon edges and disks (centre q, radius r): the line integral of x dy over the
    part of each edge inside the disk (x measured from ``x0``), plus the crossing term
    ``-sum(delta * G(theta))`` of the disk's boundary arcs (module docstring). Returns both summed.

    With ``(ex, ey)`` the crossing relative to the centre, ``sin θ = ey / r`` and ``sin 2θ = 2 ex ey / r²``,
    so ``G(θ) = ey (cx + ex / 2) + r² θ / 2``: one arctan2 per crossing.
    """
    px, py, dx, dy, r1, r2 = _chord(seg, qx, qy, r)
    # a root in [0, 1) is a crossing: r1 enters the disk (delta -1), r2 leaves it (delta +1); a line
    # missing the circle has r1 = r2 and crosses nowhere
    h1 = np.flatnonzero((r1 >= 0.0) & (r1 < 1.0) & (r1 < r2))
    h2 = np.flatnonzero((r2 >= 0.0) & (r2 < 1.0) & (r1 < r2))
    t1 = np.clip(r1, 0.0, 1.0)
    t2 = np.clip(r2, 0.0, 1.0)
    # x dy along the clipped piece: absolute x (from x0) at its middle times its dy
    xm = (t1 + t2) * 0.5
    xm *= dx
    xm += seg[:, 0] - x0
    t2 -= t1
    t2 *= dy
    line = xm * t2
    hit = np.concatenate([h1, h2])
    if len(hit):
        root = np.concatenate([r1[h1], r2[h2]])
        ex = px[hit] + root * dx[hit]
        ey = py[hit] + root * dy[hit]
        th = np.arctan2(ey, ex)
        th[th < 0] += 2 * np.pi  # angle in [0, 2 pi) from the reference point q + (r, 0)
        cx = (qx[hit] if np.ndim(qx) else qx) - x0
        g = ey * (cx + ex * 0.5) + (0.5 * r * r) * th
        g[len(h1):] *= -1.0
        line += np.bincount(hit, weights=g, minlength=len(line))
    return line


# ---------------------------------------------------------------------------- the grid index
@dataclass
class DiskIndex:
    """Primitives of one kind binned on a grid with per-row prefix sums; see the module docstring.

    ``kind`` is "count" (data (m, 2) points), "length" (data (m, 4) segments) or "area" (data (m, 4)
    oriented polygon edges from :func:`polygon_edges`, plus ``polygons`` / ``polygon_cat``, the valid
    polygons they bound, for the winding count at each disk's reference point); ``cat`` is the
    category column (0..n_cat-1) of each primitive.
    """

    kind: str
    n_cat: int
    cell: float
    x0: float
    y0: float
    nrows: int
    ncols: int
    h: float
    data: np.ndarray
    cat: np.ndarray
    cell_start: np.ndarray
    prefix: np.ndarray
    anchor: np.ndarray  # (m, 2) x, y of each primitive's anchor (one cache line per gather)
    value: np.ndarray
    radius: np.ndarray
    polygons: np.ndarray | None = None
    polygon_cat: np.ndarray | None = None
    _tree: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tree"] = None
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @classmethod
    def build(cls, kind: str, data: np.ndarray, cat: np.ndarray, n_cat: int, cell: float,
              max_cells: int = 8_000_000, polygons: np.ndarray | None = None,
              polygon_cat: np.ndarray | None = None) -> DiskIndex:
        """Bin primitives ``data`` (see class doc) of categories ``cat`` on a grid of ``cell`` metres
        (enlarged so that the prefix table holds at most ``max_cells`` entries)."""
        width = {"count": 2, "length": 4, "area": 4}.get(kind, 0)
        data = np.asarray(data, dtype=np.float64).reshape(len(data), width)
        cat = np.asarray(cat, dtype=np.int64)
        if kind == "count":
            anchor, value, rad = data[:, :2], np.ones(len(data)), np.zeros(len(data))
        elif kind in ("length", "area"):
            anchor = (data[:, :2] + data[:, 2:4]) / 2
            value = np.hypot(data[:, 2] - data[:, 0], data[:, 3] - data[:, 1])
            rad = value / 2
        else:
            raise ValueError(f"unknown kind {kind!r}")
        # Per-primitive reach from its anchor, padded against rounding; h is the largest.
        rad = rad * (1 + 1e-9) + 1e-9 if kind != "count" else rad
        h = float(rad.max()) if len(rad) else 0.0
        anchor = np.ascontiguousarray(anchor)
        a_ = anchor if len(data) else np.zeros((1, 2))
        lo, hi = a_.min(0) - 1.0, a_.max(0) + 1.0
        if kind == "area":  # x dy of a whole edge, x measured from the grid origin
            value = ((data[:, 0] + data[:, 2]) / 2 - lo[0]) * (data[:, 3] - data[:, 1])
        ext = hi - lo
        cell = max(float(cell), math.sqrt(ext[0] * ext[1] * max(n_cat, 1) / max_cells), 1e-6)
        ncols = int(ext[0] // cell) + 1
        nrows = int(ext[1] // cell) + 1
        if len(data) == 0:
            cid = np.empty(0, dtype=np.int64)
        else:
            col = np.clip(((anchor[:, 0] - lo[0]) // cell).astype(np.int64), 0, ncols - 1)
            row = np.clip(((anchor[:, 1] - lo[1]) // cell).astype(np.int64), 0, nrows - 1)
            cid = row * ncols + col
        order = np.argsort(cid, kind="stable")
        cid, data, cat, value = cid[order], data[order], cat[order], value[order]
        if len(order):
            anchor, rad = anchor[order], rad[order]
        ncell = nrows * ncols
        cell_start = np.zeros(ncell + 1, dtype=np.int64)
        np.cumsum(np.bincount(cid, minlength=ncell), out=cell_start[1:])
        sums = np.bincount(cid * n_cat + cat, weights=value, minlength=ncell * n_cat) if n_cat else np.zeros(0)
        prefix = np.zeros((nrows, ncols + 1, n_cat))
        np.cumsum(sums.reshape(nrows, ncols, n_cat), axis=1, out=prefix[:, 1:, :])
        if kind == "area":
            polygons = np.asarray(polygons if polygons is not None else [], dtype=object)
            polygon_cat = np.asarray(polygon_cat if polygon_cat is not None else [], dtype=np.int64)
        return cls(kind, n_cat, cell, float(lo[0]), float(lo[1]), nrows, ncols, h, data, cat, cell_start, prefix,
                   np.ascontiguousarray(anchor), value, rad, polygons, polygon_cat)

    def winding(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, n_cat) number of (area-kind) polygons of each category containing each point."""
        out = np.zeros((len(x), self.n_cat))
        if self.polygons is None or len(self.polygons) == 0 or len(x) == 0:
            return out
        with self._lock:
            if self._tree is None:
                self._tree = shapely.STRtree(self.polygons)
        qi, ti = self._tree.query(shapely.points(x, y), predicate="within")
        np.add.at(out, (qi, self.polygon_cat[ti]), 1.0)
        return out

    def query(self, qx: np.ndarray, qy: np.ndarray, r: float, batch: int = 256) -> np.ndarray:
        """(n, n_cat) sums of the primitives' measure inside the disks of radius ``r`` around the
        query points (count of points; metres of line; square metres of polygon)."""
        qx = np.asarray(qx, dtype=np.float64)
        qy = np.asarray(qy, dtype=np.float64)
        out = np.zeros((len(qx), self.n_cat))
        if self.n_cat == 0 or len(self.data) == 0:
            return out
        # Queries in spatial order (row-major over cells of about r): neighbouring disks of a batch
        # read the same prefix rows and rim primitives, which stay in cache.
        s_ = max(float(r), self.cell)
        key = np.floor((qy - self.y0) / s_) * (self.ncols * self.cell / s_ + 2.0) + np.floor((qx - self.x0) / s_)
        order = np.argsort(key, kind="stable")
        sx, sy = qx[order], qy[order]
        for s in range(0, len(qx), batch):
            out[order[s:s + batch]] = self._query(sx[s:s + batch], sy[s:s + batch], float(r))
        if self.kind == "area":  # arcs: polygons containing the reference point (q + (r, 0)) x disk area
            out += self.winding(qx + r, qy) * (np.pi * r * r)
        return out

    def _rows(self, qx: np.ndarray, qy: np.ndarray, r: float) -> tuple:
        """Per query and grid row: the fully-inside column range [a, b] and the rim range [c0, c1]."""
        # Everything in cell units: row band k of query q spans [k - frac_q, k - frac_q + 1] in y.
        inv = 1.0 / self.cell
        r_out = (r + self.h) * inv
        r_in = (r - self.h) * inv
        m = int(math.ceil(r_out)) + 1
        fx = ((qx - self.x0) * inv)[:, None]
        fy = (qy - self.y0) * inv
        qrow = np.floor(fy)
        kk = np.arange(-m, m + 1, dtype=np.float64)
        dyl = kk[None, :] - (fy - qrow)[:, None]
        dy_near = np.maximum(np.maximum(dyl, -1.0 - dyl), 0.0)
        dy_far = np.maximum(-dyl, dyl + 1.0)
        rows = qrow.astype(np.int64)[:, None] + np.arange(-m, m + 1)[None, :]
        w_out = np.sqrt(np.maximum(r_out * r_out - dy_near * dy_near, 0.0))
        c0f = np.floor(fx - w_out)
        c1f = np.floor(fx + w_out)
        rowok = (rows >= 0) & (rows < self.nrows) & (dy_near <= r_out) & (c1f >= 0) & (c0f < self.ncols)
        c0 = np.where(rowok, np.maximum(c0f, 0), 0).astype(np.int64)
        c1 = np.where(rowok, np.minimum(c1f, self.ncols - 1), -1).astype(np.int64)
        inner_ok = rowok & (dy_far <= r_in)
        w_in = np.sqrt(np.maximum(r_in * r_in - dy_far * dy_far, 0.0))
        a = np.maximum(np.ceil(fx - w_in), c0).astype(np.int64)
        b = np.minimum(np.floor(fx + w_in) - 1, c1).astype(np.int64)
        inner_ok &= a <= b
        a = np.where(inner_ok, a, c1 + 1)
        b = np.where(inner_ok, b, c1)
        return rows, rowok, inner_ok, a, b, c0, c1

    def _query(self, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
        return self._collect(qx, qy, r, self._rows(qx, qy, r))

    def _collect(self, qx: np.ndarray, qy: np.ndarray, r: float, rowinfo: tuple) -> np.ndarray:
        """Sums for a batch given the row ranges of :meth:`_rows` (prefix sums inside, exact on the rim).

        The rim primitives of all (query, row) pairs are gathered at once from the cell-sorted (CSR)
        arrays: per query and row, the cells ``[c0, a)`` and ``(b, c1]`` are contiguous primitive index
        ranges, expanded with a single cumulative sum. Squared anchor distances split the pairs into
        surely inside, surely outside and a thin band that is classified (and, when crossing the
        circle, evaluated) exactly.
        """
        rows, rowok, inner_ok, a, b, c0, c1 = rowinfo
        n = len(qx)
        nc = self.n_cat
        rr = np.clip(rows, 0, self.nrows - 1)
        out = np.zeros((n, nc))
        if inner_ok.any():  # rows without an inner range read prefix entry 0 twice: difference 0
            flat = self.prefix.reshape(-1, nc)  # rows of (ncols + 1) prefix entries
            base_p = rr * (self.ncols + 1)
            hi_i = np.where(inner_ok, base_p + b + 1, 0).ravel()
            lo_i = np.where(inner_ok, base_p + a, 0).ravel()
            vals = np.take(flat, hi_i, axis=0, mode="clip")  # indices are in range: no checks
            vals -= np.take(flat, lo_i, axis=0, mode="clip")
            out += vals.reshape(n, -1, nc).sum(axis=1)
        # Rim ranges; rows outside the grid have c0 = 0, c1 = -1, a = 0, b = -1: both ranges empty.
        base = rr * self.ncols
        st = self.cell_start
        lo = np.concatenate([st[base + c0], st[base + b + 1]], axis=1)
        cnt = np.concatenate([st[base + a], st[base + c1 + 1]], axis=1)
        cnt -= lo
        qcnt = cnt.sum(axis=1)
        total = int(qcnt.sum())
        if total == 0:
            return out
        lo, cnt = lo.ravel(), cnt.ravel()
        nz = np.flatnonzero(cnt)
        lo, cnt = lo[nz], cnt[nz]
        step = np.ones(total, dtype=np.int64)  # pid = cumsum(step): runs lo .. lo + cnt - 1
        starts = np.cumsum(cnt[:-1])
        step[0] = lo[0]
        step[starts] = lo[1:] - (lo[:-1] + cnt[:-1] - 1)
        pid = np.cumsum(step, out=step)
        qid = np.repeat(np.arange(n, dtype=np.int64), qcnt)
        anc = np.take(self.anchor, pid, axis=0, mode="clip")  # (total, 2): one gather per pair
        d2 = anc[:, 0] - np.repeat(qx, qcnt)
        d2 *= d2
        dy = anc[:, 1] - np.repeat(qy, qcnt)
        dy *= dy
        d2 += dy
        del dy, anc
        eps = 1e-12  # squared distances are within a few ulps: margins for the sure classes
        if self.kind == "count":
            r2 = r * r
            inside = d2 <= r2 * (1 - eps)
            band = np.flatnonzero((d2 > r2 * (1 - eps)) & (d2 <= r2 * (1 + eps)))
            sel = np.flatnonzero(inside)
            if len(band):  # exact test as in the brute force: hypot <= r
                bp = pid[band]
                bq = qid[band]
                ok = np.hypot(self.anchor[bp, 0] - qx[bq], self.anchor[bp, 1] - qy[bq]) <= r
                sel = np.concatenate([sel, band[ok]])
            key = qid[sel] * nc + np.take(self.cat, pid[sel], mode="clip")
            out += np.bincount(key, minlength=n * nc).reshape(n, nc)
            return out
        # lines / polygon edges: every part of a primitive is within h of its anchor
        h = self.h
        in2 = (r - h) ** 2 * (1 - eps) if r > h else -1.0
        out2 = (r + h) ** 2 * (1 + eps)
        sure = np.flatnonzero(d2 <= in2)
        band = np.flatnonzero((d2 > in2) & (d2 < out2))
        ps = pid[sure]
        keys = [qid[sure] * nc + np.take(self.cat, ps, mode="clip")]
        wts = [np.take(self.value, ps, mode="clip")]
        if len(band):
            bp = pid[band]
            bq = qid[band]
            dist = np.sqrt(d2[band])
            rad = np.take(self.radius, bp, mode="clip")
            whole = dist + rad <= r
            cross = np.flatnonzero(~whole & (dist - rad < r))
            keys.append(bq[whole] * nc + self.cat[bp[whole]])
            wts.append(self.value[bp[whole]])
            if len(cross):
                cp, cq = bp[cross], bq[cross]
                d = np.take(self.data, cp, axis=0, mode="clip")
                if self.kind == "length":
                    v = segment_length_in_disk(d, qx[cq], qy[cq], r)
                else:
                    v = _green_integral(d, qx[cq], qy[cq], r, self.x0)
                keys.append(cq * nc + self.cat[cp])
                wts.append(v)
        out += np.bincount(np.concatenate(keys), weights=np.concatenate(wts),
                           minlength=n * nc).reshape(n, nc)
        return out


# ---------------------------------------------------------------------------- H3
def h3_cells(lat: np.ndarray, lon: np.ndarray, res: int) -> np.ndarray:
    """H3 cell ids (int64) of points at resolution ``res``."""
    import h3.api.basic_int as h3i

    f = h3i.latlng_to_cell
    return np.fromiter((f(a, o, res) for a, o in zip(np.asarray(lat, float).tolist(),
                                                      np.asarray(lon, float).tolist(), strict=True)),
                       dtype=np.uint64, count=len(lat)).astype(np.int64)


def hex_neighbourhood(cells: np.ndarray) -> np.ndarray:
    """(n, 37) cell ids at :data:`HEX_OFFSETS` around each (unique) cell; -1 where H3 has no local IJ
    cell there (pentagon distortion)."""
    import h3.api.basic_int as h3i

    out = np.full((len(cells), len(HEX_OFFSETS)), -1, dtype=np.int64)
    offs = HEX_OFFSETS.tolist()
    for u, c in enumerate(np.asarray(cells, dtype=np.int64).astype(np.uint64).tolist()):
        try:
            i0, j0 = h3i.cell_to_local_ij(c, c)
        except Exception:  # noqa: BLE001 - h3 raises its own error types
            continue
        row = out[u]
        for k, (di, dj) in enumerate(offs):
            try:
                row[k] = h3i.local_ij_to_cell(c, i0 + di, j0 + dj)
            except Exception:  # noqa: BLE001
                pass
    return out


def hex_tensor(loc_cells: np.ndarray, feat_cells: np.ndarray, feat_counts: np.ndarray,
               cache: dict | None = None) -> np.ndarray:
    """(n, C, 7, 7) float32 counts per hex channel on the axial layout around each location's cell.

    ``feat_cells`` are sorted unique cell ids with ``feat_counts`` (len, C) features per cell.
    Layout and mask: module docstring. The H3 work is done once per unique location cell.
    """
    n_cat = feat_counts.shape[1]
    uniq, inv = np.unique(np.asarray(loc_cells, dtype=np.int64), return_inverse=True)
    if cache is None:
        neigh = hex_neighbourhood(uniq)
    else:  # a dict shared between the chunks of a run: H3 work once per distinct cell
        missing = [c for c in uniq.tolist() if c not in cache]
        if missing:
            cache.update(zip(missing, hex_neighbourhood(np.array(missing, dtype=np.int64)), strict=True))
        neigh = np.array([cache[c] for c in uniq.tolist()], dtype=np.int64).reshape(len(uniq), len(HEX_OFFSETS))
    vals = np.zeros((len(uniq), len(HEX_OFFSETS), n_cat), dtype=np.float32)
    if len(feat_cells):
        pos = np.clip(np.searchsorted(feat_cells, neigh), 0, len(feat_cells) - 1)
        hit = (feat_cells[pos] == neigh) & (neigh >= 0)
        vals[hit] = feat_counts[pos[hit]]
    grid = np.zeros((len(uniq), n_cat, 7, 7), dtype=np.float32)
    grid[:, :, 3 + HEX_OFFSETS[:, 0], 3 + HEX_OFFSETS[:, 1]] = vals.transpose(0, 2, 1)
    return grid[inv]
