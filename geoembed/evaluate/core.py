"""The evaluation loop: models x spatial feature sets x folds, scored against the exposure-only model."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import FEATURE_SETS, EvaluateConfig  # noqa: F401 - FEATURE_SETS: as before
from geoembed.errors import ConfigError, GeoembedError, InputError
from geoembed.evaluate import metrics as M
from geoembed.evaluate.estimators import make_estimator, with_inner_folds
from geoembed.evaluate.models import ModelFitError, null_predict
from geoembed.evaluate.pca import final_estimator, fit_info
from geoembed.evaluate.splits import assign_folds, inner_folds
from geoembed.evaluate.support import check_support, support_summary
from geoembed.evaluate.tables import check_numeric, validate_table, with_lonlat

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Everything one evaluation produced.

    ``records``: one row per model x features x fold plus a ``pooled`` row (see :func:`evaluate`).
    ``predictions``: out-of-fold predictions, one row per tested row, columns ``row`` (position in the
    table), ``fold``, ``y``, ``exposure``, ``null`` (exposure-only prediction) and ``<model>:<features>``.
    ``table``: the table as evaluated (embedding columns added when an embedder was used).
    ``embedding_sets``: the columns of each named embedding set (``evaluate.embedding_sets``) evaluated.
    """

    records: pd.DataFrame
    predictions: pd.DataFrame
    table: pd.DataFrame
    folds: np.ndarray
    blocks: np.ndarray | None
    embedding_columns: list[str]
    bundle_fingerprint: str | None = None
    info: dict = field(default_factory=dict)
    embedding_sets: dict[str, list[str]] = field(default_factory=dict)


def embedding_columns(table: pd.DataFrame, prefix: str = "emb_") -> list[str]:
    """The table's embedding columns ``<prefix><int>``, in numeric order."""
    cols = [c for c in table.columns if isinstance(c, str) and c.startswith(prefix)
            and c[len(prefix):].isdigit()]
    return sorted(cols, key=lambda c: int(c[len(prefix):]))


def embedder_fingerprint(embedder, bundle: str | None = None) -> str | None:
    """The bundle fingerprint an embedder reports (or of the bundle folder's files), else None."""
    for attr in ("bundle_fingerprint_", "bundle_fingerprint", "fingerprint_", "fingerprint"):
        val = getattr(embedder, attr, None) if embedder is not None else None
        if isinstance(val, str):
            return val
    if bundle:
        from geoembed.io.fingerprint import file_fingerprint, text_fingerprint

        p = Path(bundle)
        if (p / "geoembed.json").is_file():  # a bundle: its own fingerprint (derived from its seal)
            from geoembed.io.bundle import load_bundle

            return load_bundle(p).fingerprint
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        if files:
            return text_fingerprint({f.name: file_fingerprint(f) for f in files})
    return None


def make_embedder(cfg: EvaluateConfig):
    """A ``geoembed.enrich.LocationEmbedder`` for ``cfg.bundle`` (imported lazily)."""
    try:
        from geoembed.enrich import LocationEmbedder
    except ImportError as err:
        raise ConfigError(f"evaluate.bundle is set but geoembed.enrich.LocationEmbedder is unavailable: {err}; "
                          "enrich the table first (emb_* columns) and drop evaluate.bundle") from None
    return LocationEmbedder(bundle=cfg.bundle, lon_col=cfg.lon_col, lat_col=cfg.lat_col)


def feature_label(features: str, cfg: EvaluateConfig) -> str:
    """How the report names a feature set: ``covariates``, ``covariates + coords``, ... (``exposure only``,
    ``coords``, ... without rating factors)."""
    has_cov = bool(cfg.covariates or cfg.categorical)
    if features == "none":
        return "covariates" if has_cov else "exposure only"
    spatial = {"coords": "coords", "embeddings": "embeddings", "both": "coords + embeddings"}.get(features, features)
    return f"covariates + {spatial}" if has_cov else spatial


def add_lift(records: list[dict]) -> None:
    """Add to each record its lift over the covariates-only model (feature set ``none``) of the same model
    and fold: ``vs_covariates`` (deviance / covariates-only deviance) and ``gain_vs_covariates``
    (covariates-only deviance ratio minus this one; positive when the spatial features help)."""
    base = {(r["model"], str(r["fold"])): r for r in records if r["features"] == "none"}
    for r in records:
        b = base.get((r["model"], str(r["fold"])))
        if b is None:
            continue
        r["vs_covariates"] = float(r["deviance"] / b["deviance"]) if b["deviance"] > 0 else float("nan")
        r["gain_vs_covariates"] = float(b["deviance_ratio"] - r["deviance_ratio"])


def _is_fitted(obj) -> bool:
    """scikit-learn's convention: ``__sklearn_is_fitted__()``, else any public attribute ending in '_'."""
    probe = getattr(obj, "__sklearn_is_fitted__", None)
    if callable(probe):
        return bool(probe())
    return any(k.endswith("_") and not k.startswith("_") for k in vars(obj))


def embed(table: pd.DataFrame, embedder, prefix: str = "emb_") -> pd.DataFrame:
    """The embedder's ``emb_*`` columns for ``table``'s rows (fits the embedder first when it needs it)."""
    if hasattr(embedder, "fit") and not _is_fitted(embedder):
        embedder.fit(table)
    out = embedder.transform(table)
    if not isinstance(out, pd.DataFrame):
        arr = np.asarray(out, dtype=float)
        names = (list(embedder.get_feature_names_out()) if hasattr(embedder, "get_feature_names_out")
                 else [f"{prefix}{i}" for i in range(arr.shape[1])])
        out = pd.DataFrame(arr, columns=names, index=table.index)
    cols = embedding_columns(out, prefix) or [c for c in out.columns if str(c).startswith(prefix)]
    if not cols:
        raise InputError(f"the embedder returned no {prefix}* columns (got {list(out.columns)[:8]})")
    res = out[cols].copy()
    res.index = table.index
    return res


def split_label(cfg: EvaluateConfig) -> str:
    """A short description of the split scheme, e.g. ``spatial_block(grid 2000 m, 5 folds)``."""
    s = cfg.split
    if s.kind == "random":
        return f"random({s.n_folds} folds)"
    if s.kind == "spatial_block":
        how = {"grid": f"grid {s.block_size_m:g} m", "h3": f"h3 res {s.h3_resolution}",
               "kmeans": f"kmeans {s.n_blocks or 4 * s.n_folds}", "column": f"column {s.block_column}"}
        return f"spatial_block({how[s.block_method]}, {s.n_folds} folds)"
    what = (f"column {s.region_column}" if s.region_column else "bbox" if s.bbox else "polygon")
    return f"leave_region_out({what})"


# ---------------------------------------------------------------------------------------------- main


def uses_embeddings(cfg: EvaluateConfig) -> bool:
    """Whether a feature set of ``cfg`` needs embedding columns."""
    return any(f in ("embeddings", "both") for f in cfg.features)


def _named_bundles(cfg: EvaluateConfig) -> list[str]:
    """The named embedding sets in ``cfg.features`` that come from a bundle."""
    return [f for f in cfg.features if f in cfg.embedding_sets and cfg.embedding_sets[f].bundle is not None]


def _embedding_sets(table: pd.DataFrame, geometry, cfg: EvaluateConfig) -> tuple[pd.DataFrame, dict, dict]:
    """The table with the columns of every named embedding set in ``cfg.features`` (a bundle's as
    ``<name>_<k>``, embedded like the default set: polygons by their sampled points), each set's columns,
    and per set its source, fingerprint and out-of-support summary (checked as the default set's)."""
    cols: dict[str, list[str]] = {}
    about: dict[str, dict] = {}
    for name in (f for f in cfg.features if f in cfg.embedding_sets):
        es = cfg.embedding_sets[name]
        where = f"evaluate.embedding_sets.{name}"
        if es.prefix is not None:
            cols[name] = embedding_columns(table, es.prefix)
            if not cols[name]:
                raise InputError(f"{where}: the table has no {es.prefix}<k> columns")
            about[name] = {"source": f"columns {es.prefix}*", "fingerprint": None, "support": None}
            continue
        try:
            from geoembed.enrich import LocationEmbedder

            embedder = LocationEmbedder(bundle=es.bundle, lon_col=cfg.lon_col, lat_col=cfg.lat_col).fit(table)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        emb, support, polygons = _polygon_path(geometry, cfg, embedder)
        if emb is None:
            emb = embed(table, embedder, cfg.embedding_prefix)
            support = support_summary(table, cfg, embedder)
        if support is not None:
            support["source"] = f"embedding set {name}" + (", polygons by their sampled points"
                                                            if geometry is not None else "")
        check_support(support, cfg, bundle=es.bundle)
        names = [f"{name}_{i}" for i in range(emb.shape[1])]
        clash = [c for c in names if c in table.columns]
        if clash:
            raise InputError(f"{where}: the table already has column(s) {clash[:4]}; rename them or the set")
        table = pd.concat([table, emb.set_axis(names, axis=1).set_axis(table.index)], axis=1)
        cols[name] = names
        about[name] = {"source": f"bundle {es.bundle}", "fingerprint": embedder.bundle_fingerprint_,
                       "support": support, **({"polygons": polygons} if polygons else {})}
    for name, c in cols.items():
        table = table.assign(**{k: check_numeric(table, k, f"embedding set {name}") for k in c})
    return table, cols, about


def _polygon_path(geometry, cfg: EvaluateConfig, embedder):
    """(embedding columns, support summary, settings) of the polygon rows, or three Nones when there are
    no polygons or no bundle to sample them with (an embedder not backed by one)."""
    if geometry is None:
        return None, None, None
    from geoembed.evaluate.polygons import embed_table_polygons, polygon_bundle

    bundle = polygon_bundle(cfg, embedder)
    if bundle is None:
        log.warning("the table holds polygons but the embedder is not backed by a bundle: embedding centroids")
        return None, None, None
    emb, share, info = embed_table_polygons(geometry, bundle, cfg)
    return emb, support_summary(emb, cfg, polygon_share=share, bundle=bundle), info


def run_evaluation(table: pd.DataFrame, cfg: EvaluateConfig, embedder=None,
                   progress: bool = False, geometry=None) -> EvaluationResult:
    """Cross-validate every model x feature set of ``cfg`` on ``table``.

    ``embedder``: an object with ``transform(table) -> emb_* columns`` (e.g. a fitted
    ``geoembed.enrich.LocationEmbedder``); when given (or when ``cfg.bundle`` is set) its columns replace
    any ``emb_*`` columns of the table. Otherwise feature sets with embeddings use the table's columns.

    Polygons (``geometry``, a GeoSeries of the rows; else the geometry of ``table`` when it is a
    GeoDataFrame, else that of the vector file ``cfg.table``) are embedded with the bundle as the mean over
    ``cfg.points_per_polygon`` points sampled in each (:mod:`geoembed.evaluate.polygons`), not at their
    centroids; lon/lat stay the centroids.
    """
    t0 = time.perf_counter()
    if (uses_embeddings(cfg) and (embedder is not None or cfg.bundle) or _named_bundles(cfg)) and geometry is None:
        from geoembed.evaluate.polygons import table_polygons

        geometry = table_polygons(table, cfg)
    if hasattr(getattr(table, "geometry", None), "crs"):  # a GeoDataFrame: lon/lat from it, as read_table does
        table = with_lonlat(table, cfg.lon_col, cfg.lat_col)
    table = table.reset_index(drop=True)
    feats = list(cfg.features)
    uses_emb = any(f in ("embeddings", "both") for f in feats)
    if embedder is None and cfg.bundle and uses_emb:
        embedder = make_embedder(cfg)
    needs_coords = (any(f in ("coords", "both") for f in feats) or cfg.split.kind != "random"
                    or embedder is not None or bool(_named_bundles(cfg)))
    validate_table(table, cfg, needs_coords)
    num = [cfg.target, *([cfg.exposure] if cfg.exposure else []), *cfg.covariates,
           *([cfg.lon_col, cfg.lat_col] if needs_coords else [])]
    table = table.assign(**{c: check_numeric(table, c, "numeric") for c in dict.fromkeys(num)})
    fingerprint = None
    poly_emb, poly_info = None, None
    if uses_emb and embedder is not None:  # polygons: their means over sampled points, not the centroids'
        poly_emb, support, poly_info = _polygon_path(geometry, cfg, embedder)
    if poly_emb is None:
        support = support_summary(table, cfg, embedder if uses_emb else None) if uses_emb else None
    check_support(support, cfg)
    if embedder is not None and uses_emb:
        emb = embed(table, embedder, cfg.embedding_prefix) if poly_emb is None else poly_emb.set_axis(table.index)
        old = embedding_columns(table, cfg.embedding_prefix)
        if old:
            same = list(old) == list(emb.columns) and np.allclose(
                table[old].apply(pd.to_numeric, errors="coerce").to_numpy(float), emb.to_numpy(float),
                rtol=1e-5, atol=1e-6, equal_nan=True)
            if same:
                log.info("the table's %s* columns equal the bundle's embeddings", cfg.embedding_prefix)
            else:
                log.warning("replacing the table's %d %s* columns by the bundle's embeddings (they differ: "
                            "enriched with another bundle?)", len(old), cfg.embedding_prefix)
        table = pd.concat([table.drop(columns=old), emb], axis=1)
        fingerprint = embedder_fingerprint(embedder, cfg.bundle)
    emb_cols = embedding_columns(table, cfg.embedding_prefix) if uses_emb else []
    if uses_emb and not emb_cols:
        raise InputError(f"features {[f for f in feats if f in ('embeddings', 'both')]} need embedding columns, "
                         f"but the table has no {cfg.embedding_prefix}<k> columns and evaluate.bundle is not set")
    if emb_cols:
        table = table.assign(**{c: check_numeric(table, c, "embedding") for c in emb_cols})
    table, sets, set_about = _embedding_sets(table, geometry, cfg)
    poly_info = poly_info or next((a["polygons"] for a in set_about.values() if "polygons" in a), None)

    y = table[cfg.target].to_numpy(float)
    expo = table[cfg.exposure].to_numpy(float) if cfg.exposure else None
    offset = np.log(expo) if expo is not None else None
    link = cfg.resolved_link
    fold, blocks = assign_folds(table, cfg.split, cfg.lon_col, cfg.lat_col)
    fold_ids = np.unique(fold[fold >= 0])
    label = split_label(cfg)
    combos = [(m, f) for f in feats for m in cfg.models]
    estimators = {(m, f): make_estimator(m, f, cfg, emb_cols, sets) for m, f in combos}

    tested = np.flatnonzero(fold >= 0)
    preds = pd.DataFrame({"row": tested, "fold": fold[tested], "y": y[tested]})
    preds["exposure"] = expo[tested] if expo is not None else 1.0
    oof = {f"{m}:{f}": np.full(len(tested), np.nan) for m, f in combos}
    oof_null = np.full(len(tested), np.nan)
    records: list[dict] = []
    bar = _progress(len(fold_ids) * len(combos), progress)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # BLAS and OpenMP (glum, tabmat): small solves, shared cores
        for f_id in fold_ids:
            tr = np.flatnonzero(fold != f_id)
            te = np.flatnonzero(fold == f_id)
            if len(tr) == 0 or len(te) == 0:
                raise InputError(f"fold {int(f_id)} is empty ({len(tr)} training, {len(te)} test rows)")
            o_tr = offset[tr] if offset is not None else None
            o_te = offset[te] if offset is not None else None
            e_te = expo[te] if expo is not None else None
            mu0 = null_predict(y[tr], o_tr, o_te if o_te is not None else np.zeros(len(te)),
                               cfg.family, link, cfg.tweedie_power)
            idx = np.searchsorted(tested, te)  # positions of this fold's rows among the tested rows
            oof_null[idx] = mu0
            inner = inner_folds(tr, blocks, cfg.gbm.inner_folds, cfg.seed + int(f_id))
            Xtr, Xte = table.iloc[tr], table.iloc[te]
            for m, f in combos:
                ts = time.perf_counter()
                model = with_inner_folds(estimators[(m, f)], inner)
                try:
                    model.fit(Xtr, y[tr])
                    mu = model.predict(Xte)
                except ModelFitError as err:
                    raise ModelFitError(f"{m} on features {f!r}, fold {int(f_id)}: {err}") from None
                except Exception as err:  # numerical failures become one clear message; bugs propagate
                    if isinstance(err, GeoembedError) or not (
                            isinstance(err, np.linalg.LinAlgError | FloatingPointError | ValueError | RuntimeError)
                            or type(err).__name__ == "LightGBMError"):
                        raise
                    raise ModelFitError(f"{m} on features {f!r}, fold {int(f_id)} failed: "
                                        f"{type(err).__name__}: {err}") from err
                if not np.all(np.isfinite(mu)):
                    raise ModelFitError(f"{m} on features {f!r}, fold {int(f_id)}: non-finite predictions "
                                        f"(link {link!r} may give invalid means; try the log link)")
                oof[f"{m}:{f}"][idx] = mu
                rec = {"model": m, "features": f, "split": label, "fold": int(f_id),
                       **M.score(y[te], mu, mu0, cfg.family, cfg.tweedie_power, e_te),
                       "n_train": int(len(tr)), "n_test": int(len(te)),
                       "family": cfg.family, "link": final_estimator(model).link_,
                       "fit_seconds": round(time.perf_counter() - ts, 3),
                       "info": fit_info(model)}
                records.append(rec)
                bar.update(1)
    bar.close()

    e_all = preds["exposure"].to_numpy() if expo is not None else None
    for m, f in combos:
        mu = oof[f"{m}:{f}"]
        preds[f"{m}:{f}"] = mu
        fold_recs = [r for r in records if r["model"] == m and r["features"] == f]
        rec = {"model": m, "features": f, "split": label, "fold": "pooled",
               **M.score(y[tested], mu, oof_null, cfg.family, cfg.tweedie_power, e_all),
               "n_train": int(np.mean([r["n_train"] for r in fold_recs])), "n_test": int(len(tested)),
               "family": cfg.family, "link": fold_recs[0]["link"],
               "fit_seconds": round(sum(r["fit_seconds"] for r in fold_recs), 3),
               "ae_by_decile": [None if not np.isfinite(v) else float(v)
                                for v in M.actual_expected_by_decile(y[tested], mu, e_all)],
               "deviance_ratio_folds_mean": float(np.mean([r["deviance_ratio"] for r in fold_recs])),
               "deviance_ratio_folds_sd": float(np.std([r["deviance_ratio"] for r in fold_recs]))}
        records.append(rec)
    preds["null"] = oof_null
    add_lift(records)
    for r in records:
        r["n_folds"] = len(fold_ids)
        fp, sup = ((set_about[r["features"]]["fingerprint"], set_about[r["features"]]["support"])
                   if r["features"] in set_about else (fingerprint, support))
        if fp:
            r["bundle_fingerprint"] = fp
        if sup is not None:
            r["n_out_of_support"] = sup["out_of_support"]
            r["out_of_support_share"] = sup["share"]
    recs = pd.DataFrame.from_records(records)
    log.info("evaluated %d model x feature combinations on %d folds in %.1f s", len(combos), len(fold_ids),
             time.perf_counter() - t0)
    return EvaluationResult(records=recs, predictions=preds, table=table, folds=fold, blocks=blocks,
                            embedding_columns=emb_cols, bundle_fingerprint=fingerprint, embedding_sets=sets,
                            info={"seconds": time.perf_counter() - t0, "split": label, "support": support,
                                  **({"polygons": poly_info} if poly_info else {}),
                                  **({"embedding_sets": set_about} if set_about else {})})


def evaluate(table: pd.DataFrame, cfg: EvaluateConfig, embedder=None, progress: bool = False) -> pd.DataFrame:
    """Cross-validated comparison; returns the records (one per model x features x fold, plus pooled).

    Each record holds ``model``, ``features``, ``split``, ``fold`` (int or ``"pooled"``), ``deviance``,
    ``null_deviance`` (exposure-only model fitted on the same training fold), ``deviance_ratio``, ``rmse``,
    ``mae``, ``gini``, ``gini_normalized``, ``n_train``, ``n_test``, ``family``, ``link``, ``n_folds``,
    ``fit_seconds``, ``info`` (model details: GAM alpha/edf, GBM rounds); ``bundle_fingerprint`` when a
    bundle was used. Pooled records score all out-of-fold predictions together (their deviance is the sum
    over folds, n_train the mean training size) and add ``ae_by_decile`` and the fold mean / sd of the
    deviance ratio. See :func:`run_evaluation`.
    """
    return run_evaluation(table, cfg, embedder, progress).records


def summary_table(records: pd.DataFrame) -> pd.DataFrame:
    """Pooled rows only, one per model x features, with the headline metrics."""
    pooled = records[records["fold"].astype(str) == "pooled"]
    cols = ["model", "features", "deviance_ratio", "deviance", "rmse", "mae", "gini", "n_test"]
    return pooled[cols].reset_index(drop=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="evaluate", unit="fit")
