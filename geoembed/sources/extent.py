"""Extents for remote sources: the lon/lat box each chip covers, the box around a set of chips, and a
box split at the antimeridian. The longitude arithmetic is :mod:`geoembed.geo`'s; the chip geometry
is the raster sampler's (:func:`geoembed.views.raster.aeqd_offset`), so a box covers exactly the
pixels the sampler reads.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BBox", "bbox_parts", "cells_area", "chip_bounds", "chip_cells", "chips_extent", "extent_around"]

BBox = tuple[float, float, float, float]  # west, south, east, north in degrees; west > east: across 180


def bbox_parts(bbox: BBox) -> list[BBox]:
    """``bbox`` as boxes within [-180, 180]: itself, or its two parts when west > east (across the
    antimeridian, as in GeoJSON and STAC)."""
    import shapely

    from geoembed.geo import split_at_antimeridian

    w, s, e, n = (float(v) for v in bbox)
    if w <= e:
        return [(w, s, e, n)]
    parts = shapely.get_parts(split_at_antimeridian(shapely.box(w, s, e + 360.0, n)))
    return sorted(tuple(float(v) for v in p.bounds) for p in parts)


def chip_bounds(lon: np.ndarray, lat: np.ndarray, chip_size: int, resolution_m: float) -> np.ndarray:
    """(n, 4) west, south, east, north of each location's chip plus one pixel (the bilinear
    neighbours), from the chip's corners and edge midpoints on its azimuthal-equidistant grid.
    Longitudes are continuous around the location (they may pass +-180); NaN where the location is."""
    from geoembed.views.raster import aeqd_offset

    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    half = (chip_size / 2.0 + 1.0) * float(resolution_m)
    pts = [aeqd_offset(lon, lat, e * half, n * half) for e in (-1, 0, 1) for n in (-1, 0, 1) if e or n]
    xs = np.stack([p[0] for p in pts])
    ys = np.clip(np.stack([p[1] for p in pts]), -90.0, 90.0)
    with np.errstate(invalid="ignore"):
        return np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)


def chips_extent(bounds: np.ndarray) -> BBox:
    """The box around chip boxes (:func:`chip_bounds`): the shortest longitude arc covering them
    (west > east when it crosses the antimeridian) and their latitude range."""
    from geoembed.geo import lon_extent, wrap_lon

    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    b = b[np.isfinite(b).all(1)]
    if len(b) == 0:
        raise ValueError("no finite chip bounds")
    south, north = float(b[:, 1].min()), float(b[:, 3].max())
    if b[:, 0].min() >= -180.0 and b[:, 2].max() <= 180.0 and b[:, 2].max() - b[:, 0].min() <= 180.0:
        return float(b[:, 0].min()), south, float(b[:, 2].max()), north
    centre, width = lon_extent(wrap_lon(np.concatenate([b[:, 0], b[:, 2]])))
    if width >= 359.0:
        return -180.0, south, 180.0, north
    west, east = centre - width / 2.0, centre + width / 2.0
    if west >= -180.0 and east <= 180.0:
        return west, south, east, north
    return float(wrap_lon(west)), south, float(wrap_lon(east) if east != 180.0 else 180.0), north


def extent_around(lon: np.ndarray, lat: np.ndarray, pad_m: float) -> BBox:
    """The box (west, south, east, north; west > east across the antimeridian) holding every point
    within ``pad_m`` metres east/north/west/south of the locations: e.g. an OSM view's extent with
    its largest radius or distance cap."""
    return chips_extent(chip_bounds(lon, lat, 0, pad_m))  # a chip of size 0 plus one pixel of pad_m


def chip_cells(bounds: np.ndarray, cells_per_degree: int = 10) -> np.ndarray:
    """(m, 2) unique (x, y) indices of the cells of a global lon/lat grid (``1 / cells_per_degree``
    degree) that chip boxes (:func:`chip_bounds`) touch; x wraps at the antimeridian."""
    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    b = b[np.isfinite(b).all(1)]
    k = int(cells_per_degree)
    n_lon = 360 * k
    x0, x1 = np.floor(b[:, 0] * k).astype(np.int64), np.floor(b[:, 2] * k).astype(np.int64)
    y0 = np.floor(np.clip(b[:, 1], -90, 90) * k).astype(np.int64)
    y1 = np.minimum(np.floor(np.clip(b[:, 3], -90, 90) * k).astype(np.int64), 90 * k - 1)
    cells = []
    span = int(max((x1 - x0).max(initial=0), (y1 - y0).max(initial=0)))
    for dx in range(span + 1):  # chips are rarely larger than a cell: one or two steps
        for dy in range(span + 1):
            sel = (x0 + dx <= x1) & (y0 + dy <= y1)
            cells.append(np.stack([x0[sel] + dx, y0[sel] + dy], 1))
    c = np.concatenate(cells) if cells else np.zeros((0, 2), np.int64)
    c[:, 0] = (c[:, 0] + n_lon // 2) % n_lon - n_lon // 2
    return np.unique(c, axis=0)


def cells_area(cells: np.ndarray, cells_per_degree: int = 10):
    """The union of grid cells (:func:`chip_cells`) as a shapely (Multi)Polygon in EPSG:4326."""
    import shapely

    k = float(cells_per_degree)
    c = np.asarray(cells, dtype=np.float64).reshape(-1, 2)
    return shapely.coverage_union_all(shapely.box(c[:, 0] / k, c[:, 1] / k, (c[:, 0] + 1) / k, (c[:, 1] + 1) / k))
