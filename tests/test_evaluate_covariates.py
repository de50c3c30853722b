"""Evaluate with rating factors (lift of each spatial feature set over covariates alone), a PCA of the
embeddings fitted inside each training fold, and rows out of the bundle's support."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.decomposition import PCA

from geoembed.cli import main
from geoembed.config import load_config
from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import ConfigError, InputError
from geoembed.evaluate import make_estimator, run_evaluation, write_report
from geoembed.evaluate.synthetic import make_risk_table

OLINDA_BBOX = (-34.917, -8.041, -34.826, -7.950)


def _write(tmp_path: Path, ev: dict, table: pd.DataFrame, name: str = "t.parquet") -> Path:
    table.to_parquet(tmp_path / name)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"workdir": "run", "evaluate": {"table": name, **ev}}))
    return path


# ---------------------------------------------------------------------------------------------- covariates


def test_covariates_as_numeric_and_categorical_roles(tmp_path):
    t = make_risk_table(n=30, seed=1)
    cfg = load_config(_write(tmp_path, {"target": "y", "covariates": {"numeric": ["age"], "categorical": ["zone"]}},
                             t)).evaluate
    assert cfg.covariates == ["age"] and cfg.categorical == ["zone"]
    with pytest.raises(ConfigError, match=r"evaluate.covariates: unknown key\(s\) \['ordinal'\]"):
        load_config(_write(tmp_path, {"target": "y", "covariates": {"ordinal": ["age"]}}, t))
    with pytest.raises(ConfigError, match="either in evaluate.covariates.categorical or in evaluate.categorical"):
        load_config(_write(tmp_path, {"target": "y", "categorical": ["zone"],
                                      "covariates": {"categorical": ["region"]}}, t))
    with pytest.raises(ConfigError, match="evaluate.whiten needs evaluate.components"):
        load_config(_write(tmp_path, {"target": "y", "whiten": True}, t))


def test_rating_factor_errors_name_the_rows():
    t = make_risk_table(n=60, seed=1).astype({"age": object})
    t.loc[[4, 9], "age"] = ["forty", None]
    cfg = EvaluateConfig(target="y", exposure="exposure", covariates=["age"], features=["none"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match=r"covariate column 'age' has missing or non-numeric values in rows 4, 9"):
        run_evaluation(t, cfg)
    t = make_risk_table(n=60, seed=1)
    t.loc[11, "zone"] = None
    with pytest.raises(InputError, match=r"categorical column 'zone' has missing values in rows 11"):
        run_evaluation(t, cfg.model_copy(update={"covariates": [], "categorical": ["zone"]}))


def test_lift_over_covariates_alone(tmp_path):
    t = make_risk_table(n=500, rate=2.0, seed=3)
    cfg = EvaluateConfig(target="y", exposure="exposure", covariates={"numeric": ["age"], "categorical": ["zone"]},
                         features=["none", "coords", "embeddings"], models=["glm", "gbm"],
                         gbm={"num_boost_round": 60, "early_stopping": False},
                         split={"kind": "spatial_block", "n_folds": 3, "block_method": "kmeans", "n_blocks": 12})
    res = run_evaluation(t, cfg)
    r = res.records
    for m in ("glm", "gbm"):
        for fold in r["fold"].astype(str).unique():
            sel = r[(r["model"] == m) & (r["fold"].astype(str) == fold)].set_index("features")
            for f in ("coords", "embeddings"):
                assert sel.loc[f, "vs_covariates"] == pytest.approx(sel.loc[f, "deviance"] / sel.loc["none", "deviance"])
                assert sel.loc[f, "gain_vs_covariates"] == pytest.approx(
                    sel.loc["none", "deviance_ratio"] - sel.loc[f, "deviance_ratio"])
            assert sel.loc["none", "vs_covariates"] == 1.0 and sel.loc["none", "gain_vs_covariates"] == 0.0
    # the spatial effect is real: embeddings beat covariates alone in the GLM
    pooled = r[(r["fold"] == "pooled") & (r["model"] == "glm")].set_index("features")
    assert pooled.loc["embeddings", "vs_covariates"] < 0.95
    # the covariates-only model beats exposure alone (age and zone carry signal)
    assert pooled.loc["none", "deviance_ratio"] < 0.98
    out = write_report(res, tmp_path / "rep", cfg=cfg, figures=False)
    md = (out / "report.md").read_text()
    assert "## Lift over covariates alone" in md and "| glm | covariates + embeddings |" in md
    recs = json.loads((out / "evaluation.json").read_text())
    assert all("vs_covariates" in x for x in recs)
    # without the covariates-only model there is no lift, and the report says how to get it
    cfg = cfg.model_copy(update={"features": ["coords"], "models": ["glm"]})
    res = run_evaluation(t, cfg)
    assert "vs_covariates" not in res.records
    md = (write_report(res, tmp_path / "rep2", cfg=cfg, figures=False) / "report.md").read_text()
    assert "Lift over" not in md and "no lift over covariates alone: add `none`" in md


# ---------------------------------------------------------------------------------------------- PCA in folds


def test_pca_is_fitted_inside_each_training_fold():
    t = make_risk_table(n=300, rate=2.0, seed=4, n_noise_emb=3)
    cfg = EvaluateConfig(target="y", exposure="exposure", covariates=["age"], features=["embeddings"], models=["glm"],
                         components=2, whiten=True, split={"kind": "random", "n_folds": 3})
    res = run_evaluation(t, cfg)
    emb = res.embedding_columns
    assert len(emb) == 6
    p = res.predictions
    y = res.table["y"].to_numpy()
    for f in np.unique(res.folds):
        tr = np.flatnonzero(res.folds != f)
        est = make_estimator("glm", "embeddings", cfg, emb).fit(res.table.iloc[tr], y[tr])
        pca = est.named_steps["pca"].pca_
        alone = PCA(2, whiten=True, svd_solver="full").fit(res.table.iloc[tr][emb].to_numpy(float))
        np.testing.assert_allclose(pca.mean_, alone.mean_, rtol=1e-12)
        np.testing.assert_allclose(np.abs(pca.components_), np.abs(alone.components_), rtol=1e-9, atol=1e-12)
        whole = res.table[emb].to_numpy(float).mean(axis=0)
        assert not np.allclose(pca.mean_, whole, rtol=0, atol=1e-6)  # not the whole table's
        te = p["fold"].to_numpy() == f
        mu = est.predict(res.table.iloc[p["row"].to_numpy()[te]])
        np.testing.assert_allclose(p.loc[te, "glm:embeddings"].to_numpy(), mu, rtol=1e-10)
    info = res.records.iloc[0]["info"]
    assert 0 < info["pca_explained_variance_ratio"] <= 1


def test_pca_needs_enough_columns():
    t = make_risk_table(n=100, seed=5, n_noise_emb=0)
    cfg = EvaluateConfig(target="y", features=["embeddings"], models=["glm"], components=5,
                         split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match="components is 5 but there are only 3 embedding columns"):
        run_evaluation(t, cfg)


def test_no_new_keys_keep_the_plain_estimators():
    cfg = EvaluateConfig(target="y", features=["embeddings"], models=["glm"])
    est = make_estimator("glm", "embeddings", cfg, ["emb_0", "emb_1"])
    assert type(est).__name__ == "GLMRegressor" and est.numeric == ["emb_0", "emb_1"]


# ---------------------------------------------------------------------------------------------- support


def _olinda_table(n: int, outside: float, seed: int = 6) -> pd.DataFrame:
    """A risk table over Olinda with the first ``outside`` share of rows moved ~100 km east."""
    t = make_risk_table(n=n, rate=2.0, seed=seed, bbox=OLINDA_BBOX, n_noise_emb=0)
    t = t.drop(columns=[c for c in t.columns if c.startswith("emb_")])
    k = int(round(outside * n))
    t.loc[: k - 1, "lon"] = t.loc[: k - 1, "lon"] + 0.9
    return t


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from geoembed.testing.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("b") / "bundle", out_of_support_km=2.0)


def _support_cfg(tmp_path, tiny_bundle, table, **extra) -> Path:
    return _write(tmp_path, {"target": "y", "exposure": "exposure", "bundle": str(tiny_bundle),
                             "features": ["none", "embeddings"], "models": ["glm"], "figures": False,
                             "split": {"kind": "random", "n_folds": 2}, "output": "rep", **extra}, table)


def test_most_rows_out_of_support_stop_the_run(tmp_path, tiny_bundle, capsys):
    cfg = _support_cfg(tmp_path, tiny_bundle, _olinda_table(120, 0.6))
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "72 of 120 rows (60.0%)" in err and str(tiny_bundle) in err and "t.parquet" in err
    assert "--allow-out-of-support" in err and "allow_out_of_support: true" in err and "Traceback" not in err
    assert not (tmp_path / "rep").exists()
    # going on: the report starts with a warning and states the count
    assert main(["evaluate", "-c", str(cfg), "--no-progress", "--allow-out-of-support"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.splitlines()[2].startswith("> **Warning: 60.0% of the rows (72 of 120) are out of the bundle's support")
    assert "out of the bundle's support: 72 of 120 rows (60.0%; more than 2 km" in md
    recs = json.loads((tmp_path / "rep" / "evaluation.json").read_text())
    assert all(r["n_out_of_support"] == 72 and r["out_of_support_share"] == pytest.approx(0.6) for r in recs)


def test_a_minority_out_of_support_is_reported_without_warning(tmp_path, tiny_bundle):
    cfg = _support_cfg(tmp_path, tiny_bundle, _olinda_table(120, 0.5))
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Warning" not in md and "out of the bundle's support: 60 of 120 rows (50.0%" in md
    # a stricter limit in the config stops it; the config key allows it
    cfg = _support_cfg(tmp_path, tiny_bundle, _olinda_table(120, 0.5), max_out_of_support_share=0.25)
    with pytest.raises(InputError, match=r"60 of 120 rows \(50.0%\).*max_out_of_support_share is 0.25"):
        ev = load_config(cfg).evaluate
        from geoembed.evaluate.core import make_embedder
        from geoembed.evaluate.tables import read_table

        run_evaluation(read_table(ev.table), ev, embedder=make_embedder(ev))
    cfg = _support_cfg(tmp_path, tiny_bundle, _olinda_table(120, 0.5), max_out_of_support_share=0.25,
                       allow_out_of_support=True)
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    assert "> **Warning: 50.0%" in (tmp_path / "rep" / "report.md").read_text()


def test_enriched_tables_flag_column_is_counted():
    t = make_risk_table(n=100, rate=2.0, seed=7)
    t["geoembed_out_of_support"] = pd.array([True] * 70 + [False] * 29 + [None], dtype="boolean")
    cfg = EvaluateConfig(target="y", exposure="exposure", features=["embeddings"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match=r"70 of 100 rows \(70.0%\).*column geoembed_out_of_support"):
        run_evaluation(t, cfg)
    res = run_evaluation(t, cfg.model_copy(update={"allow_out_of_support": True}))
    assert res.info["support"]["out_of_support"] == 70 and res.info["support"]["over_limit"]
    # the flag does not matter when no feature set uses the embeddings
    res = run_evaluation(t, cfg.model_copy(update={"features": ["coords"]}))
    assert res.info["support"] is None and "n_out_of_support" not in res.records
