"""The build stage end to end on the real Olinda kit: CLI, resume after kill -9, inspect, bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from geoembed.cli import main
from geoembed.io.locations import read_locations
from geoembed.io.viewstore import ViewStore

ROOT = Path(__file__).resolve().parents[1]
OLINDA = ROOT / "data" / "olinda"


def _config(tmp_path: Path, n: int = 600, chunk: int = 128, **extra) -> Path:
    cfg = {
        "workdir": str(tmp_path / "run"),
        "seed": 1,
        "dask": {"chunk_size": chunk},
        "locations": {"region": {"raster": str(OLINDA / "L7_ETMs.tif")}, "n": n, "block_size_m": 1500},
        "views": [
            {"name": "landsat", "kind": "raster", "sources": [str(OLINDA / "L7_ETMs.tif")],
             "chip_size": 8, "resolution_m": 30},
            {"name": "dem", "kind": "raster", "sources": [str(OLINDA / "olinda_dem_utm25s.tif")],
             "chip_size": 4, "resolution_m": 90},
        ],
        **extra,
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _markers(store: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "_chunks").glob("*.json")}


def test_build_olinda_cli_and_rerun_does_nothing(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["build", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "locations: 600 kept" in out and "view landsat (raster)" in out
    run = tmp_path / "run"
    locs = read_locations(run / "locations.parquet")
    land = ViewStore.open(run / "views" / "landsat")
    dem = ViewStore.open(run / "views" / "dem")
    assert land.n_rows == dem.n_rows == len(locs) == 600
    assert land.arrays["chips"].shape == (6, 8, 8) and dem.arrays["chips"].shape == (1, 4, 4)
    np.testing.assert_array_equal(land.read("location_id"), locs["location_id"])
    chips = land.read("chips")
    valid = land.read("valid")
    assert valid.mean() > 0.9
    assert np.isfinite(chips[valid]).mean() > 0.9 and np.nanmax(chips) <= 255 and np.nanmin(chips) >= 0
    assert len(land.stats["chips"]["mean"]) == 6
    assert (run / "config.resolved.yaml").exists()
    # A second run finds everything up to date and rewrites nothing.
    before = _markers(run / "views" / "landsat")
    loc_mtime = (run / "locations.parquet").stat().st_mtime_ns
    assert main(["build", "-c", str(cfg)]) == 0
    assert _markers(run / "views" / "landsat") == before
    assert (run / "locations.parquet").stat().st_mtime_ns == loc_mtime
    # inspect prints counts, shapes and valid fractions for the run folder.
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0
    text = capsys.readouterr().out
    assert "rows: 600" in text and "valid_fraction" in text and "sha256:" in text


def test_changed_settings_need_overwrite(tmp_path, capsys):
    cfg = _config(tmp_path, n=200)
    assert main(["build", "-c", str(cfg)]) == 0
    cfg2 = _config(tmp_path, n=250)
    assert main(["build", "-c", str(cfg2)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["build", "-c", str(cfg2), "--overwrite"]) == 0
    assert ViewStore.open(tmp_path / "run" / "views" / "dem").n_rows == 250


def test_bad_config_and_inputs_are_named(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"locations": {"region": {"bbox": [0, 0, 1, 1]}, "n": 5}, "view": []}))
    assert main(["build", "-c", str(p)]) == 1
    assert "view: unknown key" in capsys.readouterr().err
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["views"][0]["sources"] = [str(tmp_path / "missing.tif")]
    p.write_text(yaml.safe_dump(cfg))
    assert main(["build", "-c", str(p)]) == 1
    err = capsys.readouterr().err
    assert "missing.tif" in err and "does not exist" in err
    assert not (tmp_path / "run" / "locations.parquet").exists()
    # A region that no raster covers: a clear error, no locations file.
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["locations"]["region"] = {"bbox": [10, 50, 10.1, 50.1]}
    p.write_text(yaml.safe_dump(cfg))
    assert main(["build", "-c", str(p)]) == 1
    assert "no sampled location" in capsys.readouterr().err
    assert not (tmp_path / "run" / "locations.parquet").exists()


@pytest.mark.slow
def test_kill_and_resume_matches_clean_build(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    assert main(["build", "-c", str(_config(clean, n=6000, chunk=100))]) == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    cfg = _config(killed, n=6000, chunk=100)
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "geoembed.cli", "build", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = killed / "run" / "views" / "landsat"
    deadline = time.time() + 120
    while time.time() < deadline and len(_markers(store) if (store / "_chunks").exists() else {}) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_markers(store))
    assert 0 < done < 60, f"kill landed at {done} chunks; test needs a mid-build kill"
    with pytest.raises(Exception, match="incomplete"):
        ViewStore.open(store)
    first = _markers(store)
    assert main(["build", "-c", str(cfg)]) == 0
    after = _markers(store)
    assert len(after) == 60
    assert all(after[k] == v for k, v in first.items()), "finished chunks were recomputed"
    for view in ("landsat", "dem"):
        a = ViewStore.open(clean / "run" / "views" / view)
        b = ViewStore.open(killed / "run" / "views" / view)
        np.testing.assert_array_equal(a.read("chips"), b.read("chips"))
        np.testing.assert_array_equal(a.read("valid"), b.read("valid"))
        assert a.stats == b.stats


@pytest.mark.slow
def test_build_on_distributed_scheduler(tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        cfg = _config(tmp_path, n=400, chunk=100)
        assert main(["build", "-c", str(cfg), "--scheduler", cluster.scheduler_address]) == 0
    local = tmp_path / "local"
    local.mkdir()
    assert main(["build", "-c", str(_config(local, n=400, chunk=100))]) == 0
    a = ViewStore.open(tmp_path / "run" / "views" / "landsat").read("chips")
    b = ViewStore.open(local / "run" / "views" / "landsat").read("chips")
    np.testing.assert_array_equal(a, b)
