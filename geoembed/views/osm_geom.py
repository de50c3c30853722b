"""Vectorised geometry kernels of the OSM view: exact disk aggregates over a cell grid, and the H3 hex
tensor layout.

Disk aggregates (:class:`DiskIndex`)
------------------------------------
Features are decomposed into small primitives with an additive value: points (count 1), line
segments no longer than ``max_part`` (length) and oriented polygon boundary edges no longer than
``max_part`` (area, below). Each primitive has an anchor (point, segment midpoint) within ``h`` metres
of all of it and is binned by anchor into a square grid of cell size ``s``, with per-row prefix sums
of its value per category.

For a disk of radius ``R`` centred at ``q``, grid row by grid row:
cells whose every anchor lies within ``R - h`` of ``q`` hold primitives wholly
inside the disk (the disk is convex) and are summed through the prefix sums; cells that may hold
anchors within ``R + h`` but are not wholly inside are rim cells, whose primitives are classified by
their own reach (wholly in, wholly out) and, when they cross the circle, evaluated exactly in closed
form. Work is proportional to the rows of the disk plus the primitives near its rim, not to all
primitives inside it. Queries run in spatial order (neighbouring disks share cache lines) through a
compiled kernel (:mod:`geoembed.views.disk_kernel`, numba, no GIL); squared anchor distances sort a rim
primitive into surely in, surely out and a thin band classified exactly (counts: ``hypot <= R`` as a
brute force would; lines and edges: by their reach, then the closed forms below for those crossing
the circle).

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

from geoembed.geo import h3_disks

HEX_OFFSETS = np.array([(di, dj) for di in range(-3, 4) for dj in range(-3, 4) if abs(di - dj) <= 3],
                       dtype=np.int64)
HEX_MASK = np.zeros((7, 7), dtype=np.float32)
HEX_MASK[3 + HEX_OFFSETS[:, 0], 3 + HEX_OFFSETS[:, 1]] = 1.0
HEX_STENCIL = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32)


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Keep freed heap memory mapped in this process (glibc; a no-op elsewhere). Returns whether set.

    A chunk allocates and frees many temporaries of a few MB (H3 cells, hex tensors, distance
    queries). glibc's defaults hand such blocks back to the kernel (mmap / heap trimming), and every
    reuse then page-faults and zeroes fresh pages (it was about half the time of the former numpy
    disk queries). Raising the mmap and trim thresholds keeps them
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
def segment_length_in_disk(seg: np.ndarray, qx, qy, r: float) -> np.ndarray:
    """Length of each segment ``(x0, y0, x1, y1)`` inside the disk of radius ``r`` around ``(qx, qy)``
    (scalars or one centre per segment); the closed form the disk index evaluates on its rim."""
    from geoembed.views.disk_kernel import segment_lengths

    seg = np.ascontiguousarray(seg, dtype=np.float64).reshape(-1, 4)
    qx = np.ascontiguousarray(np.broadcast_to(np.asarray(qx, dtype=np.float64), len(seg)))
    qy = np.ascontiguousarray(np.broadcast_to(np.asarray(qy, dtype=np.float64), len(seg)))
    out = np.empty(len(seg))
    segment_lengths(seg, qx, qy, float(r), out)
    return out


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
        """(n, n_cat) number of the polygons given at build time, per category, containing each point."""
        out = np.zeros((len(x), self.n_cat))
        if self.polygons is None or len(self.polygons) == 0 or len(x) == 0:
            return out
        with self._lock:
            if self._tree is None:
                self._tree = shapely.STRtree(self.polygons)
        qi, ti = self._tree.query(shapely.points(x, y), predicate="within")
        np.add.at(out, (qi, self.polygon_cat[ti]), 1.0)
        return out

    def query(self, qx: np.ndarray, qy: np.ndarray, r: float, batch: int = 4096) -> np.ndarray:
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

    def _query(self, qx: np.ndarray, qy: np.ndarray, r: float) -> np.ndarray:
        from geoembed.views.disk_kernel import KIND_AREA, KIND_COUNT, KIND_LENGTH, disk_sums

        kind = {"count": KIND_COUNT, "length": KIND_LENGTH, "area": KIND_AREA}[self.kind]
        out = np.zeros((len(qx), self.n_cat))
        disk_sums(kind, np.ascontiguousarray(qx), np.ascontiguousarray(qy), float(r), self.x0, self.y0,
                  self.cell, self.nrows, self.ncols, self.h, self.prefix, self.cell_start, self.anchor,
                  self.cat, self.value, self.radius, self.data, out)
        return out


class NearestIndex:
    """Exact distance from points to the nearest of a set of (non-point) geometries: their linework
    (lines, polygon rings, multipoint members) as segments on a grid searched ring by ring in a
    compiled kernel, and 0 inside a polygon. Matches ``shapely.distance`` up to float rounding."""

    def __init__(self, geoms: np.ndarray, max_part: float) -> None:
        geoms = np.asarray(geoms, dtype=object)
        tid = shapely.get_type_id(geoms)
        polys, _ = _polygon_parts(geoms[np.isin(tid, (3, 6, 7))]) if len(geoms) else (np.empty(0, object), None)
        linear = geoms[np.isin(tid, (1, 2, 5))]
        rings = shapely.get_rings(polys) if len(polys) else np.empty(0, object)
        seg, _ = line_segments(np.concatenate([linear, rings]), max_part)
        pts = shapely.get_coordinates(geoms[np.isin(tid, (4, 7))])  # multipoints (and points of collections)
        seg = np.vstack([seg, np.hstack([pts, pts])]) if len(pts) else seg
        m = len(seg)
        mid = (seg[:, :2] + seg[:, 2:]) / 2 if m else np.zeros((1, 2))
        ext = np.maximum(mid.max(0) - mid.min(0), 1.0)
        # about three segments per cell: the first rings settle most queries
        cell = float(max(math.sqrt(ext[0] * ext[1] * 3.0 / max(m, 1)), max_part / 2, 1.0))
        # the polygons ride along for the grid's point-in-polygon test (its lazily built, shared STRtree)
        self.grid = DiskIndex.build("length", seg, np.zeros(m, dtype=np.int64), 1, cell, max_cells=4_000_000,
                                    polygons=np.asarray(polys, dtype=object),
                                    polygon_cat=np.zeros(len(polys), dtype=np.int64))

    def distance(self, x: np.ndarray, y: np.ndarray, cap: float) -> np.ndarray:
        """(n,) distance to the nearest geometry, at most ``cap``."""
        from geoembed.views.disk_kernel import nearest_distances

        x = np.ascontiguousarray(x, dtype=np.float64)
        y = np.ascontiguousarray(y, dtype=np.float64)
        out = np.full(len(x), float(cap))
        g = self.grid
        if len(g.data):
            nearest_distances(x, y, float(cap), g.x0, g.y0, g.cell, g.nrows, g.ncols, g.h, g.cell_start,
                              np.ascontiguousarray(g.data), out)
        out[g.winding(x, y)[:, 0] > 0] = 0.0  # inside a polygon
        return out


# ---------------------------------------------------------------------------- H3
def hex_neighbourhood(cells: np.ndarray) -> np.ndarray:
    """(n, 37) cell ids at :data:`HEX_OFFSETS` around each (unique) cell; -1 where H3 has no local IJ
    cell there (pentagon distortion)."""
    return h3_disks(cells, HEX_OFFSETS)


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
