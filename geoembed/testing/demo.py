"""The reduced demo of ``tests/test_demo.py::test_run_demo_on_a_reduced_config`` and of the script that
measured its reference values (``benchmarks/demo_reference.py``, ``tests/reference/demo_reduced.json``):
defined once so that the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from geoembed.demo import DEMO_CONFIG


def reduced_demo_config(workdir: Path, *, seed: int = 0, h3_resolution: int = 8) -> dict:
    """``configs/demo.yaml`` as a mapping, with its data paths made absolute and everything written under
    ``workdir``: half the locations (10,000), 8 epochs, one member at 1,000 m finest wavelength and 150 m
    jitter (the settings the reference was measured with), all three models, and 5-fold spatial blocks of
    H3 cells at ``h3_resolution`` (blocks that depend on geometry alone)."""
    workdir = Path(workdir)
    d = yaml.safe_load(DEMO_CONFIG.read_text())
    root = DEMO_CONFIG.parent
    d["seed"] = seed
    d["workdir"] = str(workdir / "run")
    d["locations"]["n"] = 10000
    d["locations"]["region"]["raster"] = str((root / d["locations"]["region"]["raster"]).resolve())
    for v in d["views"]:
        v["sources"] = [str((root / s).resolve()) for s in v["sources"]]
    d["train"].update(epochs=8, max_minutes=4.0, ensemble=1, jitter_m=150)
    d["train"]["coordinate_encoder"]["encodings"][0]["min_wavelength_m"] = 1000
    d["enrich"] = {"input": str(workdir / "run" / "tracts.parquet"),
                   "output": str(workdir / "run" / "tracts_enriched.parquet")}
    d["evaluate"]["table"] = str(workdir / "run" / "tracts_enriched.parquet")
    d["evaluate"]["models"] = ["glm", "gam", "gbm"]
    d["evaluate"]["split"] = {"kind": "spatial_block", "n_folds": 5, "block_method": "h3",
                              "h3_resolution": h3_resolution}
    return d
