"""Polygon tables in ``geoembed evaluate``: each row embedded as the mean over points sampled in its polygon
(:func:`geoembed.enrich.polygons.embed_polygons`), not at its centroid.

Used when ``evaluate.table`` is a vector file (GeoParquet, GeoPackage, shapefile, ...) whose geometry is
not all points and the embeddings come from a bundle. lon/lat (the ``coords`` features, the spatial folds)
stay the centroids that :func:`geoembed.evaluate.tables.read_table` computes. A polygon is out of the bundle's
support when more than half of its (weighted) points are (:data:`MAJORITY`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import InputError

log = logging.getLogger(__name__)

#: A polygon counts as out of support when its out-of-support share of points is above this.
MAJORITY = 0.5


def table_polygons(table, cfg: EvaluateConfig):
    """The geometry (a GeoSeries in its own CRS) of the evaluated rows when they are polygons, else None.

    ``table`` itself when it is a GeoDataFrame; else ``cfg.table`` read again when it is a vector file with
    as many rows as ``table`` (what :func:`~geoembed.evaluate.tables.read_table` returned for it). A table
    whose geometry is all points gives None (its lon/lat are the points)."""
    geom = getattr(table, "geometry", None)
    if not hasattr(geom, "crs"):
        geom = None
        if cfg.table and Path(cfg.table).is_file():
            from geoembed.io.tables import read_frame

            try:
                g = read_frame(cfg.table)
            except InputError as err:
                raise InputError(f"evaluate.table: {err}") from None
            if hasattr(getattr(g, "geometry", None), "crs") and len(g) == len(table):
                geom = g.geometry
    if geom is None:
        return None
    types = geom.geom_type
    if not types.isin(["Polygon", "MultiPolygon"]).any():
        return None
    return geom.reset_index(drop=True)


def polygon_bundle(cfg: EvaluateConfig, embedder):
    """The loaded bundle to sample polygons with: ``cfg.bundle``, else the one behind ``embedder`` (a
    ``LocationEmbedder``); None when there is none (an embedder not backed by a bundle embeds centroids)."""
    from geoembed.evaluate.support import _embedder_bundle

    if embedder is not None:
        return _embedder_bundle(embedder)
    if cfg.bundle:
        from geoembed.enrich.enricher import load_bundle_cached

        return load_bundle_cached(cfg.bundle)
    return None


def embed_table_polygons(geometry, bundle, cfg: EvaluateConfig) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The ``<prefix><k>`` columns (float32 polygon means), each polygon's out-of-support share, and the
    settings (for the report). Invalid polygons are an InputError naming the rows and the table."""
    from geoembed.enrich.polygons import embed_polygons

    origin = f"evaluate.table {cfg.table}" if cfg.table else "evaluate.table (given GeoDataFrame)"
    try:
        emb, n_points, share = embed_polygons(bundle, geometry, cfg.points_per_polygon, cfg.polygon_seed,
                                              cfg.weight_raster, on_invalid="error", origin=origin)
    except InputError as err:  # enrich's advice (--on-invalid null) does not apply here
        msg = str(err).split("\nFix these polygons", 1)[0]
        raise InputError(msg + "\nFix these polygons, or enrich the table first (geoembed enrich --on-invalid "
                         "null) and evaluate the enriched table without evaluate.bundle.") from None
    cols = [f"{cfg.embedding_prefix}{i}" for i in range(emb.shape[1])]
    frame = pd.DataFrame(emb, columns=cols)
    info = {"rows": len(frame), "points_per_polygon": cfg.points_per_polygon, "seed": cfg.polygon_seed,
            "weight_raster": cfg.weight_raster, "mean_points_used": float(np.mean(n_points)) if len(n_points) else 0.0}
    log.info("embedded %d polygons of %s (%d points each, seed %d%s)", len(frame), origin, cfg.points_per_polygon,
             cfg.polygon_seed, f", weighted by {cfg.weight_raster}" if cfg.weight_raster else "")
    return frame, np.asarray(share, dtype=np.float64), info
