"""The report folder: evaluation.json, report.md, config.yaml (the resolved ``evaluate:`` section) and PNG
figures, written atomically (temp folder, rename).

Figures (matplotlib's object API: no pyplot state, no backend switch, safe in notebooks):
  - ``embedding_pca_rgb.png``: the first three principal components of the embedding columns, rescaled to
    [0, 1] as RGB; points of the table, or (with an embedder) a regular lon/lat grid over the table's extent;
  - ``spatial_effect.png``: the fitted spatial effect (linear predictor without offset, base covariates at
    their median / most frequent level, centred) on a lon/lat grid for each model on coordinates and, when
    an embedder can embed the grid points, on embeddings; the models are refitted on all rows;
  - ``calibration.png``: out-of-fold actual / expected by predicted-rate decile, per model and feature set.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.evaluate.core import (
    EvaluationResult,
    embed,
    feature_label,
    summary_table,
)
from geoembed.evaluate.estimators import make_estimator, with_inner_folds
from geoembed.evaluate.metrics import actual_expected_by_decile
from geoembed.evaluate.models import link_fn
from geoembed.evaluate.pca import final_estimator
from geoembed.evaluate.splits import inner_folds
from geoembed.io.atomic import atomic_path

log = logging.getLogger(__name__)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def records_to_json(records: pd.DataFrame) -> list[dict]:
    """The records as JSON-ready dicts (NaN -> null, NaN-valued optional keys dropped)."""
    out = []
    for rec in records.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if not isinstance(v, list | dict | np.ndarray) and pd.isna(v) and k not in (
                    "deviance_ratio", "gini", "rmse", "mae", "deviance"):
                continue
            clean[k] = _jsonable(v)
        out.append(clean)
    return out


def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of ``df``."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


def lift_table(records: pd.DataFrame, cfg: EvaluateConfig | None = None) -> pd.DataFrame | None:
    """Pooled lift of each spatial feature set over covariates alone, per model (None without ``none``).

    Columns: model, features (as labelled in the report), deviance_ratio, the covariates-only model's
    ratio, ``vs covariates`` (deviance / covariates-only deviance) and ``gain`` (covariates-only ratio minus
    this one), with the gain's fold mean ± sd.
    """
    if "vs_covariates" not in records:
        return None
    fold = records["fold"].astype(str)
    pooled = records[(fold == "pooled") & (records["features"] != "none")]
    if not len(pooled):
        return None
    base = records[(fold == "pooled") & (records["features"] == "none")].set_index("model")["deviance_ratio"]
    per_fold = records[fold != "pooled"]
    rows = []
    for r in pooled.itertuples(index=False):
        g = per_fold[(per_fold["model"] == r.model) & (per_fold["features"] == r.features)]["gain_vs_covariates"]
        rows.append([r.model, feature_label(r.features, cfg) if cfg is not None else r.features,
                     r.deviance_ratio, base.get(r.model, float("nan")), r.vs_covariates, r.gain_vs_covariates,
                     f"{g.mean():.3f} ± {g.std(ddof=0):.3f}" if len(g) else "n/a"])
    return pd.DataFrame(rows, columns=["model", "features", "deviance_ratio", "covariates only",
                                       "vs covariates", "gain", "gain fold mean±sd"])


def _support_lines(support: dict | None) -> tuple[list[str], list[str]]:
    """(warning lines for the top of report.md, a setup line) for the out-of-support summary."""
    if support is None:
        return [], []
    far = (f"more than {support['threshold_km']:g} km from the training footprint; "
           if support["threshold_km"] is not None else "flagged in ")
    line = (f"- out of the bundle's support: {support['out_of_support']} of {support['rows']} rows "
            f"({support['share']:.1%}; {far}{support['source']})")
    warn = []
    if support["over_limit"]:
        warn = [f"> **Warning: {support['share']:.1%} of the rows ({support['out_of_support']} of "
                f"{support['rows']}) are out of the bundle's support** (limit "
                f"{support['max_share']:.0%}, run with --allow-out-of-support). Their embeddings are "
                "extrapolations: the embedding results below do not measure the bundle where it was trained.",
                ""]
    return warn, [line]


def render_markdown(records: pd.DataFrame, cfg: EvaluateConfig | None = None, figures: list[str] = (),
                    notes: list[str] = (), result: EvaluationResult | None = None) -> str:
    """report.md: setup, the pooled comparison table, fold spread, A/E by decile, figures, notes."""
    lines = ["# geoembed evaluation", ""]
    support = result.info.get("support") if result is not None else None
    warn, support_line = _support_lines(support)
    lines += warn
    if cfg is not None:
        lines += [f"- table: `{cfg.table}`", f"- target: `{cfg.target}`, family {cfg.family}, "
                  f"link {cfg.resolved_link}" + (f", tweedie power {cfg.tweedie_power}" if cfg.family == "tweedie"
                                                  else ""),
                  f"- exposure: `{cfg.exposure}` (offset log exposure)" if cfg.exposure else "- exposure: none",
                  f"- base covariates: {cfg.covariates + cfg.categorical or 'none'}"]
    if len(records):
        lines.append(f"- split: {records['split'].iloc[0]} ({int(records['n_folds'].iloc[0])} test folds)")
    if result is not None:
        lines.append(f"- rows: {len(result.table)}" + (f", embedding columns: {len(result.embedding_columns)}"
                                                      if result.embedding_columns or not result.embedding_sets else ""))
        if result.bundle_fingerprint:
            lines.append(f"- bundle fingerprint: `{result.bundle_fingerprint}`")
        if cfg is not None and cfg.components is not None and result.embedding_columns:
            lines.append(f"- embeddings reduced to {cfg.components} principal components"
                         f"{' (whitened)' if cfg.whiten else ''}, fitted on each training fold")
    lines += support_line
    for name, about in (result.info.get("embedding_sets", {}) if result is not None else {}).items():
        set_warn, set_line = _support_lines(about.get("support"))
        lines[2:2] = set_warn
        fp = f", fingerprint `{about['fingerprint']}`" if about.get("fingerprint") else ""
        lines.append(f"- embedding set `{name}`: {about['source']}, {len(result.embedding_sets[name])} columns{fp}")
        lines += [f"  {x}" for x in set_line]
    if result is not None and result.info.get("polygons"):
        p = result.info["polygons"]
        lines.append(f"- polygons embedded as the mean over {p['points_per_polygon']} points sampled in each "
                     f"(seed {p['seed']}" + (f", weighted by `{p['weight_raster']}`" if p.get("weight_raster") else "")
                     + "); lon/lat and the folds use their centroids")
    lines += ["", "## Pooled out-of-fold comparison", "",
              "deviance_ratio = held-out deviance / deviance of the exposure-only model (intercept + offset "
              "fitted on each training fold); below 1 is better than exposure alone. Gini from the "
              "exposure-weighted Lorenz curve ordered by predicted rate.", ""]
    summ = summary_table(records).copy()
    pooled = records[records["fold"].astype(str) == "pooled"]
    if "deviance_ratio_folds_sd" in pooled:
        summ["ratio fold mean±sd"] = [f"{a:.3f} ± {b:.3f}" for a, b in
                                      zip(pooled["deviance_ratio_folds_mean"], pooled["deviance_ratio_folds_sd"],
                                          strict=True)]
    lines += [markdown_table(summ), ""]
    lift = lift_table(records, cfg)
    if lift is None and cfg is not None and (cfg.covariates or cfg.categorical) and "none" not in cfg.features:
        notes = [*notes, "no lift over covariates alone: add `none` (the covariates-only model) to "
                 "evaluate.features"]
    if lift is not None:
        lines += ["## Lift over covariates alone", "",
                  "Each spatial feature set against the same model on the base rating factors alone (feature "
                  "set `none`: " + (feature_label("none", cfg) if cfg is not None else "covariates") + "), "
                  "pooled out of fold: vs covariates = deviance / covariates-only deviance (below 1 is better); "
                  "gain = covariates-only deviance ratio minus this one (above 0 is better).", "",
                  markdown_table(lift), ""]
    if "ae_by_decile" in pooled:
        lines += ["## Actual / expected by predicted-rate decile (pooled)", ""]
        ae = pd.DataFrame([[f"{m}:{f}"] + [v if v is not None else float("nan") for v in d]
                           for m, f, d in zip(pooled["model"], pooled["features"], pooled["ae_by_decile"],
                                              strict=True)],
                          columns=["model:features"] + [f"d{i + 1}" for i in range(10)])
        lines += [markdown_table(ae), ""]
    per_fold = records[records["fold"].astype(str) != "pooled"]
    if len(per_fold):
        lines += ["## Per fold", ""]
        lines += [markdown_table(per_fold[["model", "features", "fold", "deviance_ratio", "rmse", "gini",
                                           "n_train", "n_test"]]), ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures


def _grid(table: pd.DataFrame, lon_col: str, lat_col: str, size: int) -> tuple[pd.DataFrame, tuple]:
    lon = table[lon_col].to_numpy(float)
    lat = table[lat_col].to_numpy(float)
    padx = 0.02 * max(np.ptp(lon), 1e-6)
    pady = 0.02 * max(np.ptp(lat), 1e-6)
    ext = (lon.min() - padx, lon.max() + padx, lat.min() - pady, lat.max() + pady)
    gx = np.linspace(ext[0], ext[1], size)
    gy = np.linspace(ext[2], ext[3], size)
    LX, LY = np.meshgrid(gx, gy)
    return pd.DataFrame({lon_col: LX.ravel(), lat_col: LY.ravel()}), ext


def _overlay_points(ax, t: pd.DataFrame, cfg: EvaluateConfig, limit: int = 20000) -> None:
    """The table's locations as small dots (a fixed random subset beyond ``limit`` rows)."""
    if len(t) > limit:
        t = t.sample(limit, random_state=0)
    ax.scatter(t[cfg.lon_col], t[cfg.lat_col], s=1.5, c="k", alpha=0.3, linewidths=0)


def _reference_rows(grid: pd.DataFrame, table: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
    g = grid.copy()
    for c in cfg.covariates:
        g[c] = float(np.median(table[c].to_numpy(float)))
    for c in cfg.categorical:
        g[c] = table[c].astype(str).mode().iloc[0]
    return g


def _rgb(emb: np.ndarray, fit_on: np.ndarray) -> np.ndarray:
    """First three principal components of ``emb`` (axes fitted on ``fit_on``) rescaled to [0, 1] as RGB.

    The 1st-99th percentiles of the fitted rows' scores map to 0 and 1 (values beyond are clipped).
    """
    fit_on = np.asarray(fit_on, float)
    mean = fit_on.mean(axis=0)
    _, _, vt = np.linalg.svd(fit_on - mean, full_matrices=False)
    axes = vt[:3].T
    pcs = (np.nan_to_num(np.asarray(emb, float)) - mean) @ axes
    ref = (fit_on - mean) @ axes
    lo = np.percentile(ref, 1, axis=0)
    hi = np.percentile(ref, 99, axis=0)
    rgb = np.clip((pcs - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    if rgb.shape[1] < 3:  # fewer than 3 components: pad with mid grey
        rgb = np.hstack([rgb, np.full((len(rgb), 3 - rgb.shape[1]), 0.5)])
    return rgb


def figure_pca_rgb(result: EvaluationResult, cfg: EvaluateConfig, path: Path, embedder=None) -> str | None:
    """PC1-3 of the embedding as RGB: points of the table, or a regular grid with an embedder."""
    from matplotlib.figure import Figure

    cols = result.embedding_columns
    if not cols:
        return "embedding PCA map skipped: no embedding columns"
    t = result.table
    E = t[cols].to_numpy(float)
    fig = Figure(figsize=(6, 5.5))
    ax = fig.subplots()
    if embedder is not None:
        grid, ext = _grid(t, cfg.lon_col, cfg.lat_col, cfg.grid_size)
        G = embed(grid, embedder, cfg.embedding_prefix)[cols].to_numpy(float)
        rgb = _rgb(G, E).reshape(cfg.grid_size, cfg.grid_size, 3)
        rgb[~np.isfinite(G).all(axis=1).reshape(cfg.grid_size, cfg.grid_size)] = 1.0
        ax.imshow(rgb, origin="lower", extent=ext, aspect="auto", interpolation="nearest")
        _overlay_points(ax, t, cfg)
        ax.set_title("embedding PC1-3 as RGB on a regular grid")
    else:
        pts = np.arange(len(t)) if len(t) <= 50000 else np.random.default_rng(0).choice(len(t), 50000, False)
        ax.scatter(t[cfg.lon_col].to_numpy()[pts], t[cfg.lat_col].to_numpy()[pts], c=_rgb(E, E)[pts],
                   s=14 if len(pts) < 2000 else 3, edgecolors="none")
        ax.set_title("embedding PC1-3 as RGB (table points)")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def figure_calibration(result: EvaluationResult, cfg: EvaluateConfig, path: Path) -> None:
    """Out-of-fold actual / expected by predicted-rate decile, one panel per feature set."""
    from matplotlib.figure import Figure

    p = result.predictions
    feats = list(cfg.features)
    fig = Figure(figsize=(4.2 * len(feats), 3.8))
    axes = fig.subplots(1, len(feats), squeeze=False, sharey=True)
    e = p["exposure"].to_numpy() if cfg.exposure else None
    for ax, f in zip(axes[0], feats, strict=True):
        for m in cfg.models:
            ae = actual_expected_by_decile(p["y"].to_numpy(), p[f"{m}:{f}"].to_numpy(), e)
            ax.plot(np.arange(1, 11), ae, marker="o", label=m)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"features: {f}")
        ax.set_xlabel("predicted-rate decile")
        ax.set_xticks(range(1, 11))
    axes[0][0].set_ylabel("actual / expected")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def figure_spatial_effect(result: EvaluationResult, cfg: EvaluateConfig, path: Path,
                          embedder=None) -> list[str]:
    """Fitted spatial effect on a lon/lat grid: each model on coordinates vs on embeddings (refitted on all rows)."""
    from matplotlib.figure import Figure

    notes = []
    t = result.table
    feature_sets = ["coords"]
    if embedder is not None and result.embedding_columns:
        feature_sets.append("embeddings")
    else:
        notes.append("spatial effect of embeddings not drawn: embedding grid points needs a bundle "
                     "(evaluate.bundle); only the coordinate models are shown")
    grid, ext = _grid(t, cfg.lon_col, cfg.lat_col, cfg.grid_size)
    G = _reference_rows(grid, t, cfg)
    valid = np.ones(len(G), dtype=bool)
    if "embeddings" in feature_sets:
        emb = embed(grid, embedder, cfg.embedding_prefix)[result.embedding_columns]
        valid = np.isfinite(emb.to_numpy(float)).all(axis=1)  # grid cells the bundle cannot embed stay blank
        G = pd.concat([G, emb], axis=1)
    if cfg.exposure:
        G[cfg.exposure] = 1.0  # the effect per unit exposure
    y = t[cfg.target].to_numpy(float)
    idx = np.arange(len(t))
    inner = inner_folds(idx, result.blocks, cfg.gbm.inner_folds, cfg.seed)
    fields = {}
    for f in feature_sets:
        for m in cfg.models:
            model = with_inner_folds(make_estimator(m, f, cfg, result.embedding_columns), inner)
            model.fit(t, y)
            mu = model.predict(G)
            eta = link_fn(final_estimator(model).link_, mu)
            eta = np.where(np.isfinite(eta) & (valid if f == "embeddings" else True), eta, np.nan)
            fields[(m, f)] = (eta - np.nanmean(eta)).reshape(cfg.grid_size, cfg.grid_size)
    vals = np.concatenate([v.ravel() for v in fields.values()])
    lim = float(np.nanpercentile(np.abs(vals), 99)) if np.isfinite(vals).any() else 1.0
    nr, nc = len(feature_sets), len(cfg.models)
    fig = Figure(figsize=(4.6 * nc, 4.0 * nr))
    axes = fig.subplots(nr, nc, squeeze=False)
    for j, m in enumerate(cfg.models):
        for i, f in enumerate(feature_sets):
            ax = axes[i][j]
            im = ax.imshow(fields[(m, f)], origin="lower", extent=ext, aspect="auto", cmap="RdBu_r",
                           vmin=-lim, vmax=lim, interpolation="nearest")
            _overlay_points(ax, t, cfg)
            ax.set_title(f"{m} on {f}")
            fig.colorbar(im, ax=ax, shrink=0.8, label="centred linear predictor")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return notes


def write_report(result: EvaluationResult | pd.DataFrame, out_dir: str | Path, cfg: EvaluateConfig | None = None,
                 embedder=None, figures: bool = True) -> Path:
    """Write ``out_dir`` (evaluation.json, report.md, figures) atomically and return its path.

    ``result``: an :class:`EvaluationResult` (figures need it and ``cfg``) or just the records.
    A failed figure is logged and noted in report.md; it does not fail the report.
    """
    res = result if isinstance(result, EvaluationResult) else None
    records = res.records if res is not None else result
    out_dir = Path(out_dir)
    figs, notes = [], []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "evaluation.json").write_text(json.dumps(records_to_json(records), indent=2) + "\n")
        if figures and res is not None and cfg is not None:
            jobs = [("embedding_pca_rgb.png", lambda p: figure_pca_rgb(res, cfg, p, embedder)),
                    ("calibration.png", lambda p: figure_calibration(res, cfg, p))]
            if any(f in ("coords", "both", "embeddings") for f in cfg.features):
                jobs.append(("spatial_effect.png", lambda p: figure_spatial_effect(res, cfg, p, embedder)))
            for name, fn in jobs:
                try:
                    note = fn(tmp / name)
                except Exception as err:  # a figure must not sink the report
                    log.warning("figure %s failed: %s", name, err)
                    notes.append(f"figure {name} failed: {err}")
                    continue
                if isinstance(note, str):
                    notes.append(note)
                elif isinstance(note, list):
                    notes.extend(note)
                if (tmp / name).exists():
                    figs.append(name)
        section = ""
        if res is not None and cfg is not None and cfg.territories is not None:  # territories.py, on request
            from geoembed.evaluate.territory_report import write_territories

            section, t_figs, t_notes = write_territories(res, cfg, tmp)
            figs += t_figs
            notes += t_notes
        (tmp / "report.md").write_text(render_markdown(records, cfg, figs, notes, res) + section)
        if cfg is not None:
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump({"evaluate": cfg.model_dump(mode="json")},
                                                            sort_keys=False))
    return out_dir
