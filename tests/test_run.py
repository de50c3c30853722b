"""`geoembed run -c CONFIG` end to end on a tiny synthetic world: build -> train -> enrich -> evaluate,
a second run that skips every stage, and reruns of only the stages whose inputs changed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pyproj import Transformer

from geoembed.cli import main
from geoembed.testing.rasters import from_origin, write_geotiff
from geoembed.testing.worlds import smooth_field

UTM = "EPSG:31985"  # UTM 25S, Olinda
X0, Y0, N, RES = 290_000.0, 9_118_000.0, 120, 30.0  # a 3.6 km square


def _world(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-band raster of smooth fields and a table of 200 policies on it whose claims follow band 1."""
    x = X0 + (np.arange(N) + 0.5) * RES
    y = Y0 - (np.arange(N) + 0.5) * RES
    xx, yy = np.meshgrid(x, y)
    bands = np.stack([smooth_field(xx, yy, c) for c in range(3)]).astype("float32")
    raster = write_geotiff(tmp_path / "world.tif", bands, crs=UTM, transform=from_origin(X0, Y0, RES, RES))
    rng = np.random.default_rng(0)
    px, py = rng.uniform(X0 + 300, X0 + N * RES - 300, 200), rng.uniform(Y0 - N * RES + 300, Y0 - 300, 200)
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(px, py)
    years = rng.uniform(0.5, 2.0, 200)
    claims = rng.poisson(years * np.exp(0.2 + 0.8 * smooth_field(px, py, 0)))
    table = tmp_path / "policies.csv"
    pd.DataFrame({"policy": np.arange(200), "lon": lon, "lat": lat, "years": years, "claims": claims}).to_csv(
        table, index=False)
    return raster, table


def _config(tmp_path: Path) -> Path:
    _world(tmp_path)
    cfg = {
        "workdir": "run", "seed": 0, "dask": {"chunk_size": 128},
        "locations": {"region": {"raster": "world.tif"}, "n": 300, "block_size_m": 600},
        "views": [{"kind": "raster", "name": "world", "sources": ["world.tif"], "chip_size": 4, "resolution_m": 60}],
        "train": {"views": [{"view": "world", "out_dim": 8, "channels": [4, 8]}],
                  "coordinate_encoder": {"encodings": [{"type": "local_multiscale", "min_wavelength_m": 300,
                                                        "n_scales": 4}],
                                         "network": {"type": "mlp", "hidden": [16]}},
                  "embedding_dim": 4, "fusion_hidden": 16, "batch_size": 64, "epochs": 2, "val_fraction": 0.2,
                  "device": "cpu", "num_threads": 1},
        "enrich": {"input": "policies.csv", "output": "run/policies_enriched.parquet"},
        "evaluate": {"target": "claims", "exposure": "years", "family": "poisson", "features": ["coords", "embeddings"],
                     "models": ["glm"], "split": {"kind": "random", "n_folds": 3}, "figures": False,
                     "output": "run/report"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _mtimes(run: Path) -> dict[str, int]:
    files = [run / "locations.parquet", run / "bundle" / "weights.safetensors", run / "policies_enriched.parquet",
             run / "report" / "evaluation.json", *sorted((run / "views" / "world" / "_chunks").glob("*.json"))]
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files}


def _stage_lines(out: str) -> dict[str, str]:
    return {s: next(line for line in out.splitlines() if line.startswith(f"{s}: "))
            for s in ("build", "train", "enrich", "evaluate")}


def test_run_every_stage_then_skip_every_stage(tmp_path, capsys):
    cfg = _config(tmp_path)
    run = tmp_path / "run"
    assert main(["run", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    for i, stage in enumerate(("build", "train", "enrich", "evaluate"), 1):
        assert f"[{i}/4] {stage}: " in out
    lines = _stage_lines(out)
    assert "up to date" not in "".join(lines.values())
    assert "chunks computed: 300 locations; world (" in lines["build"]
    assert "2 epochs" in lines["train"] and str(run / "bundle") in lines["train"]
    assert "verdict " in lines["train"] and "training verdict:" in out  # the training diagnostics
    assert "enriched 200 rows" in lines["enrich"] and "policies_enriched.parquet" in lines["enrich"]
    assert f"report -> {run / 'report'}" in lines["evaluate"]
    assert "| model | features | deviance_ratio" in out  # the pooled table
    enriched = pd.read_parquet(run / "policies_enriched.parquet")
    assert len(enriched) == 200 and [c for c in enriched if c.startswith("emb_")] == [f"emb_{i}" for i in range(4)]
    records = json.loads((run / "report" / "evaluation.json").read_text())
    pooled = {(r["model"], r["features"]) for r in records if r["fold"] == "pooled"}
    assert pooled == {("glm", "coords"), ("glm", "embeddings")}
    assert json.loads((run / "run.json").read_text())["evaluate"]["report"] == str(run / "report")

    # the second run skips every stage and rewrites nothing, yet prints the pooled table again
    before = _mtimes(run)
    assert main(["run", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert all(": up to date" in line for line in _stage_lines(out).values()), out
    assert "up to date: build, train, enrich, evaluate" in out and "| model | features |" in out
    assert _mtimes(run) == before

    # changed evaluation settings: only the evaluation is redone
    text = cfg.read_text()
    cfg.write_text(text.replace("n_folds: 3", "n_folds: 4"))
    assert main(["run", "-c", str(cfg)]) == 0
    lines = _stage_lines(capsys.readouterr().out)
    assert [s for s, line in lines.items() if ": up to date" not in line] == ["evaluate"]
    assert _mtimes(run)["report/evaluation.json"] != before["report/evaluation.json"]

    # a changed table: enrich and evaluate are redone, build and train are not
    policies = pd.read_csv(tmp_path / "policies.csv")
    policies.iloc[:150].to_csv(tmp_path / "policies.csv", index=False)
    assert main(["run", "-c", str(cfg)]) == 0
    lines = _stage_lines(capsys.readouterr().out)
    assert [s for s, line in lines.items() if ": up to date" not in line] == ["enrich", "evaluate"]
    assert "enriched 150 rows" in lines["enrich"]
    after = _mtimes(run)
    assert {k: after[k] for k in before if k.startswith(("views", "bundle", "locations"))} == \
        {k: before[k] for k in before if k.startswith(("views", "bundle", "locations"))}


def test_run_refuses_what_it_cannot_do(tmp_path, capsys):
    cfg = _config(tmp_path)
    d = yaml.safe_load(cfg.read_text())
    # an enrich output that geoembed did not write is not replaced
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "policies_enriched.parquet").write_bytes(b"mine")
    only_enrich = {"workdir": "run", "enrich": {**d["enrich"], "bundle": "nowhere"}}
    cfg.write_text(yaml.safe_dump(only_enrich))
    assert main(["run", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "is not a table written by geoembed" in err and "--overwrite" in err
    assert (tmp_path / "run" / "policies_enriched.parquet").read_bytes() == b"mine"
    # sections that cannot run
    for data, words in (({"workdir": "run"}, "no stage to run"),
                        ({"workdir": "run", "enrich": d["enrich"]}, "enrich needs a bundle"),
                        ({"workdir": "run", "evaluate": d["evaluate"]}, "evaluate.table is required"),
                        ({"workdir": "run", "enrich": {"input": "nope.csv", "bundle": "b"}}, "nope.csv does not exist")):
        cfg.write_text(yaml.safe_dump(data))
        assert main(["run", "-c", str(cfg)]) == 1
        assert words in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["build", "train", "enrich", "evaluate"])
def test_stages_follow_the_sections(tmp_path, stage):
    from geoembed.config import load_config
    from geoembed.run import stages

    cfg = _config(tmp_path)
    d = yaml.safe_load(cfg.read_text())
    drop = {"build": ["locations"], "train": ["train"], "enrich": ["enrich"], "evaluate": ["evaluate"]}[stage]
    cfg.write_text(yaml.safe_dump({k: v for k, v in d.items() if k not in drop}))
    assert stages(load_config(cfg)) == [s for s in ("build", "train", "enrich", "evaluate") if s != stage]
