"""Longitude arithmetic that survives the antimeridian.

A set of points on both sides of 180 degrees (Fiji, Chukotka, the Aleutians) has a mean longitude
near 0 and a min-max span near 360: a projection centred there is useless. The extent of a set of
longitudes is instead the shortest arc that covers them all (the complement of the widest gap between
neighbours on the circle); for points that do not cross the antimeridian it is the usual
``[min, max]``, computed exactly as before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["continuous_lon", "east_of_antimeridian", "lon_extent", "split_at_antimeridian", "unwrap_lon",
           "wrap_lon"]


def lon_extent(lon: np.ndarray) -> tuple[float, float]:
    """(centre, width) in degrees of the shortest arc covering the finite longitudes; centre in
    [-180, 180). ``((min + max) / 2, max - min)`` when the points do not cross the antimeridian;
    (0, 0) when there is none."""
    lon = np.asarray(lon, dtype=np.float64)
    lon = lon[np.isfinite(lon)]
    if len(lon) == 0:
        return 0.0, 0.0
    lo, hi = float(lon.min()), float(lon.max())
    wrapped = np.sort(np.mod(lon + 180.0, 360.0) - 180.0)
    gaps = np.diff(wrapped)
    wrap_gap = wrapped[0] + 360.0 - wrapped[-1]
    if len(gaps) == 0 or wrap_gap >= gaps.max() or hi - lo <= 180.0:
        return (lo + hi) / 2.0, hi - lo
    i = int(np.argmax(gaps))  # the widest gap lies inside [-180, 180): the arc runs east from its end across 180
    start, width = float(wrapped[i + 1]), 360.0 - float(gaps[i])
    centre = float(np.mod(start + width / 2.0 + 180.0, 360.0) - 180.0)
    return centre, width


def unwrap_lon(lon: np.ndarray, centre: float) -> np.ndarray:
    """Longitudes shifted by multiples of 360 into [centre - 180, centre + 180) (continuous around
    ``centre``); unchanged when already there."""
    lon = np.asarray(lon, dtype=np.float64)
    out = np.mod(lon - centre + 180.0, 360.0) - 180.0 + centre
    return np.where((lon >= centre - 180.0) & (lon < centre + 180.0), lon, out)


def continuous_lon(lon: np.ndarray) -> np.ndarray:
    """The longitudes themselves when they do not cross the antimeridian; else shifted by 360 where
    needed so that they are continuous around the centre of their extent (some then exceed 180).
    Means, min-max extents and local projections of the result are meaningful in both cases."""
    lon = np.asarray(lon, dtype=np.float64)
    finite = lon[np.isfinite(lon)]
    if len(finite) == 0:
        return lon
    centre, width = lon_extent(finite)
    if width >= float(finite.max() - finite.min()):
        return lon
    return unwrap_lon(lon, centre)


def wrap_lon(lon):
    """Longitude(s) in [-180, 180) (values already there are returned bit for bit)."""
    lon = np.asarray(lon, dtype=np.float64)
    return np.where((lon >= -180.0) & (lon < 180.0), lon, np.mod(lon + 180.0, 360.0) - 180.0)


def east_of_antimeridian(geom):
    """A lon/lat geometry split at the antimeridian (parts touching -180 and 180) with its western
    parts moved east by 360 degrees when that makes it narrower: one continuous shape, for centroids,
    projections and bounding boxes; else the geometry itself."""
    import shapely
    from shapely import affinity

    x0, _, x1, _ = geom.bounds
    if x0 > -180.0 + 1e-9 or x1 < 180.0 - 1e-9:
        return geom
    parts = shapely.get_parts(geom)
    moved = shapely.union_all([affinity.translate(p, xoff=360.0) if p.bounds[2] <= 0.0 else p for p in parts])
    return moved if moved.bounds[2] - moved.bounds[0] < x1 - x0 else geom


def split_at_antimeridian(geom):
    """A lon/lat geometry whose longitudes may leave [-180, 180] cut at the antimeridian and its
    parts shifted by multiples of 360 degrees into [-180, 180] (unchanged when already inside)."""
    import shapely
    from shapely import affinity

    x0, _, x1, _ = geom.bounds
    if x0 >= -180.0 and x1 <= 180.0:
        return geom
    world = shapely.box(-180.0, -90.0, 180.0, 90.0)
    parts = []
    for k in range(int(np.floor((x0 + 180.0) / 360.0)), int(np.floor((x1 + 180.0) / 360.0)) + 1):
        part = shapely.intersection(affinity.translate(geom, xoff=-360.0 * k), world)
        if not part.is_empty and part.area > 0:
            parts.append(part)
    return shapely.make_valid(shapely.union_all(parts))
