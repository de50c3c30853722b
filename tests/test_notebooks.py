"""The notebooks: saved clean, and executed end to end against a small bundle trained here on the Olinda kit.

Also the synthetic policy table they use (geoembed.testing.policies): deterministic, inside the tracts, and
its covariates equal a hand reading of the rasters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_enrich_and_price.ipynb"
TINY = ROOT / "configs" / "tiny.yaml"
MARKER = "GEOEMBED_RESULTS "


# ------------------------------------------------------------------------------------ policy table


def test_policies_deterministic_and_inside_tracts(olinda_dir):
    import geopandas as gpd
    import shapely

    from geoembed.testing.policies import kit_footprint, make_policies

    a = make_policies(600, seed=3)
    b = make_policies(600, seed=3)
    c = make_policies(600, seed=4)
    assert a.equals(b)
    assert not np.allclose(a["lon"], c["lon"])
    assert list(a.columns[:8]) == ["policy_id", "lon", "lat", "tract", "neighbourhood", "exposure",
                                   "building_age", "claims"]
    assert ((a.exposure > 0) & (a.exposure <= 1)).all()
    assert a.claims.dtype == np.int64 and (a.claims >= 0).all()
    assert np.isfinite(a[["greenness", "elevation", "true_frequency"]].to_numpy()).all()
    # every policy lies in the tract it is labelled with, and inside both rasters
    tracts = gpd.read_file(olinda_dir / "olinda1.shp").set_index("CD_GEOCODI")
    geoms = tracts.geometry.loc[a.tract.to_numpy()].to_numpy()
    assert shapely.contains_xy(geoms, a.lon.to_numpy(), a.lat.to_numpy()).all()
    assert shapely.contains_xy(kit_footprint(), a.lon.to_numpy(), a.lat.to_numpy()).all()


def test_policies_claims_follow_true_frequency():
    from geoembed.testing.policies import TRUE_EFFECTS, make_policies, true_log_relativity

    p = make_policies(4000, seed=0)
    expected = float((p.exposure * p.true_frequency).sum())
    assert abs(p.claims.sum() - expected) < 4 * math.sqrt(expected)
    # the frequency is exactly the documented formula
    log_f = (np.log(0.12) + true_log_relativity(p.greenness, p.elevation)
             + TRUE_EFFECTS["building_age_decade"] * (p.building_age - 30) / 10)
    np.testing.assert_allclose(np.log(p.true_frequency), log_f, rtol=0, atol=1e-12)
    # greener and higher places claim less (the simulated truth has real spatial variation)
    assert np.corrcoef(p.greenness, np.log(p.true_frequency))[0, 1] < -0.3
    assert np.log(p.true_frequency).std() > 0.3


def test_spatial_covariates_match_a_hand_reading(olinda_dir):
    import rasterio
    from pyproj import Transformer

    from geoembed.testing.policies import spatial_covariates

    with rasterio.open(olinda_dir / "L7_ETMs.tif") as src:
        red, nir = src.read(3).astype(float), src.read(4).astype(float)
        rows, cols = np.array([100, 200, 57]), np.array([120, 80, 300])
        x, y = rasterio.transform.xy(src.transform, rows, cols)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)
    got = spatial_covariates(lon, lat)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        rm, nm = red[r - 1:r + 2, c - 1:c + 2].mean(), nir[r - 1:r + 2, c - 1:c + 2].mean()
        assert got.greenness[k] == pytest.approx((nm - rm) / (nm + rm), abs=1e-9)
    with rasterio.open(olinda_dir / "olinda_dem_utm25s.tif") as dem:
        dx, dy = Transformer.from_crs("EPSG:4326", dem.crs, always_xy=True).transform(lon, lat)
        want = [v[0] for v in dem.sample(zip(dx, dy, strict=True))]
    np.testing.assert_allclose(got.elevation, want)
    out = spatial_covariates([0.0], [0.0])  # far outside the kit
    assert out.isna().all(axis=None)


def test_policies_missing_kit_is_a_clear_error(tmp_path):
    from geoembed.errors import InputError
    from geoembed.testing.policies import make_policies

    with pytest.raises(InputError, match=r"Olinda kit file .* is missing"):
        make_policies(10, data_dir=tmp_path)


# ---------------------------------------------------------------------------------------- notebook


def test_notebook_saved_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    text = "\n".join(c.source for c in nb.cells)
    assert "simulated" in text and "GEOEMBED_BUNDLE" in text and "make demo" in text


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> Path:
    """A real (if briefly trained) bundle: the tiny config on the Olinda Landsat kit, 1500 locations."""
    from geoembed.build import build
    from geoembed.config import load_config, parse_config
    from geoembed.train import train

    data = load_config(TINY).model_dump(mode="json")
    data["workdir"] = str(tmp_path_factory.mktemp("nb_bundle") / "run")
    data["locations"]["n"] = 1500
    data["train"]["epochs"] = 3
    cfg = parse_config(data)
    build(cfg)
    return Path(train(cfg)["bundle"])


def _execute(tmp_path: Path, monkeypatch, bundle: Path | str, n_policies: int = 4000):
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "out"
    monkeypatch.setenv("GEOEMBED_BUNDLE", str(bundle))
    monkeypatch.setenv("GEOEMBED_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("GEOEMBED_NOTEBOOK_POLICIES", str(n_policies))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend, as for a user
    monkeypatch.setenv("GEOEMBED_NO_PROGRESS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=240,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    return client, nb, out


@pytest.mark.slow
def test_notebook_executes_and_compares(small_bundle, tmp_path, monkeypatch):
    client, nb, out = _execute(tmp_path, monkeypatch, small_bundle)
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(MARKER))
    res = json.loads(line[len(MARKER):])
    assert res == json.loads((out / "results.json").read_text())

    assert res["n_policies"] == 4000 and res["claims"] > 100
    assert res["split"].startswith("spatial_block")
    pooled = res["pooled"]
    assert set(pooled) == {f"{m}:{f}" for m in ("glm", "gbm") for f in ("none", "coords", "embeddings", "both")}
    for key, rec in pooled.items():
        assert all(math.isfinite(v) for v in rec.values()), key
        assert 0.5 < rec["deviance_ratio"] < 1.1, (key, rec)
    # the exposure-only GBM is the null model; embeddings carry the imagery's signal, the oracle beats all
    assert pooled["gbm:none"]["deviance_ratio"] == pytest.approx(1.0, abs=0.01)
    assert pooled["glm:embeddings"]["deviance_ratio"] < pooled["glm:none"]["deviance_ratio"] - 0.01
    assert res["oracle_deviance_ratio"] < min(r["deviance_ratio"] for r in pooled.values())
    assert 0.8 < res["building_age_relativity"] < 1.4  # truth exp(0.08) = 1.083
    assert set(res["sklearn_fold0_deviance_ratio"]) == {"coords", "embeddings"}
    assert all(0.5 < v < 1.2 for v in res["sklearn_fold0_deviance_ratio"].values())
    corr = res["spatial_effect_corr_with_truth"]
    assert set(corr) == {"glm on embeddings", "gbm on embeddings"}
    assert all(math.isfinite(v) and v > 0.2 for v in corr.values())

    # figures were written and shown; the report is complete
    for name in ("spatial_effect.png", "calibration.png", "embedding_pca_rgb.png"):
        assert (out / "evaluation" / name).stat().st_size > 5000, name
    for name in ("policies_map.png", "spatial_effect_vs_truth.png"):
        assert (out / name).stat().st_size > 5000, name
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
    records = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert {"model", "features", "split", "deviance_ratio", "rmse", "gini"} <= set(records[0])
    assert "| glm | embeddings |" in (out / "evaluation" / "report.md").read_text()
    enriched = __import__("pandas").read_parquet(out / "policies_enriched.parquet")
    assert len(enriched) == 4000 and {"emb_0", "claims", "exposure"} <= set(enriched.columns)
    assert not {"greenness", "true_frequency"} & set(enriched.columns)  # the truth never reaches the models


@pytest.mark.slow
def test_notebook_without_bundle_says_run_make_demo(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    client, nb, _ = _execute(tmp_path, monkeypatch, tmp_path / "no_such_bundle")
    with pytest.raises(CellExecutionError, match="make demo"):
        client.execute()
