"""The notebooks: saved clean, and executed end to end on the real data in data/ (nbclient).

01 and 02 run on North Carolina's counties (data/nc_sids) with GeoCLIP imported as a bundle (01 imports it
itself; 02 gets one imported here); 03 builds and trains a small bundle on the Olinda kit. Each notebook prints
one ``GEOEMBED_RESULTS {json}`` line (also written to results.json), which the tests check.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NC = ROOT / "data" / "nc_sids" / "nc.gpkg"
MARKER = "GEOEMBED_RESULTS "
NAMES = ["01_enrich_and_price", "02_territories", "03_train_your_region"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_saved_without_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    text = "\n".join(c.source for c in nb.cells)
    assert "GEOEMBED_NOTEBOOK_OUT" in text and MARKER.strip() in text and "find_repo_root" in text
    assert "simulated" not in text.replace("Nothing here is simulated", "")  # real data only


def test_only_the_notebooks_are_in_the_folder():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES


@pytest.fixture(scope="module")
def geoclip_nc(tmp_path_factory) -> Path:
    """GeoCLIP imported with an 8-component PCA over North Carolina, as notebook 01 does."""
    from geoembed.importers.geoclip import import_geoclip
    from geoembed.importers.reduce import ReductionRequest

    out = tmp_path_factory.mktemp("geoclip") / "geoclip_nc"
    return import_geoclip(out, reduction=ReductionRequest(n_components=8, polygon=str(NC), n=2000, seed=0))


def _run(name: str, tmp_path: Path, monkeypatch, **env: str) -> tuple[dict, list, Path]:
    """Execute a notebook as a user would (its folder as working directory); returns (results, outputs, out)."""
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "out"
    monkeypatch.setenv("GEOEMBED_NOTEBOOK_OUT", str(out))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend, as for a user
    monkeypatch.setenv("GEOEMBED_NO_PROGRESS", "1")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(MARKER))
    res = json.loads(line[len(MARKER):])
    assert res == json.loads((out / "results.json").read_text())
    for fig in res["figures"]:
        assert (out / fig).stat().st_size > 5000, fig
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(res["figures"])
    return res, outputs, out


def _finite(d: dict, keys) -> None:
    for k in keys:
        assert math.isfinite(d[k]), (k, d)


@pytest.mark.slow
def test_notebook_01_prices_nc_counties(tmp_path, monkeypatch):
    bundle = tmp_path / "geoclip_nc"  # missing: the notebook imports GeoCLIP itself
    res, _, out = _run("01_enrich_and_price", tmp_path, monkeypatch, GEOEMBED_GEOCLIP_BUNDLE=str(bundle))
    assert (bundle / "geoembed.json").is_file()

    # the real counts (Cressie 1993, as shipped by sf)
    assert res["n_counties"] == 100
    assert res["deaths"] == {"1974-78": 667, "1979-84": 836}
    assert res["births"] == {"1974-78": 329962, "1979-84": 422392}
    assert res["embedding_dim"] == 8 and res["points_per_county"] == 50
    assert res["enriched_points"] == [50, 50] and res["n_out_of_support"] == 0

    # the rating factor per period: a Poisson GLM with offset, refitted here by hand (IRLS on 2 columns)
    import geopandas as gpd

    g = gpd.read_file(NC)
    for label, p in (("1974-78", "74"), ("1979-84", "79")):
        y, e = g[f"SID{p}"].to_numpy(float), g[f"BIR{p}"].to_numpy(float)
        X = np.c_[np.ones(len(g)), g[f"NWBIR{p}"] / e]
        b = np.array([np.log(y.sum() / e.sum()), 0.0])
        for _ in range(50):
            mu = e * np.exp(X @ b)
            b = b + np.linalg.solve(X.T @ (mu[:, None] * X), X.T @ (y - mu))
        f = res["factor_by_period"][label]
        assert f["coef"] == pytest.approx(b[1], abs=1e-5)
        assert f["ci_low"] < f["relativity_per_10pt"] < f["ci_high"]

    # out of time: every tariff scored on 1979-84 against the same flat tariff
    oot = res["out_of_time"]
    assert set(oot) == {"flat", "factor only", "factor + coords", "factor + 8 embedding components"}
    assert oot["flat"]["deviance_ratio"] == pytest.approx(1.0)
    assert oot["factor only"]["delta_vs_factor_only"] == 0 and oot["factor only"]["delta_se"] == 0
    nulls = {v["null_deviance"] for v in oot.values()}
    assert len(nulls) == 1
    null = nulls.pop()
    assert math.isfinite(null) and null > 0
    for rec in oot.values():
        _finite(rec, ("deviance", "deviance_ratio", "gini", "in_time_deviance_ratio", "a_over_e", "delta_se"))
        assert rec["deviance_ratio"] == pytest.approx(rec["deviance"] / null)
        assert rec["delta_vs_factor_only"] == pytest.approx(rec["deviance"] - oot["factor only"]["deviance"])
        assert 0 < rec["deviance_ratio"] < 3 and 0.8 < rec["a_over_e"] < 1.2
    # nested models fitted on 1974-78: more columns never fit the same data worse
    base = oot["factor only"]["in_time_deviance_ratio"]
    assert oot["factor + 8 embedding components"]["in_time_deviance_ratio"] <= base + 1e-9
    assert oot["factor + coords"]["in_time_deviance_ratio"] <= base + 1e-9

    # spatial cross-validation with the factor as covariate
    cv = res["spatial_cv"]
    assert cv["split"].startswith("spatial_block(grid 100000 m")
    assert set(cv["pooled"]) == {f"{m}:{f}" for m in ("glm", "gam") for f in ("none", "coords", "embeddings")}
    for key, rec in cv["pooled"].items():
        _finite(rec, ("deviance_ratio", "gini", "deviance"))
        assert 0.2 < rec["deviance_ratio"] < 3, key
    assert len(cv["lift"]) == 4
    for row in cv["lift"]:
        assert row["vs covariates"] == pytest.approx(row["deviance_ratio"] / row["covariates only"], rel=1e-6)
    assert set(cv["glm_embeddings_by_components"]) == {"2", "4", "8"}
    assert cv["glm_embeddings_by_components"]["8"]["deviance_ratio"] == pytest.approx(
        cv["pooled"]["glm:embeddings"]["deviance_ratio"])

    assert res["spatial_effect_weighted_mean_relativity"] == pytest.approx(1.0, abs=1e-9)
    assert all(-1 <= v <= 1 for v in res["correlations"].values()) and len(res["correlations"]) == 3
    assert set(res["figures"]) == {"observed_rates.png", "embedding_rgb.png", "residuals_and_effect.png"}
    enriched = gpd.read_parquet(out / "nc_enriched.parquet")
    assert len(enriched) == 100 and {f"emb_{i}" for i in range(8)} <= set(enriched.columns)
    assert {"evaluation.json", "report.md"} <= {p.name for p in (out / "evaluation").iterdir()}


@pytest.mark.slow
def test_notebook_02_territory_plan(geoclip_nc, tmp_path, monkeypatch):
    res, _, out = _run("02_territories", tmp_path, monkeypatch, GEOEMBED_GEOCLIP_BUNDLE=str(geoclip_nc))
    assert res["k"] == 5 and res["n_counties"] == 100
    terr = res["territories"]
    assert [t["territory"] for t in terr] == [1, 2, 3, 4, 5]
    assert sum(t["rows"] for t in terr) == 100
    assert sum(t["exposure"] for t in terr) == 329962 and sum(t["claims"] for t in terr) == 667
    e = np.array([t["exposure"] for t in terr])
    fitted = np.array([t["fitted_relativity"] for t in terr])
    assert np.sum(e * fitted) / e.sum() == pytest.approx(1.0, abs=1e-9)
    assert res["weighted_mean_fitted_relativity"] == pytest.approx(1.0, abs=1e-9)
    base = [t for t in terr if t["base"]]
    assert len(base) == 1 and base[0]["relativity"] == pytest.approx(1.0)
    assert base[0]["exposure"] == e.max()
    assert res["contiguous"] is True
    assert len(res["territory_of_county"]) == 100 and set(res["territory_of_county"].values()) == {1, 2, 3, 4, 5}

    cred = res["credibility"]
    assert cred["alpha"] in cred["alphas"] and cred["min"] < 1 < cred["max"]
    oot = res["out_of_time"]
    assert set(oot) == {"flat", "factor only", "factor + county credibility", "factor + territories",
                        "factor + embeddings"}
    assert oot["flat"]["deviance_ratio"] == pytest.approx(1.0)
    for rec in oot.values():
        _finite(rec, ("deviance", "deviance_ratio", "gini", "in_time_deviance_ratio", "delta_se"))
        assert rec["null_deviance"] == pytest.approx(oot["flat"]["deviance"])
        assert rec["delta_vs_factor_only"] == pytest.approx(rec["deviance"] - oot["factor only"]["deviance"])
    # the penalised county factor contains the factor-only model (all levels 0): it fits 1974-78 no worse
    assert oot["factor + county credibility"]["in_time_deviance_ratio"] <= oot["factor only"]["in_time_deviance_ratio"]
    nxt = res["next_period"]
    assert sum(r["deaths 1979-84"] for r in nxt) == 836 and sum(r["births 1979-84"] for r in nxt) == 422392
    for r in nxt:
        _finite(r, ("A/E 1974-78", "A/E 1979-84", "fitted 1974-78"))
    assert -1 <= res["rank_corr"] <= 1

    report = out / "report"
    assert {"territories.csv", "territories.json", "territories.html", "territory_rows.csv", "report.md"} <= set(
        res["report_files"])
    html = (report / "territories.html").read_text()
    assert "territories" in html and "FeatureCollection" in html
    assert "## Territories" in (report / "report.md").read_text()


@pytest.mark.slow
def test_notebook_03_trains_a_region_and_enriches(tmp_path, monkeypatch):
    res, _, out = _run("03_train_your_region", tmp_path, monkeypatch)
    assert res["n_locations"] == 1500 and res["views"] == ["landsat", "dem"]
    assert res["embedding_dim"] == 8 and res["out_of_support_km"] > 0
    assert (out / "run" / "bundle" / "geoembed.json").is_file()
    # the tract centroids are in support; the three far addresses are flagged, with their distances
    assert res["portfolio_rows"] == 473
    assert res["out_of_support"] == ["RECIFE-AIRPORT", "BRASILIA", "LISBON"]
    km = res["support_km"]
    assert res["out_of_support_km"] < km["RECIFE-AIRPORT"] < 50
    assert 1000 < km["BRASILIA"] < 2500 and 5000 < km["LISBON"] < 7000
    assert res["max_diff_transformer_vs_enrich"] < 1e-5 and res["n_nonfinite_in_support"] == 0
    assert set(res["figures"]) == {"locations.png", "portfolio_embedding_rgb.png"}
    import pandas as pd

    enriched = pd.read_parquet(out / "portfolio_enriched.parquet")
    assert len(enriched) == 473 and {"policy_id", "sum_insured", "emb_7", "geoembed_out_of_support"} <= set(enriched)


def test_notebook_02_refuses_a_bundle_of_another_region(bundle_path, tmp_path, monkeypatch):
    """A bundle found at the notebook's path that is not GeoCLIP over North Carolina is an error saying so."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("GEOEMBED_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GEOEMBED_GEOCLIP_BUNDLE", str(bundle_path))  # a tiny Olinda bundle
    nb = nbformat.read(NOTEBOOKS / "02_territories.ipynb", as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(NOTEBOOKS)}})
    with pytest.raises(CellExecutionError, match="is not GeoCLIP reduced to 8 components over nc.gpkg"):
        client.execute()
    assert not (tmp_path / "out" / "results.json").exists()
