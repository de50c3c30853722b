"""The cluster and multi-process recipes in pipelines/, run here as their README says: a distributed
LocalCluster of 2 worker processes for the batch run, and 2 CPU processes (gloo) for torchrun training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geoembed.config import read_yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"


def _tiny_config(tmp_path: Path, **train) -> Path:
    data = read_yaml((ROOT / "configs" / "tiny.yaml").read_text())
    data["workdir"] = str(tmp_path / "run")
    for key in ("locations", "views"):
        for item in [data[key]["region"]] if key == "locations" else data[key]:
            for k in ("raster",):
                if k in item:
                    item[k] = str((ROOT / "configs" / item[k]).resolve())
            if "sources" in item:
                item["sources"] = [str((ROOT / "configs" / s).resolve()) for s in item["sources"]]
    data["train"].update(train)
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "GEOEMBED_NO_PROGRESS": "1"}


@pytest.mark.slow
def test_run_on_a_local_distributed_cluster(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=2)
    cmd = [sys.executable, str(PIPELINES / "run_on_cluster.py"), "-c", str(cfg), "--local-cluster", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 stages, 2 run (build, train)" in first.stdout
    meta = json.loads((tmp_path / "run" / "views" / "landsat" / "meta.json").read_text())
    assert meta["complete"] and meta["n_rows"] == 400
    assert (tmp_path / "run" / "bundle" / "geoembed.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "all up to date" in again.stdout


@pytest.mark.slow
def test_torchrun_recipe_with_two_cpu_processes(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=2)
    build = subprocess.run([sys.executable, "-m", "geoembed.cli", "build", "-c", str(cfg)], capture_output=True,
                           text=True, env=_env(), timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    env = {**_env(), "PYTHON": sys.executable, "MASTER_PORT": str(29600 + os.getpid() % 1000)}
    res = subprocess.run(["bash", str(PIPELINES / "train_multi_gpu.sh"), str(cfg), "2"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "bundle" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2


def test_shell_recipes_parse():
    for script in ("train_multi_gpu.sh", "start_workers.sh"):
        subprocess.run(["bash", "-n", str(PIPELINES / script)], check=True)
    bad = subprocess.run(["bash", str(PIPELINES / "start_workers.sh")], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
