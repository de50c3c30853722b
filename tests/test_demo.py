"""The demo pipeline wiring, end to end on a reduced Olinda config (the full demo runs in `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import yaml

from geoembed.config import load_config
from geoembed.demo import (
    COMPARED,
    DEMO_CONFIG,
    DISTILLED_CONFIG,
    comparison_reading,
    comparison_table,
    import_geoclip_step,
    olinda_tract_polygons,
    olinda_tracts,
    run_demo,
    run_distilled,
    teacher_bundle,
    write_tract_polygons,
)
from geoembed.testing.demo import reduced_demo_config
from geoembed.testing.geoclip import geoclip_root

needs_wheel = pytest.mark.skipif(geoclip_root() is None, reason="the geoclip wheel is not installed "
                                 "(make install installs it: pip install --no-deps geoclip==1.3.0)")


def test_olinda_tracts_table():
    t = olinda_tracts()
    assert len(t) == 470 and t["tract_id"].is_unique
    assert t["residents"].sum() == pytest.approx(377_800, rel=0.01)
    assert (t["area_km2"] > 0).all() and t["area_km2"].sum() == pytest.approx(41.7, rel=0.1)
    assert t["lon"].between(-34.92, -34.82).all() and t["lat"].between(-8.05, -7.95).all()


def test_demo_config_has_every_stage():
    cfg = load_config(DEMO_CONFIG)
    cfg.require("locations", "views", "train", "enrich", "evaluate")
    assert cfg.evaluate.table == cfg.enrich.output  # the run evaluates the table it enriched
    assert cfg.evaluate.exposure == "area_km2" and cfg.evaluate.family == "poisson"
    assert cfg.evaluate.split.kind == "spatial_block"


def reference(name: str) -> dict:
    """A reference file of tests/reference/ (values, tolerances, and how and where they were measured)."""
    return json.loads((Path(__file__).parent / "reference" / f"{name}.json").read_text())


@pytest.mark.slow
def test_run_demo_on_a_reduced_config(tmp_path, capsys):
    """The demo pipeline on half the locations and two thirds of the epochs: its embeddings beat raw
    coordinates for the GLM, the GAM and LightGBM, by the margins in tests/reference/demo_reduced.json."""
    d = reduced_demo_config(tmp_path)  # also what measured the reference (benchmarks/demo_reference.py)
    cfg_path = tmp_path / "demo.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = run_demo(load_config(cfg_path))
    text = capsys.readouterr().out
    assert "[4/4] evaluate" in text and "deviance ratio" in text
    report = Path(out["report"])
    records = json.loads((report / "evaluation.json").read_text())
    pooled = {f"{r['model']}:{r['features']}": r["deviance_ratio"] for r in records if r.get("fold") == "pooled"}
    assert set(pooled) == {f"{m}:{f}" for m in ("glm", "gam", "gbm") for f in ("coords", "embeddings")}
    ref = reference("demo_reduced")
    got = {k: round(v, 4) for k, v in pooled.items()}
    for m in ("glm", "gam", "gbm"):  # the embeddings beat coordinates for every model
        assert got[f"{m}:embeddings"] < got[f"{m}:coords"] - ref["min_margin"], got
    for key, want in ref["values"].items():
        assert got[key] == pytest.approx(want, abs=ref["tolerance"][key.split(":")[1]]), (got, ref["values"])
    assert (report / "report.md").exists() and list(report.glob("*.png"))
    # A rerun is `geoembed run` with every stage up to date: nothing is redone, the table is printed again.
    kept = [Path(out["bundle"]) / "weights.safetensors", tmp_path / "run" / "tracts.parquet",
            tmp_path / "run" / "tracts_enriched.parquet", report / "evaluation.json"]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    again = run_demo(load_config(cfg_path))
    text = capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in kept] == mtimes
    for stage in ("build", "train", "enrich", "evaluate"):
        assert f"\n{stage}: up to date" in text
    assert "deviance ratio" in text
    assert [r["deviance_ratio"] for r in again["pooled"]] == pytest.approx([r["deviance_ratio"] for r in out["pooled"]])


def _stale_then_ok(calls):
    from geoembed.errors import InputError

    def fake(cfg, overwrite=False, distilled=None):
        calls.append(overwrite)
        if not overwrite:
            raise InputError("view store runs/demo/views/landsat was built from different inputs or settings; "
                             "pass --overwrite to rebuild it")
        return {}
    return fake


def test_demo_rebuilds_its_own_stale_scratch_folder(monkeypatch, capsys):
    import argparse

    import geoembed.demo as demo

    calls: list[bool] = []
    monkeypatch.setattr(demo, "run_demo", _stale_then_ok(calls))
    assert demo.run(argparse.Namespace(config=str(DEMO_CONFIG), overwrite=False)) == 0
    assert calls == [False, True]
    assert "the demo's own scratch folders: rebuilding them" in capsys.readouterr().out


def test_demo_with_a_user_config_keeps_the_stale_error(monkeypatch, tmp_path):
    import argparse

    import geoembed.demo as demo
    from geoembed.errors import InputError

    user = tmp_path / "mine.yaml"
    user.write_text(Path(DEMO_CONFIG).read_text().replace("../", str(Path(DEMO_CONFIG).parents[1]) + "/"))
    calls: list[bool] = []
    monkeypatch.setattr(demo, "run_demo", _stale_then_ok(calls))
    with pytest.raises(InputError, match="pass --overwrite"):
        demo.run(argparse.Namespace(config=str(user), overwrite=False))
    assert calls == [False]


# ------------------------------------------------------------------------------ GeoCLIP + distilled part
def test_distilled_config_compares_on_the_first_configs_locations_and_folds():
    first, second = load_config(DEMO_CONFIG), load_config(DISTILLED_CONFIG)
    second.require("locations", "views", "train", "evaluate")
    assert second.locations == first.locations and second.seed == first.seed  # the same 20,000 locations
    for v in first.views:  # the same Landsat and DEM views
        assert second.view(v.name) == v
    assert [v.view for v in second.train.views] == ["landsat", "dem", "geoclip"]
    ev = second.evaluate
    assert tuple(ev.features) == COMPARED and ev.split == first.evaluate.split
    assert (ev.target, ev.exposure, ev.family) == (first.evaluate.target, first.evaluate.exposure, "poisson")
    sets = ev.embedding_sets
    assert Path(sets["geoclip"].bundle) == teacher_bundle(second)  # the teacher is the evaluated GeoCLIP
    assert Path(sets["local"].bundle) == first.workdir_path / "bundle"
    assert Path(sets["distilled"].bundle) == second.workdir_path / "bundle"
    assert second.workdir_path != first.workdir_path


def test_distilled_config_trains_as_the_first_config():
    """The distilled model differs from the local one by its teacher view and its shorter budget only: a
    setting changed in configs/demo.yaml (the benchmark's winner) must be changed in both."""
    first, second = load_config(DEMO_CONFIG), load_config(DISTILLED_CONFIG)
    budget = {"views", "epochs", "patience", "max_minutes"}
    a, b = first.train.model_dump(exclude=budget), second.train.model_dump(exclude=budget)
    assert {k for k in a if a[k] != b[k]} == set()
    assert second.train.views[:2] == first.train.views
    assert second.train.epochs <= first.train.epochs


def test_tract_polygons_have_the_centroid_tables_columns(tmp_path):
    g = olinda_tract_polygons()
    t = olinda_tracts()
    assert g.crs is not None and g.geom_type.isin(["Polygon", "MultiPolygon"]).all()
    pd.testing.assert_frame_equal(pd.DataFrame(g.drop(columns="geometry")), t)  # same lon/lat: same folds
    out = write_tract_polygons(tmp_path / "p.parquet")
    before = out.stat().st_mtime_ns
    assert write_tract_polygons(out).stat().st_mtime_ns == before  # unchanged: not rewritten
    assert len(gpd.read_parquet(out)) == 470


def _table(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols, index=["glm", "gam", "gbm"])


FACTS = {"components": 8, "finest_wavelength_km": 16.7, "resolution_km": 28.1, "tract_km": 0.21,
         "epochs": {"local": 12, "distilled": 8}}


def test_comparison_reading_follows_the_numbers():
    flat = _table(coords=[1.0, 1.0, 1.0], geoclip=[0.99, 1.01, 1.0], local=[0.5, 0.5, 0.6],
                  distilled=[0.5, 0.51, 0.6])
    text = " ".join(comparison_reading(flat, FACTS))
    assert "adds nothing beyond coordinates" in text and "about 17 km" in text and "0.2 km across" in text
    assert "better than GeoCLIP for every model" in text and "within 0.02 of it for every model" in text
    assert "12 epochs" in text and "Best per model: GLM local (0.500)" in text
    mixed = flat.assign(geoclip=[0.8, 1.4, 0.9], distilled=[0.4, 0.7, 0.6])
    text = " ".join(comparison_reading(mixed, FACTS))
    assert "better than coordinates for GLM, GBM, worse for GAM" in text
    assert "better for GLM and worse for GAM" in text and "Best per model: GLM distilled (0.400)" in text
    strong = flat.assign(geoclip=[0.4, 0.45, 0.5])  # GeoCLIP beating the local model: no claim against it
    text = " ".join(comparison_reading(strong, FACTS))
    assert "improves on coordinates for GLM, GAM, GBM" in text and "better than GeoCLIP" not in text


def test_comparison_table_is_one_row_per_model():
    pooled = pd.DataFrame([{"model": m, "features": f, "deviance_ratio": i + j / 10}
                           for i, m in enumerate(("gbm", "glm", "gam")) for j, f in enumerate(COMPARED)])
    t = comparison_table(pooled)
    assert list(t.index) == ["glm", "gam", "gbm"] and list(t.columns) == list(COMPARED)
    assert t.at["gam", "local"] == pytest.approx(2.2)


@needs_wheel
def test_geoclip_import_step_is_skipped_when_up_to_date(tmp_path):
    from geoembed.io.bundle import load_bundle

    out = tmp_path / "geoclip_pc2"
    fresh, line = import_geoclip_step(out, tmp_path, components=2, n=64)
    assert not fresh and line.startswith("imported GeoCLIP 512-d -> 2 components")
    b = load_bundle(out)
    assert b.embedding_dim == 2 and b.reduction.info["reference"]["kind"] == "polygon"
    weights = (out / "weights.safetensors").stat().st_mtime_ns
    fresh, line = import_geoclip_step(out, tmp_path, components=2, n=64)
    assert fresh and line.startswith("up to date") and (out / "weights.safetensors").stat().st_mtime_ns == weights
    fresh, _ = import_geoclip_step(out, tmp_path, components=3, n=64)  # another request: imported again
    assert not fresh and load_bundle(out).embedding_dim == 3


def _small_distilled(tmp_path: Path, local: Path) -> Path:
    """configs/demo_distilled.yaml on small settings: 1,500 locations, one epoch, GLM only, 4 points/tract."""
    d = yaml.safe_load(DISTILLED_CONFIG.read_text())
    root = DISTILLED_CONFIG.parent
    run = tmp_path / "run"
    d["workdir"] = str(run)
    d["locations"]["n"] = 1500
    d["locations"]["region"]["raster"] = str((root / d["locations"]["region"]["raster"]).resolve())
    for v in d["views"]:
        if "sources" in v:
            v["sources"] = [str((root / s).resolve()) for s in v["sources"]]
        else:
            v["bundle"] = str(run / "geoclip_pc8")
    d["train"].update(epochs=1, batch_size=256, ensemble=1)
    ev = d["evaluate"]
    ev.update(table=str(run / "polygons.parquet"), output=str(run / "report"), models=["glm"], points_per_polygon=4)
    ev["embedding_sets"] = {"geoclip": {"bundle": str(run / "geoclip_pc8")}, "local": {"bundle": str(local)},
                            "distilled": {"bundle": str(run / "bundle")}}
    path = tmp_path / "distilled.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@needs_wheel
def test_distilled_part_on_small_settings(tmp_path, bundle_path):
    """Import, build (with the teacher view), train, evaluate the four sets on the tract polygons, the
    comparison; a rerun redoes nothing."""
    cfg_path = _small_distilled(tmp_path, bundle_path)
    lines: list[str] = []
    out = run_distilled(load_config(cfg_path), local_bundle=bundle_path, echo=lines.append)
    text = "\n".join(lines)
    run = tmp_path / "run"
    assert "import: imported GeoCLIP 512-d -> 8 components" in text and "view geoclip (embedding)" in text
    table = out["comparison"]
    assert list(table.columns) == list(COMPARED) and list(table.index) == ["glm"]
    assert table.notna().all().all() and table["local"].iloc[0] != table["distilled"].iloc[0]
    written = (run / "comparison.md").read_text()
    assert "| glm |" in written and "mean over 4 points" in written and out["reading"][0] in written
    report = (run / "report" / "report.md").read_text()
    assert "embedding set `geoclip`" in report and "embedding set `distilled`" in report
    # the teacher view stores GeoCLIP's 8 components at the run's locations
    meta = json.loads((run / "views" / "geoclip" / "meta.json").read_text())
    assert "embedding" in json.dumps(meta)
    kept = [run / "geoclip_pc8" / "weights.safetensors", run / "bundle" / "weights.safetensors",
            run / "polygons.parquet", run / "report" / "evaluation.json"]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    lines.clear()
    again = run_distilled(load_config(cfg_path), local_bundle=bundle_path, echo=lines.append)
    text = "\n".join(lines)
    assert "import: up to date" in text and "train: up to date" in text and "evaluate: up to date" in text
    assert [p.stat().st_mtime_ns for p in kept] == mtimes
    pd.testing.assert_frame_equal(again["comparison"], table)


def test_distilled_part_checks_the_local_bundle(tmp_path, bundle_path):
    from geoembed.errors import ConfigError

    cfg = load_config(_small_distilled(tmp_path, bundle_path))
    with pytest.raises(ConfigError, match="embedding_sets.local.bundle is .* but the local model of the first"):
        run_distilled(cfg, local_bundle=tmp_path / "other")


def test_demo_runs_the_distilled_config_after_its_own(monkeypatch, tmp_path):
    import argparse

    import geoembed.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda cfg, overwrite=False, distilled=None: seen.append(distilled))
    assert demo.run(argparse.Namespace(config=str(DEMO_CONFIG), overwrite=False)) == 0
    assert seen[-1] is not None and seen[-1].workdir_path == load_config(DISTILLED_CONFIG).workdir_path
    demo.run(argparse.Namespace(config=str(DEMO_CONFIG), overwrite=False, no_distilled=True, distilled=None))
    assert seen[-1] is None
    user = tmp_path / "mine.yaml"  # a config of the user's: no second part unless asked for
    user.write_text(Path(DEMO_CONFIG).read_text().replace("../", str(Path(DEMO_CONFIG).parents[1]) + "/"))
    demo.run(argparse.Namespace(config=str(user), overwrite=False, no_distilled=False, distilled=None))
    assert seen[-1] is None
    demo.run(argparse.Namespace(config=str(user), overwrite=False, no_distilled=False, distilled=str(DISTILLED_CONFIG)))
    assert seen[-1] is not None
