"""Rows out of the bundle's support: counted for the report, and a stop when most of the table is.

A row is out of support when it lies farther than the bundle's ``out_of_support_km`` from its training
footprint (measured with the bundle's own ``distance_to_footprint_km``), or, for an enriched table evaluated
without a bundle, when ``geoembed enrich`` flagged it in ``geoembed_out_of_support``. A polygon embedded from
the bundle (:mod:`geoembed.evaluate.polygons`) is out of support when more than half of its (weighted)
sampled points are beyond that distance; so is a polygon of a table enriched by ``geoembed enrich`` (its
``geoembed_out_of_support_share`` column), whose own flag marks only polygons with every point out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import InputError

log = logging.getLogger(__name__)

OOS_COL = "geoembed_out_of_support"  # the QA column of `geoembed enrich` (geoembed.io.enriched.OOS_COL)
OOS_SHARE_COL = "geoembed_out_of_support_share"  # polygons enriched by `geoembed enrich`: share of points out


def _embedder_bundle(embedder):
    """The loaded bundle behind an embedder (a ``LocationEmbedder``'s ``bundle``), else None."""
    b = getattr(embedder, "bundle", None)
    if b is not None and hasattr(b, "distance_to_footprint_km") and hasattr(b, "out_of_support_km"):
        return b
    if isinstance(b, str | Path) and (Path(b) / "geoembed.json").is_file():
        from geoembed.enrich.enricher import load_bundle_cached

        return load_bundle_cached(b)
    return None


def support_summary(table: pd.DataFrame, cfg: EvaluateConfig, embedder=None,
                    polygon_share: np.ndarray | None = None, bundle=None) -> dict | None:
    """How many rows lie out of the bundle's support, or None when nothing tells.

    With an embedder backed by a bundle: rows farther than the bundle's ``out_of_support_km`` from its
    training footprint. Otherwise the table's ``geoembed_out_of_support`` column written by
    ``geoembed enrich`` (true counts; null rows are not counted). Returns ``rows``, ``out_of_support``,
    ``share``, ``threshold_km`` (None from the column), ``source``, ``max_share`` and ``over_limit``.
    ``polygon_share`` (with the loaded ``bundle`` that sampled them): each row's share of sampled points out
    of support; a row counts when that share is above one half.
    """
    n = len(table)
    if polygon_share is not None and bundle is not None:
        from geoembed.evaluate.polygons import MAJORITY

        k = int(np.count_nonzero(np.nan_to_num(polygon_share, nan=0.0) > MAJORITY))
        thr = float(bundle.out_of_support_km)
        source = (f"bundle {cfg.bundle or 'given'}, polygons: out of support when more than half of "
                  "their sampled points are")
        share = k / n if n else 0.0
        return {"rows": n, "out_of_support": k, "share": share, "threshold_km": thr, "source": source,
                "max_share": cfg.max_out_of_support_share, "over_limit": share > cfg.max_out_of_support_share}
    bundle = _embedder_bundle(embedder) if embedder is not None else None
    if bundle is not None:
        lon = pd.to_numeric(table[cfg.lon_col], errors="coerce").to_numpy(float)
        lat = pd.to_numeric(table[cfg.lat_col], errors="coerce").to_numpy(float)
        dist = bundle.distance_to_footprint_km(lon, lat)
        thr = float(bundle.out_of_support_km)
        k = int(np.count_nonzero(np.nan_to_num(dist, nan=0.0) > thr))
        where = getattr(embedder, "bundle", None)
        source = f"bundle {where if isinstance(where, str | Path) else cfg.bundle or 'given'}"
    elif OOS_SHARE_COL in table.columns:  # polygons: the same majority rule as with the bundle
        from geoembed.evaluate.polygons import MAJORITY

        shares = pd.to_numeric(table[OOS_SHARE_COL], errors="coerce").to_numpy(float)
        flags = _flags(table[OOS_COL]) if OOS_COL in table.columns else np.zeros(n, dtype=bool)
        out = np.where(np.isfinite(shares), shares > MAJORITY, flags)  # a row without a share keeps its flag
        k, thr = int(np.count_nonzero(out)), None
        source = f"column {OOS_SHARE_COL}: polygons out of support when more than half of their sampled points are"
    elif OOS_COL in table.columns:
        k, thr, source = int(_flags(table[OOS_COL]).sum()), None, f"column {OOS_COL}"
    else:
        return None
    share = k / n if n else 0.0
    return {"rows": n, "out_of_support": k, "share": share, "threshold_km": thr, "source": source,
            "max_share": cfg.max_out_of_support_share, "over_limit": share > cfg.max_out_of_support_share}


def _flags(col: pd.Series) -> np.ndarray:
    """A true/false column (bool, nullable boolean, 0/1, or CSV text ``True``/``False``) as a bool array;
    null rows are false."""
    if col.dtype == bool:
        return col.to_numpy()
    text = col.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "1.0"]).fillna(False).to_numpy(dtype=bool)


def check_support(summary: dict | None, cfg: EvaluateConfig, bundle: str | None = None) -> None:
    """InputError when more than ``max_out_of_support_share`` of the rows are out of support, unless allowed.
    ``bundle``: the bundle the summary is about (default ``cfg.bundle``)."""
    if summary is None or not summary["over_limit"]:
        return
    far = (f"more than {summary['threshold_km']:g} km outside the bundle's training footprint"
           if summary["threshold_km"] is not None else f"out of the bundle's support ({summary['source']})")
    msg = (f"{summary['out_of_support']} of {summary['rows']} rows ({summary['share']:.1%}) of table "
           f"{cfg.table or '(given DataFrame)'} lie {far} (bundle {bundle or cfg.bundle or 'of the enriched table'}); "
           f"evaluate.max_out_of_support_share is {cfg.max_out_of_support_share:g}")
    if not cfg.allow_out_of_support:
        raise InputError(f"{msg}. Their embeddings are extrapolations, so the comparison would not measure the "
                         "bundle. Use a bundle that covers the table, or go on with --allow-out-of-support "
                         "(evaluate.allow_out_of_support: true)")
    log.warning("%s; going on (allow_out_of_support)", msg)
