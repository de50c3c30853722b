"""``geoembed evaluate -c CONFIG`` end to end, clear errors, and the real Olinda tracts (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from geoembed.cli import main
from geoembed.config import load_config
from geoembed.errors import ConfigError, InputError
from geoembed.evaluate import run_evaluation, write_report
from geoembed.evaluate.synthetic import make_risk_table

FAST = {"gbm": {"num_boost_round": 150, "learning_rate": 0.1, "early_stopping_rounds": 20},
        "gam": {"alpha": 1.0}}


def _write(tmp_path: Path, ev: dict, table: pd.DataFrame | None = None, name: str = "t.parquet") -> Path:
    if table is not None:
        if name.endswith(".csv"):
            table.to_csv(tmp_path / name, index=False)
        else:
            table.to_parquet(tmp_path / name)
    cfg = {"workdir": "run", "evaluate": {"table": name, **ev}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_command_end_to_end(tmp_path, capsys):
    t = make_risk_table(n=300, rate=3.0, seed=8).drop(columns=["true_mu"])
    cfg = _write(tmp_path, {"target": "y", "exposure": "exposure", "covariates": ["age"], "categorical": ["zone"],
                            "features": ["none", "coords", "embeddings"], "models": ["glm", "gam", "gbm"],
                            "split": {"kind": "spatial_block", "n_folds": 3, "block_method": "kmeans",
                                      "n_blocks": 12}, **FAST, "grid_size": 20}, t, name="t.csv")
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| glm | embeddings |" in out and "report written to" in out
    rep = tmp_path / "run" / "evaluation"
    recs = json.loads((rep / "evaluation.json").read_text())
    assert len(recs) == 9 * 4  # 3 models x 3 feature sets x (3 folds + pooled)
    need = {"model", "features", "split", "fold", "deviance_ratio", "deviance", "rmse", "mae", "gini",
            "n_train", "n_test"}
    assert all(need <= set(r) for r in recs)
    pooled = {(r["model"], r["features"]): r for r in recs if r["fold"] == "pooled"}
    for m in ("glm", "gam", "gbm"):
        assert pooled[(m, "embeddings")]["deviance_ratio"] < pooled[(m, "none")]["deviance_ratio"]
        assert len(pooled[(m, "embeddings")]["ae_by_decile"]) == 10
    # pooled deviance is the sum over folds
    folds = [r for r in recs if r["model"] == "glm" and r["features"] == "coords" and r["fold"] != "pooled"]
    assert sum(r["deviance"] for r in folds) == pytest.approx(pooled[("glm", "coords")]["deviance"], rel=1e-9)
    md = (rep / "report.md").read_text()
    assert "| gam | embeddings |" in md and "spatial effect of embeddings not drawn" in md
    for png in ("embedding_pca_rgb.png", "calibration.png", "spatial_effect.png"):
        assert (rep / png).stat().st_size > 5000 and (rep / png).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in rep.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


class FakeEmbedder:
    """Stands in for geoembed.enrich.LocationEmbedder: smooth functions of lon/lat as emb_* columns."""

    def __init__(self, bundle, lon_col="lon", lat_col="lat"):
        self.bundle, self.lon_col, self.lat_col = bundle, lon_col, lat_col
        self.bundle_fingerprint_ = "sha256:fake"

    def fit(self, X=None, y=None):
        self.fitted_ = True
        return self

    def transform(self, X):
        u = (X[self.lon_col].to_numpy() - 4.30) / 0.15
        v = (X[self.lat_col].to_numpy() - 50.80) / 0.10
        return pd.DataFrame({"emb_0": np.sin(2 * np.pi * u), "emb_1": np.cos(2 * np.pi * v),
                             "emb_2": u * v}, index=X.index)


def test_command_with_a_bundle_embeds_table_and_grid(tmp_path, monkeypatch):
    import geoembed.enrich

    monkeypatch.setattr(geoembed.enrich, "LocationEmbedder", FakeEmbedder, raising=False)
    (tmp_path / "bundle").mkdir()
    t = make_risk_table(n=400, rate=2.0, seed=9, n_noise_emb=0)
    t = t.drop(columns=[c for c in t.columns if c.startswith("emb_")])
    t["emb_0"] = 0.0  # stale columns are replaced by the bundle's
    cfg = _write(tmp_path, {"target": "y", "exposure": "exposure", "bundle": "bundle", "output": "rep",
                            "features": ["coords", "embeddings"], "models": ["glm", "gbm"],
                            "split": {"kind": "spatial_block", "n_folds": 3, "block_method": "h3",
                                      "h3_resolution": 8}, **FAST, "grid_size": 25}, t)
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    recs = json.loads((tmp_path / "rep" / "evaluation.json").read_text())
    assert all(r["bundle_fingerprint"] == "sha256:fake" for r in recs)
    pooled = {(r["model"], r["features"]): r["deviance_ratio"] for r in recs if r["fold"] == "pooled"}
    assert pooled[("glm", "embeddings")] < pooled[("glm", "coords")]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "not drawn" not in md and "sha256:fake" in md


@pytest.mark.parametrize("family,link,target_fix,match", [
    ("poisson", "log", lambda t: t.assign(y=t.y - 5), r"must be >= 0 for family 'poisson'; negative in rows"),
    ("gamma", "log", lambda t: t.assign(y=t.y * 0), r"must be > 0 for family 'gamma'"),
    ("binomial", "logit", lambda t: t.assign(y=t.y + 2), r"must be 0 or 1 for family 'binomial'"),
])
def test_invalid_targets_are_named(family, link, target_fix, match):
    from geoembed.config.evaluate import EvaluateConfig

    t = target_fix(make_risk_table(n=60, seed=1))
    cfg = EvaluateConfig(table="x", target="y", family=family, link=link, features=["none"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match=match):
        run_evaluation(t, cfg)


def test_input_errors_name_columns_and_rows():
    from geoembed.config.evaluate import EvaluateConfig

    t = make_risk_table(n=60, seed=1)
    base = dict(table="x", target="y", features=["coords"], models=["glm"], split={"kind": "random", "n_folds": 2})
    with pytest.raises(InputError, match=r"evaluate.exposure: \['expo'\]"):
        run_evaluation(t, EvaluateConfig(**base, exposure="expo"))
    with pytest.raises(InputError, match=r"evaluate.covariates: \['income'\]"):
        run_evaluation(t, EvaluateConfig(**base, covariates=["income"]))
    bad = t.copy()
    bad.loc[[3, 7], "exposure"] = [0.0, -1.0]
    with pytest.raises(InputError, match=r"exposure 'exposure' must be > 0; non-positive in rows 3, 7"):
        run_evaluation(bad, EvaluateConfig(**base, exposure="exposure"))
    with pytest.raises(InputError, match="no emb_<k> columns"):
        run_evaluation(t.drop(columns=[c for c in t if c.startswith("emb_")]),
                       EvaluateConfig(**{**base, "features": ["embeddings"]}))
    nan = t.copy()
    nan.loc[5, "lat"] = np.nan
    with pytest.raises(InputError, match=r"latitude column 'lat' has missing or non-numeric values in rows 5"):
        run_evaluation(nan, EvaluateConfig(**base))


def test_config_errors_name_the_key(tmp_path):
    t = make_risk_table(n=30, seed=1)
    with pytest.raises(ConfigError, match=r"evaluate.link 'logit' is not supported with evaluate.family 'poisson'"):
        load_config(_write(tmp_path, {"target": "y", "link": "logit"}, t))
    with pytest.raises(ConfigError, match=r"needs the log link"):
        load_config(_write(tmp_path, {"target": "y", "family": "gaussian", "exposure": "exposure"}, t))
    with pytest.raises(ConfigError, match=r"evaluate.family"):
        load_config(_write(tmp_path, {"target": "y", "family": "negbin"}, t))
    with pytest.raises(ConfigError, match=r"evaluate.modles: unknown key"):
        load_config(_write(tmp_path, {"target": "y", "modles": ["glm"]}, t))
    cfg = load_config(_write(tmp_path, {"target": "y"}, t))
    assert Path(cfg.evaluate.table).is_absolute() and cfg.evaluate.resolved_link == "log"


def test_command_reports_errors_without_traceback(tmp_path, capsys):
    t = make_risk_table(n=40, seed=1)
    cfg = _write(tmp_path, {"target": "claims"}, t)
    assert main(["evaluate", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "evaluate.target: ['claims']" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_write_report_is_atomic_on_failure(tmp_path, monkeypatch):
    from geoembed.config.evaluate import EvaluateConfig
    from geoembed.evaluate import report

    t = make_risk_table(n=120, rate=2.0, seed=2)
    cfg = EvaluateConfig(table="x", target="y", exposure="exposure", features=["none"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    res = run_evaluation(t, cfg)
    out = write_report(res, tmp_path / "rep", cfg=cfg, figures=False)
    before = (out / "evaluation.json").read_text()
    monkeypatch.setattr(report, "render_markdown", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(res, tmp_path / "rep", cfg=cfg, figures=False)
    assert (out / "evaluation.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def _olinda_geoparquet(tmp_path: Path) -> Path:
    """The real tracts as GeoParquet (polygons, lon/lat degrees) with area_km2 computed in UTM 25S."""
    import geopandas as gpd

    path = Path(__file__).resolve().parents[1] / "data" / "olinda" / "olinda1.shp"
    if not path.exists():
        pytest.skip(f"{path} not present")
    g = gpd.read_file(path)
    g["area_km2"] = g.to_crs(31985).area / 1e6
    out = tmp_path / "olinda.parquet"
    g[["V014", "area_km2", "TIPO", "geometry"]].to_parquet(out)
    return out


def reference(name: str) -> dict:
    """A reference file of tests/reference/ (values, tolerances, and how and where they were measured)."""
    return json.loads((Path(__file__).parent / "reference" / f"{name}.json").read_text())


@pytest.mark.slow
def test_olinda_coordinates_under_spatial_block_cv(tmp_path, capsys):
    """Residents per tract (Poisson, exposure = area): the command on GeoParquet polygons, lon/lat from
    centroids. Reference (shared/data/README.md): 1.09 (GLM) / 0.85 (LightGBM) with lon/lat alone; this
    setup's measured values are in tests/reference/olinda_coords_evaluate.json."""
    _olinda_geoparquet(tmp_path)
    cfg = _write(tmp_path, {"target": "V014", "exposure": "area_km2", "features": ["coords"],
                            "models": ["glm", "gbm"], "figures": False,
                            "split": {"kind": "spatial_block", "n_folds": 5, "block_method": "kmeans"},
                            # LightGBM's own trees, as the data README's reference figure
                            "gbm": {"early_stopping": False, "num_boost_round": 100, "extra_trees": False}},
                   name="olinda.parquet")
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    recs = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    pooled = {r["model"]: r for r in recs if r["fold"] == "pooled"}
    assert pooled["glm"]["n_test"] == 470
    ref = reference("olinda_coords_evaluate")
    got = {m: round(pooled[m]["deviance_ratio"], 4) for m in ("glm", "gbm")}
    for m, want in ref["values"].items():
        assert got[m] == pytest.approx(want, abs=ref["tolerance"][m]), (got, ref["values"])


@pytest.mark.slow
def test_command_with_a_real_bundle_on_olinda(tmp_path):
    """The real bundle path: a tiny random-weight bundle over Olinda, each tract embedded as the mean over
    points sampled in it (evaluate.points_per_polygon, default 1000)."""
    import shapely
    import torch

    from geoembed.io.bundle import build_coordinate_encoder, save_bundle

    spec = {"encodings": [{"type": "local_multiscale", "center_lon": -34.87, "center_lat": -7.995,
                           "min_wavelength_m": 300.0, "max_wavelength_m": 20000.0, "n_scales": 4,
                           "n_directions": 2}],
            "network": {"type": "mlp", "hidden": [16]}, "embedding_dim": 4}
    torch.manual_seed(1)
    enc = build_coordinate_encoder(spec)
    save_bundle(tmp_path / "bundle", enc, enc.spec, footprint=shapely.box(-34.917, -8.041, -34.826, -7.950),
                out_of_support_km=2.0, config={}, metrics={}, data_fingerprint="test")
    _olinda_geoparquet(tmp_path)
    cfg = _write(tmp_path, {"target": "V014", "exposure": "area_km2", "bundle": "bundle",
                            "features": ["coords", "embeddings"], "models": ["glm", "gbm"], "grid_size": 20,
                            "split": {"kind": "spatial_block", "n_folds": 3, "block_method": "kmeans"},
                            **FAST}, name="olinda.parquet")
    assert main(["evaluate", "-c", str(cfg), "--no-progress"]) == 0
    rep = tmp_path / "run" / "evaluation"
    recs = json.loads((rep / "evaluation.json").read_text())
    fps = {r.get("bundle_fingerprint") for r in recs}
    assert len(fps) == 1 and str(fps.pop()).startswith("sha256:")
    assert {r["features"] for r in recs} == {"coords", "embeddings"}
    md = (rep / "report.md").read_text()
    assert "embedding columns: 4" in md and "not drawn" not in md and "failed" not in md
