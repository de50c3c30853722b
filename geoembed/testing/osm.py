"""Synthetic OSM features for tests and benchmarks: GeoDataFrames with tag columns, plus writers for
OSM XML and feature GeoParquet sources."""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import quoteattr

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

# (tag key, tag value) of synthetic point features and their relative frequency
POINT_TAGS = [
    (("shop", "supermarket"), 0.30), (("amenity", "restaurant"), 0.20), (("amenity", "cafe"), 0.10),
    (("tourism", "hotel"), 0.08), (("amenity", "pharmacy"), 0.06), (("amenity", "school"), 0.05),
    (("amenity", "post_office"), 0.04), (("amenity", "fire_station"), 0.02), (("amenity", "bench"), 0.15),
]
LINE_TAGS = [(("highway", "primary"), 0.15), (("highway", "residential"), 0.55), (("highway", "motorway"), 0.05),
             (("highway", "service"), 0.15), (("waterway", "stream"), 0.10)]
POLY_TAGS = [(("building", "yes"), 0.90), (("leisure", "park"), 0.04), (("landuse", "residential"), 0.03),
             (("natural", "water"), 0.03)]


def _tags_frame(choice: np.ndarray, table: list) -> pd.DataFrame:
    keys = sorted({k for (k, _), _ in table})
    cols = {k: np.full(len(choice), None, dtype=object) for k in keys}
    for j, ((k, v), _) in enumerate(table):
        cols[k][choice == j] = v
    return pd.DataFrame(cols)


def synthetic_features(
    n_points: int = 1000,
    n_lines: int = 100,
    n_polygons: int = 100,
    *,
    centre: tuple[float, float] = (24.94, 60.17),
    extent_m: float = 5000.0,
    seed: int = 0,
) -> gpd.GeoDataFrame:
    """Random tagged features (EPSG:4326) over a square of ``extent_m`` metres around ``centre`` (lon, lat).

    Points: tag mix :data:`POINT_TAGS`, half uniform, half in Gaussian clusters. Lines: 2-5 vertex
    roads/streams of 50-400 m (:data:`LINE_TAGS`). Polygons: 90% buildings (10-40 m rectangles),
    the rest parks / residential land / water (100-600 m rectangles) (:data:`POLY_TAGS`).
    """
    rng = np.random.default_rng(seed)
    lon0, lat0 = centre
    m_lat = 1.0 / 111_320.0
    m_lon = 1.0 / (111_320.0 * np.cos(np.radians(lat0)))
    half = extent_m / 2

    def to_ll(x, y):
        return lon0 + x * m_lon, lat0 + y * m_lat

    frames = []
    if n_points:
        nu = n_points // 2
        xy = rng.uniform(-half, half, (n_points, 2))
        centres = rng.uniform(-half, half, (max(1, n_points // 2000), 2))
        k = rng.integers(0, len(centres), n_points - nu)
        xy[nu:] = np.clip(centres[k] + rng.normal(0, extent_m / 50, (n_points - nu, 2)), -half, half)
        choice = rng.choice(len(POINT_TAGS), n_points, p=[p for _, p in POINT_TAGS])
        lon, lat = to_ll(xy[:, 0], xy[:, 1])
        frames.append(gpd.GeoDataFrame(_tags_frame(choice, POINT_TAGS), geometry=shapely.points(lon, lat)))
    if n_lines:
        nv = rng.integers(2, 6, n_lines)
        start = rng.uniform(-half, half, (n_lines, 2))
        step = rng.uniform(50, 400, n_lines) / np.maximum(nv - 1, 1)
        rep = np.repeat(np.arange(n_lines), nv)
        ang = rng.uniform(0, 2 * np.pi, len(rep))
        d = np.stack([np.cos(ang), np.sin(ang)], 1) * step[rep, None]
        first = np.r_[0, np.cumsum(nv)[:-1]]
        d[first] = 0
        xy = start[rep] + np.cumsum(d, 0) - np.repeat(np.cumsum(d, 0)[first], nv, axis=0)
        lon, lat = to_ll(xy[:, 0], xy[:, 1])
        geoms = shapely.linestrings(np.stack([lon, lat], 1), indices=rep)
        choice = rng.choice(len(LINE_TAGS), n_lines, p=[p for _, p in LINE_TAGS])
        frames.append(gpd.GeoDataFrame(_tags_frame(choice, LINE_TAGS), geometry=geoms))
    if n_polygons:
        choice = rng.choice(len(POLY_TAGS), n_polygons, p=[p for _, p in POLY_TAGS])
        big = choice != 0
        w = np.where(big, rng.uniform(100, 600, n_polygons), rng.uniform(10, 40, n_polygons))
        h = np.where(big, rng.uniform(100, 600, n_polygons), rng.uniform(10, 40, n_polygons))
        c = rng.uniform(-half, half, (n_polygons, 2))
        x0, x1 = c[:, 0] - w / 2, c[:, 0] + w / 2
        y0, y1 = c[:, 1] - h / 2, c[:, 1] + h / 2
        ring = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x1, y1], 1),
                         np.stack([x0, y1], 1), np.stack([x0, y0], 1)], 1)
        lon, lat = to_ll(ring[..., 0], ring[..., 1])
        geoms = shapely.polygons(np.stack([lon, lat], -1))
        frames.append(gpd.GeoDataFrame(_tags_frame(choice, POLY_TAGS), geometry=geoms))
    gdf = pd.concat(frames, ignore_index=True)
    return gpd.GeoDataFrame(gdf, geometry="geometry", crs="EPSG:4326")


def write_features_parquet(gdf: gpd.GeoDataFrame, path: str | os.PathLike) -> Path:
    """Write features (geometry + tag columns) as GeoParquet."""
    path = Path(path)
    gdf.to_parquet(path, index=False)
    return path


def write_osm_xml(gdf: gpd.GeoDataFrame, path: str | os.PathLike) -> Path:
    """Write point / linestring / polygon features (EPSG:4326, tag columns) as OSM XML: nodes for
    points and vertices, ways for lines and polygon exterior rings (closed ways)."""
    path = Path(path)
    tagcols = [c for c in gdf.columns if c != gdf.geometry.name]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<osm version="0.6" generator="geoembed.testing">']
    nid, wid = 1, 1

    def tags(row) -> list[str]:
        return [f"    <tag k={quoteattr(k)} v={quoteattr(str(row[k]))}/>" for k in tagcols
                if row[k] is not None and not (isinstance(row[k], float) and np.isnan(row[k]))]

    ways = []
    for _, row in gdf.iterrows():
        g = row[gdf.geometry.name]
        t = tags(row)
        if g.geom_type == "Point":
            lines.append(f'  <node id="{nid}" version="1" lat="{float(g.y)!r}" lon="{float(g.x)!r}">')
            lines += t + ["  </node>"]
            nid += 1
            continue
        coords = np.asarray(g.exterior.coords if g.geom_type == "Polygon" else g.coords)
        closed = g.geom_type == "Polygon"
        if closed:
            coords = coords[:-1]
        refs = []
        for x, y in coords:
            lines.append(f'  <node id="{nid}" version="1" lat="{float(y)!r}" lon="{float(x)!r}"/>')
            refs.append(nid)
            nid += 1
        if closed:
            refs.append(refs[0])
        ways.append([f'  <way id="{wid}" version="1">'] + [f'    <nd ref="{r}"/>' for r in refs] + t + ["  </way>"])
        wid += 1
    for w in ways:
        lines += w
    lines.append("</osm>")
    path.write_text("\n".join(lines) + "\n")
    return path
