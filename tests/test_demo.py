"""The demo pipeline wiring, end to end on a reduced Olinda config (the full demo runs in `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from geoembed.config import load_config
from geoembed.demo import DEMO_CONFIG, olinda_tracts, run_demo


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
    d = yaml.safe_load(DEMO_CONFIG.read_text())
    root = DEMO_CONFIG.parent
    d["workdir"] = str(tmp_path / "run")
    d["locations"]["n"] = 10000
    d["locations"]["region"]["raster"] = str((root / d["locations"]["region"]["raster"]).resolve())
    for v in d["views"]:
        v["sources"] = [str((root / s).resolve()) for s in v["sources"]]
    d["train"].update(epochs=8, max_minutes=4.0)
    d["enrich"] = {"input": str(tmp_path / "run" / "tracts.parquet"),
                   "output": str(tmp_path / "run" / "tracts_enriched.parquet")}
    d["evaluate"]["table"] = str(tmp_path / "run" / "tracts_enriched.parquet")
    d["evaluate"]["models"] = ["glm", "gam", "gbm"]
    # H3 cells (res 8, ~0.5 km edges) instead of the grid: blocks that depend on geometry alone
    d["evaluate"]["split"] = {"kind": "spatial_block", "n_folds": 5, "block_method": "h3", "h3_resolution": 8}
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

    def fake(cfg, overwrite=False):
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
    assert "demo's own scratch folder: rebuilding it" in capsys.readouterr().out


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
