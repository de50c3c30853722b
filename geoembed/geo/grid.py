"""Discrete space: square grid blocks, space-filling orders, H3 cell ids and disks."""

from __future__ import annotations

import math

import numpy as np

from geoembed.errors import ConfigError
from geoembed.geo.lon import continuous_lon
from geoembed.geo.project import project_local

__all__ = ["grid_blocks", "h3_cells", "h3_disk_reach_m", "h3_disks", "hilbert_order", "morton_order"]


def grid_blocks(lon: np.ndarray, lat: np.ndarray, size_m: float, anchor: str = "origin") -> np.ndarray:
    """Block id (int64) of each point: its square cell of ``size_m`` metres in the points' own local
    transverse Mercator (:func:`geoembed.geo.project_local`; a set across the antimeridian is projected
    whole).

    ``anchor="origin"``: cells are aligned on the projection's origin (the locations stage; ids are stable
    whatever else is in the set). ``anchor="extent"``: cells start at the south-west corner of the points'
    projected extent and are numbered column by column (evaluation folds; the ids fall in
    ``0 .. n_columns * n_rows``)."""
    if not size_m > 0:
        raise ConfigError(f"block size must be > 0 metres, got {size_m}")
    x, y = project_local(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    if anchor == "extent":
        ix = np.floor((x - x.min()) / size_m).astype(np.int64)
        iy = np.floor((y - y.min()) / size_m).astype(np.int64)
        return ix * (int(iy.max()) + 1) + iy
    if anchor != "origin":
        raise ValueError(f"anchor must be 'origin' or 'extent', got {anchor!r}")
    ix = np.floor(x / size_m).astype(np.int64)
    iy = np.floor(y / size_m).astype(np.int64)
    return (ix + (1 << 20)) * (1 << 21) + (iy + (1 << 20))


def _quantise(v: np.ndarray, bits: int) -> np.ndarray:
    lo, hi = float(np.min(v)), float(np.max(v))
    return np.floor((v - lo) / max(hi - lo, 1e-12) * ((1 << bits) - 1)).astype(np.int64)


def morton_order(lon: np.ndarray, lat: np.ndarray, bits: int = 16) -> np.ndarray:
    """Row order (stable argsort) along a Z-order curve over the points' extent; keeps chunks compact."""
    def spread(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.uint64)
        out = np.zeros_like(v)
        for b in range(bits):
            out |= ((v >> np.uint64(b)) & np.uint64(1)) << np.uint64(2 * b)
        return out

    lat = np.asarray(lat, dtype=np.float64)
    key = spread(_quantise(continuous_lon(lon), bits)) | (spread(_quantise(lat, bits)) << np.uint64(1))
    return np.argsort(key, kind="stable")


def hilbert_order(lon: np.ndarray, lat: np.ndarray, bits: int = 16) -> np.ndarray:
    """Row order (stable argsort) along a Hilbert curve over the points' extent: no long jumps between
    neighbours in the order (better block reuse than Z-order when reading rasters)."""
    n_side = 1 << bits
    x = np.clip(_quantise(continuous_lon(lon), bits), 0, n_side - 1)
    y = np.clip(_quantise(np.asarray(lat, dtype=np.float64), bits), 0, n_side - 1)
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


def h3_cells(lon: np.ndarray, lat: np.ndarray, res: int) -> np.ndarray:
    """H3 cell ids (int64) of points at resolution ``res`` (one C call per point: h3-py has no
    vectorised indexer)."""
    import h3.api.basic_int as h3i

    f = h3i.latlng_to_cell
    lat = np.asarray(lat, dtype=np.float64).tolist()
    lon = np.asarray(lon, dtype=np.float64).tolist()
    return np.fromiter((f(a, o, res) for a, o in zip(lat, lon, strict=True)),
                       dtype=np.uint64, count=len(lat)).astype(np.int64)


def h3_disk_reach_m(res: int, rings: int = 3) -> float:
    """An upper bound in metres on the distance from a point to any point of the ``rings``-ring H3
    disk around its cell at ``res``: the point lies within one circumradius (= edge) of its cell's
    centre, ring ``k`` cell centres within ``k * sqrt(3)`` edges of it, their cells reach one edge
    further; twice H3's average edge length covers its largest cells."""
    import h3

    edge = 2.0 * float(h3.average_hexagon_edge_length(int(res), unit="m"))
    return (rings * math.sqrt(3.0) + 2.0) * edge


def h3_disks(cells: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, k) cell ids at the local IJ ``offsets`` (k, 2) around each cell; -1 where H3 has no local IJ
    cell there (pentagon distortion)."""
    import h3.api.basic_int as h3i

    out = np.full((len(cells), len(offsets)), -1, dtype=np.int64)
    offs = np.asarray(offsets).tolist()
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
