"""Territories and relativities (geoembed.evaluate.territories): exact recovery of a piecewise-constant
spatial effect, contiguity on neighbour graphs, credibility shrinkage of a thin region, and the report
with its folium map on the real Olinda tracts."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from pydantic import ValidationError

from geoembed.config.evaluate import EvaluateConfig, TerritoriesConfig
from geoembed.evaluate import GLMRegressor, run_evaluation, write_report
from geoembed.evaluate.territories import (
    RegionFactorGLM,
    is_connected_within,
    make_territories,
    neighbour_graph,
    optimal_bins,
    spatial_effect,
    territory_table,
)

OLINDA = Path(__file__).resolve().parents[1] / "data" / "olinda" / "olinda1.shp"


def _pieces(n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Points whose log-rate is piecewise constant in three vertical bands (-0.5, 0, 0.6 by longitude)."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-35.0, -34.9, n)
    lat = rng.uniform(-8.1, -8.0, n)
    zone = np.digitize(lon, [-34.9667, -34.9333])
    beta = np.array([-0.5, 0.0, 0.6])
    expo = rng.uniform(0.5, 2.0, n)
    y = rng.poisson(expo * 2.0 * np.exp(beta[zone]))
    t = pd.DataFrame({"lon": lon, "lat": lat, "z1": (zone == 1) * 1.0, "z2": (zone == 2) * 1.0,
                      "expo": expo, "y": y})
    return t, zone


def test_optimal_bins_are_the_weighted_jenks_optimum():
    x = np.r_[np.full(5, 1.0), np.full(3, 5.0), np.full(4, 9.0), [1.2, 4.8, 9.1]]
    lab = optimal_bins(x, 3)
    assert list(lab) == [0] * 5 + [1] * 3 + [2] * 4 + [0, 1, 2]
    # brute force on a small random set: the DP's within-class SSE is the minimum over all 2-cut splits
    rng = np.random.default_rng(1)
    v, w = np.sort(rng.normal(size=12)), rng.uniform(0.1, 3, 12)

    def sse(lab):
        return sum(np.sum(w[lab == c] * (v[lab == c] - np.average(v[lab == c], weights=w[lab == c])) ** 2)
                   for c in np.unique(lab))

    best = min(sse(np.searchsorted([v[i], v[j]], v, side="right")) for i in range(11) for j in range(i + 1, 11))
    assert sse(optimal_bins(v, 3, w)) == pytest.approx(best, rel=1e-12)
    # pooled path (more values than max_points) still gives ordered classes
    big = rng.normal(size=5000)
    lab = optimal_bins(big, 4, max_points=200)
    assert set(lab) == {0, 1, 2, 3} and all(big[lab == c].max() <= big[lab == c + 1].min() for c in range(3))


def test_territories_recover_a_piecewise_constant_effect():
    t, zone = _pieces()
    glm = GLMRegressor(exposure="expo", numeric=["z1", "z2"]).fit(t, t["y"])
    eff = spatial_effect(glm, t, ["z1", "z2"], "expo")
    assert np.sum(t["expo"] * np.exp(eff)) / t["expo"].sum() == pytest.approx(1.0, rel=1e-12)
    lab = make_territories(eff, 3, t["expo"].to_numpy())
    assert (lab == zone).all()  # the pieces, numbered by ascending relativity
    terr = territory_table(lab, eff, t["y"].to_numpy(float), t["expo"].to_numpy())
    # Poisson with a full factor: fitted = observed relativity per territory (score equations)
    np.testing.assert_allclose(terr["fitted_relativity"], terr["observed_relativity"], rtol=1e-5)
    true = np.exp([-0.5, 0.0, 0.6])
    e = t["expo"].to_numpy()
    true_rel = true / (np.sum(e * true[zone]) / e.sum())
    np.testing.assert_allclose(terr["fitted_relativity"], true_rel, rtol=0.08)
    base = terr.index[terr["base"]][0]
    assert terr.loc[base, "relativity"] == 1.0 and terr.loc[base, "exposure"] == terr["exposure"].max()
    assert terr["exposure"].sum() == pytest.approx(e.sum()) and terr["claims"].sum() == t["y"].sum()


def test_gbm_effect_recovers_the_pieces():
    """Any estimator works through predictions: the GBM's effect of the zone indicators is piecewise constant."""
    from geoembed.evaluate import GBMRegressor

    t, zone = _pieces()
    gbm = GBMRegressor(exposure="expo", numeric=["z1", "z2"], num_boost_round=200, learning_rate=0.1,
                       early_stopping=False).fit(t, t["y"])
    eff = spatial_effect(gbm, t, ["z1", "z2"], "expo")
    assert len(np.unique(np.round(eff, 12))) == 3
    assert (make_territories(eff, 3, t["expo"].to_numpy()) == zone).all()


def test_contiguous_territories_are_connected_on_points_and_polygons():
    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(0, 0.2, 400), rng.uniform(0, 0.2, 400)
    lon[:40] += 1.0  # an island far away: joined to the rest by its closest pair
    eff = np.sin(lon * 30) + rng.normal(0, 0.2, 400)
    g = neighbour_graph(lon, lat, n_neighbours=5)
    from scipy.sparse import csgraph

    assert csgraph.connected_components(g, directed=False)[0] == 1
    assert (g != g.T).nnz == 0
    lab = make_territories(eff, 6, contiguous=True, graph=g)
    assert set(lab) == set(range(6)) and is_connected_within(lab, g)
    # the binned territories of the same noisy effect are not contiguous: the check can fail
    assert not is_connected_within(make_territories(eff, 6), g)
    # a 12 x 12 grid of unit-ish squares: touching polygons (queen adjacency)
    xs, ys = np.meshgrid(np.arange(12) * 0.01, np.arange(12) * 0.01)
    boxes = [shapely.box(x, y, x + 0.01, y + 0.01) for x, y in zip(xs.ravel(), ys.ravel(), strict=True)]
    gp = neighbour_graph(xs.ravel() + 0.005, ys.ravel() + 0.005, geometry=boxes)
    deg = np.asarray(gp.sum(axis=1)).ravel()
    assert deg.min() == 3 and deg.max() == 8  # corner and interior squares
    eff = np.hypot(xs.ravel() - 0.06, ys.ravel() - 0.06) + rng.normal(0, 0.01, 144)
    lab = make_territories(eff, 4, contiguous=True, graph=gp)
    assert is_connected_within(lab, gp)
    means = [eff[lab == c].mean() for c in range(4)]
    assert means == sorted(means)


def test_credibility_shrinks_a_thin_region_towards_one():
    rng = np.random.default_rng(5)
    true = rng.normal(0.0, 0.3, 20)  # 20 well-exposed regions, log relativities sd 0.3
    region = np.r_[np.repeat([f"r{i:02d}" for i in range(20)], 200), ["thin"]]
    expo = np.r_[np.full(4000, 1.0), [0.1]]
    mu = expo * np.exp(np.r_[np.repeat(true, 200), [0.0]])
    y = rng.poisson(mu).astype(float)
    y[-1] = 2.0  # the thin region shows a rate of 20 per unit on 0.1 exposure
    t = pd.DataFrame({"region": region, "expo": expo})
    cred = RegionFactorGLM(region="region", exposure="expo").fit(t, y)
    free = RegionFactorGLM(region="region", exposure="expo", alpha=1e-9).fit(t, y)
    # without credibility each region takes its own experience exactly (Poisson score equations)
    obs = pd.Series(y).groupby(region).sum() / pd.Series(expo).groupby(region).sum()
    np.testing.assert_allclose(free.glm_.intercept_ + free.region_coef_[obs.index], np.log(obs), atol=1e-3)
    port = cred.glm_.intercept_
    obs_rel = np.log(obs) - port  # observed log relativities against the credibility model's base level
    z = cred.region_coef_[obs.index] / obs_rel  # the credibility factor each region got
    assert obs_rel["thin"] > 2.5 and 0 <= z["thin"] < 0.2  # shrunk nearly all the way to relativity 1
    big = z.drop("thin")
    assert big[obs_rel.drop("thin").abs() > 0.1].min() > 0.8  # the well-exposed regions keep theirs
    assert 1e-7 < cred.alpha_ < 10 and cred.alpha_ in cred.cv_deviance_
    mu_new = cred.predict(pd.DataFrame({"region": ["unseen"], "expo": [2.0]}))  # an unseen region: base level
    assert mu_new[0] == pytest.approx(2.0 * np.exp(port))


def test_territories_config_is_strict_and_off_by_default():
    assert EvaluateConfig(target="y").territories is None
    assert EvaluateConfig(target="y", territories={"k": 4, "contiguous": True}).territories.k == 4
    for bad in ({"k": "5"}, {"k": 1}, {"model": "xgb"}, {"kk": 3}, {"contiguous": "yes"}):
        with pytest.raises(ValidationError):
            TerritoriesConfig(**bad)


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def test_olinda_report_with_territories_and_map(tmp_path):
    """The real tracts (polygons; lon/lat their centroids, exposure the area): GAM on coordinates, five
    contiguous territories on touching tracts, the neighbourhood (bairro) credibility baseline, the map."""
    import geopandas as gpd

    g = gpd.read_file(OLINDA)
    g["area_km2"] = g.to_crs(31985).area / 1e6
    g = g.rename(columns={"NM_BAIR": "bairro"})
    path = tmp_path / "olinda.parquet"
    g[["V014", "area_km2", "bairro", "geometry"]].to_parquet(path)
    from geoembed.evaluate.tables import read_table

    table = read_table(path)
    cfg = EvaluateConfig(table=str(path), target="V014", exposure="area_km2", features=["none", "coords"],
                         models=["glm", "gam"], gam={"alpha": 1.0, "tensor_df": 5},
                         split={"kind": "spatial_block", "n_folds": 3, "block_method": "kmeans", "n_blocks": 12},
                         territories={"k": 5, "contiguous": True, "model": "gam", "region_col": "bairro",
                                      "credibility_alphas": [1e-5, 1e-3, 1e-1]},
                         grid_size=20)
    res = run_evaluation(table, cfg)
    out = write_report(res, tmp_path / "report", cfg=cfg)
    md = (out / "report.md").read_text()
    assert "## Territories" in md and "region (credibility GLM)" in md and "territories.html" in md
    terr = pd.read_csv(out / "territories.csv")
    assert len(terr) == 5 and terr["rows"].sum() == len(table)
    assert terr["exposure"].sum() == pytest.approx(table["area_km2"].sum())
    assert terr["fitted_relativity"].is_monotonic_increasing
    rows = pd.read_csv(out / "territory_rows.csv")
    geom = gpd.read_parquet(path).geometry.to_crs(4326)
    graph = neighbour_graph(table["lon"], table["lat"], geometry=geom)
    assert is_connected_within(rows["territory"].to_numpy(), graph)
    summary = json.loads((out / "territories.json").read_text())
    base = [r for r in summary["region_baseline"] if r["fold"] == "pooled"][0]
    assert 0 < base["deviance_ratio"] < 1  # neighbourhoods explain density better than the area alone
    assert (out / "gam_smooths.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "territories.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    p = _Checker()
    p.feed(html)
    assert {"html", "head", "body", "script"} <= set(p.tags)
    assert "tileLayer" not in html  # no tile server: the file is complete offline
    terr_features = re.findall(r'"fitted_relativity": [0-9.]+, "relativity": [0-9.]+, "territory": (\d+)\}', html)
    assert sorted(int(k) for k in terr_features) == [1, 2, 3, 4, 5]
    assert html.count('"relativity"') >= len(table)


def test_report_unchanged_without_territories(tmp_path):
    t, _ = _pieces(n=300)
    cfg = EvaluateConfig(target="y", exposure="expo", features=["coords"], models=["glm"],
                         split={"kind": "random", "n_folds": 2})
    out = write_report(run_evaluation(t, cfg), tmp_path / "r", cfg=cfg, figures=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "evaluation.json", "report.md"]
    assert "Territories" not in (out / "report.md").read_text()


def test_gam_effect_is_its_spatial_terms_and_points_map(tmp_path):
    """On embeddings, the GAM's spatial effect is exactly its smooths' contribution (centred); binned
    territories of points, one smooth panel per component, the map with MultiPoint territories."""
    from geoembed.evaluate import GAMRegressor
    from geoembed.evaluate.synthetic import make_risk_table

    t = make_risk_table(n=400, rate=3.0, seed=2).drop(columns=["true_mu"])
    emb = [f"emb_{i}" for i in range(5)]
    gam = GAMRegressor(exposure="exposure", numeric=["age"], smooth=emb, alpha=1.0).fit(t, t["y"])
    eff = spatial_effect(gam, t, emb, "exposure")
    n_lin = len(gam.coef_) - sum(s.dim_basis for s in gam.smooths_)
    terms = np.hstack([s.transform(t) for s in gam.smooths_]) @ gam.coef_[n_lin:]
    e = t["exposure"].to_numpy()
    np.testing.assert_allclose(eff, terms - np.log(np.sum(e * np.exp(terms)) / e.sum()), atol=1e-10)

    cfg = EvaluateConfig(target="y", exposure="exposure", covariates=["age"], features=["none", "embeddings"],
                         models=["gam"], gam={"alpha": 1.0}, split={"kind": "random", "n_folds": 3},
                         territories={"k": 4, "region_col": "region", "credibility_alphas": [1e-4, 1e-2]})
    out = write_report(run_evaluation(t, cfg), tmp_path / "r", cfg=cfg, figures=False)
    terr = pd.read_csv(out / "territories.csv")
    assert (terr["effect_max"].to_numpy()[:-1] <= terr["effect_min"].to_numpy()[1:]).all()  # 1-D bins
    assert (out / "gam_smooths.png").stat().st_size > 5000
    html = (out / "territories.html").read_text()
    assert html.count('"type": "MultiPoint"') == 4 and html.count('"type": "Point"') == len(t)
    md = (out / "report.md").read_text()
    assert "1-D optimal" in md and "| region (credibility GLM) | region |" in md


def test_territory_errors_are_clear(tmp_path):
    t, _ = _pieces(n=200)
    glm = GLMRegressor(exposure="expo", numeric=["z1", "z2"]).fit(t, t["y"])
    from geoembed.errors import ConfigError, InputError

    with pytest.raises(InputError, match="lacks spatial column"):
        spatial_effect(glm, t, ["emb_0"], "expo")
    cfg = EvaluateConfig(target="y", exposure="expo", features=["coords"], models=["glm"],
                         split={"kind": "random", "n_folds": 2}, territories={"model": "glm", "region_col": "zip"})
    res = run_evaluation(t, cfg)
    with pytest.raises(InputError, match="region_col 'zip' is not a column"):
        write_report(res, tmp_path / "r", cfg=cfg, figures=False)
    assert not (tmp_path / "r").exists()  # nothing half-written
    cfg.territories.region_col, cfg.territories.features = None, "embeddings"
    with pytest.raises(ConfigError, match="needs embedding columns"):
        write_report(res, tmp_path / "r", cfg=cfg, figures=False)


def test_command_on_nc_counties_contiguous(tmp_path, capsys):
    """``geoembed evaluate`` on the NC counties (.gpkg): contiguous territories on touching counties."""
    import geopandas as gpd
    import yaml

    from geoembed.cli import main

    gpkg = Path(__file__).resolve().parents[1] / "data" / "nc_sids" / "nc.gpkg"
    cfg = {"workdir": "run", "evaluate": {
        "table": str(gpkg), "target": "SID79", "exposure": "BIR79", "features": ["coords"], "models": ["glm"],
        "split": {"kind": "random", "n_folds": 3}, "figures": False,
        "territories": {"k": 4, "contiguous": True, "model": "glm"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", "-c", str(tmp_path / "c.yaml"), "--no-progress", "--no-figures"]) == 0
    rep = tmp_path / "run" / "evaluation"
    assert "touching-polygon graph" in (rep / "report.md").read_text()
    g = gpd.read_file(gpkg)
    from geoembed.evaluate.tables import read_table

    t = read_table(gpkg)
    lab = pd.read_csv(rep / "territory_rows.csv")["territory"].to_numpy()
    assert sorted(set(lab)) == [1, 2, 3, 4]
    assert is_connected_within(lab, neighbour_graph(t["lon"], t["lat"], geometry=g.geometry.to_crs(4326)))
    assert (rep / "territories.html").read_text().count('"type": "Feature"') >= 100 + 4
