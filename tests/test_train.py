"""Trainer: tiny train -> bundle -> reload, determinism, kill/resume, spatial split, synthetic world
retrieval, CLI, DDP (gloo, 2 processes) against a single process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoembed.config import load_config, parse_config
from geoembed.testing.worlds import LAT0, LON0, SyntheticView
from geoembed.testing.worlds import make_world as synthetic_world

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def make_world(workdir: Path, n: int = 1200, extent_m: float = 5000.0, chip: int = 8,
               invalid_frac: float = 0.05, seed: int = 0, tab: bool = False) -> Path:
    """A synthetic world (:func:`geoembed.testing.worlds.make_world`): each view is a known function of
    location. ``img``: (3, chip, chip) chips sampling three smooth fields at 60 m pixels around the
    location; ``tab`` (optional): a 4-vector of other fields at the location. ``block_id`` from a 1 km
    grid. A fraction of rows is invalid (NaN chips, valid False)."""
    views = {"img": SyntheticView(channels=3, chip=chip, pixel_m=60.0, invalid_frac=invalid_frac)}
    if tab:
        views["tab"] = SyntheticView(kind="osm", channels=4, chip=None, first_field=10, array="radius")
    return synthetic_world(workdir, views, n=n, extent_m=extent_m, seed=seed)


def tiny_config(workdir: Path, **train_overrides):
    cfg = load_config(TINY)
    data = cfg.model_dump(mode="json")
    data["workdir"] = str(workdir)
    data["train"]["views"] = [{"view": "img", "out_dim": 16, "channels": [8, 16]}]
    data["train"].update(train_overrides)
    return parse_config(data)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world") / "w", n=400)


def _fresh(world: Path, tmp_path: Path, name: str) -> Path:
    """A workdir sharing the world's inputs (symlinks) with its own run outputs."""
    wd = tmp_path / name
    wd.mkdir()
    os.symlink(world / "locations.parquet", wd / "locations.parquet")
    os.symlink(world / "views", wd / "views")
    return wd


def test_tiny_config_parses():
    cfg = load_config(TINY)
    assert cfg.train.coordinate_encoder.encodings[0].type == "local_multiscale"
    assert cfg.train.epochs >= 1


def test_spatial_split_holds_out_whole_blocks():
    from geoembed.train import spatial_split

    blocks = np.repeat(np.arange(20), 50)
    tr, va = spatial_split(blocks, 0.2, seed=3)
    assert len(tr) + len(va) == len(blocks)
    assert not set(blocks[tr]) & set(blocks[va])
    assert 0.15 <= len(va) / len(blocks) <= 0.3


def test_train_bundle_reload_identical(world, tmp_path):
    from geoembed.io.bundle import load_bundle
    from geoembed.train import train

    wd = _fresh(world, tmp_path, "a")
    summary = train(tiny_config(wd, epochs=2))
    bundle = load_bundle(summary["bundle"])
    rows = [json.loads(x) for x in (wd / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"train_loss", "val_loss", "val_top1", "val_top5"} <= set(rows[0])
    assert (wd / "train" / "metrics.csv").is_file()
    meta = json.loads((wd / "bundle" / "geoembed.json").read_text())
    assert meta["coordinate_order"] == ["lon", "lat"] and meta["embedding_dim"] == 8
    assert (wd / "bundle" / "config.yaml").is_file() and (wd / "bundle" / "metrics.json").is_file()
    lon = np.linspace(LON0, LON0 + 0.04, 50)
    lat = np.linspace(LAT0, LAT0 + 0.04, 50)
    e1 = bundle.embed(lon, lat)
    e2 = load_bundle(wd / "bundle").embed(lon, lat)
    assert e1.shape == (50, 8) and e1.dtype == np.float32
    np.testing.assert_array_equal(e1, e2)
    assert bundle.fingerprint == load_bundle(wd / "bundle").fingerprint
    from geoembed.io.seal import seal_fingerprint

    assert meta["schema_version"] == 2 and bundle.fingerprint == seal_fingerprint(meta["seal"])  # sealed


def test_fixed_seed_identical_and_resume_matches(world, tmp_path):
    from geoembed.io.bundle import load_bundle
    from geoembed.train import train

    a = _fresh(world, tmp_path, "a")
    b = _fresh(world, tmp_path, "b")
    c = _fresh(world, tmp_path, "c")
    train(tiny_config(a, epochs=2, patience=None))
    train(tiny_config(b, epochs=2, patience=None))
    # "Kill" after one epoch, then resume with the same command.
    first = train(tiny_config(c, epochs=2, patience=None), stop_after_epochs=1)
    assert first["stopped"] == "interrupted" and not (c / "bundle").exists()
    train(tiny_config(c, epochs=2, patience=None))
    ha = [json.loads(x) for x in (a / "train" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (b / "train" / "metrics.jsonl").read_text().splitlines()]
    hc = [json.loads(x) for x in (c / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb] == [h["train_loss"] for h in hc]
    lon, lat = np.full(5, LON0 + 0.01), np.linspace(LAT0, LAT0 + 0.03, 5)
    ea = load_bundle(a / "bundle").embed(lon, lat)
    np.testing.assert_array_equal(ea, load_bundle(b / "bundle").embed(lon, lat))
    np.testing.assert_array_equal(ea, load_bundle(c / "bundle").embed(lon, lat))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_finished_run_reused_and_a_larger_budget_resumes(world, tmp_path, ema_decay):
    from geoembed.train import train

    a = _fresh(world, tmp_path, "a")
    b = _fresh(world, tmp_path, "b")
    first = train(tiny_config(a, epochs=1, patience=None, ema_decay=ema_decay))
    assert first["epochs_run"] == 1
    assert train(tiny_config(a, epochs=1, patience=None, ema_decay=ema_decay))["stopped"] == "up_to_date"
    # More epochs: the finished bundle no longer stands for the budget; training resumes from the checkpoint
    # and ends where an uninterrupted 2-epoch run ends (EMA state included).
    more = train(tiny_config(a, epochs=2, patience=None, ema_decay=ema_decay))
    straight = train(tiny_config(b, epochs=2, patience=None, ema_decay=ema_decay))
    assert more["epochs_run"] == 2
    assert [h["train_loss"] for h in more["history"]] == [h["train_loss"] for h in straight["history"]]
    assert [h["val_loss"] for h in more["history"]] == [h["val_loss"] for h in straight["history"]]


def test_checkpoint_of_other_settings_is_an_error(world, tmp_path):
    from geoembed.errors import ConfigError
    from geoembed.train import train

    wd = _fresh(world, tmp_path, "a")
    train(tiny_config(wd, epochs=2), stop_after_epochs=1)
    with pytest.raises(ConfigError, match="overwrite"):
        train(tiny_config(wd, epochs=2, lr=0.01))
    out = train(tiny_config(wd, epochs=1, lr=0.01), overwrite=True)
    assert out["epochs_run"] == 1
    # --overwrite discards another run's work only: the same run's finished bundle stays up to date
    again = train(tiny_config(wd, epochs=1, lr=0.01), overwrite=True)
    assert again["stopped"] == "up_to_date" and again["bundle"] == out["bundle"]
    # --no-resume starts again
    assert train(tiny_config(wd, epochs=1, lr=0.01), resume=False)["stopped"] != "up_to_date"


def test_missing_view_store_names_it(world, tmp_path):
    from geoembed.errors import InputError
    from geoembed.train import train

    wd = _fresh(world, tmp_path, "a")
    cfg = tiny_config(wd)
    cfg.train.views[0].view = "nope"
    with pytest.raises(InputError, match="nope"):
        train(cfg)


@pytest.mark.slow
def test_synthetic_world_retrieval_far_above_chance(tmp_path):
    """Held-out blocks: each location's views retrieve its coordinates far above chance."""
    from geoembed.io.bundle import load_bundle
    from geoembed.train import train

    wd = make_world(tmp_path / "w", n=3000, tab=True)
    cfg = tiny_config(wd, epochs=10, batch_size=256, lr=3e-3, jitter_m=50.0, patience=5)
    data = cfg.model_dump(mode="json")
    data["train"]["views"] = [{"view": "img", "out_dim": 16, "channels": [16, 32]},
                              {"view": "tab", "out_dim": 8}]
    data["train"]["coordinate_encoder"]["network"]["hidden"] = [128, 128]
    data["train"]["coordinate_encoder"]["encodings"][0]["min_wavelength_m"] = 500.0
    data["train"]["embedding_dim"] = 16
    summary = train(parse_config(data))
    m = summary["metrics"]
    # ~650 held-out rows: chance top-1 ~0.15%, top-5 ~0.8%.
    assert m["val_top5"] > 20 * 5 * m["chance_top1"], m
    assert m["val_top1"] > 10 * m["chance_top1"], m
    assert load_bundle(wd / "bundle").embedding_dim == 16


@pytest.mark.slow
def test_cli_train(world, tmp_path):
    import yaml

    wd = _fresh(world, tmp_path, "cli")
    cfg = tiny_config(wd, epochs=1).model_dump(mode="json")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "geoembed.cli", "train", "-c", str(path)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "bundle:" in r.stdout and (wd / "bundle" / "weights.safetensors").is_file()
    # Rerunning a finished run trains nothing and says so.
    mtime = (wd / "bundle" / "weights.safetensors").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "geoembed.cli", "train", "-c", str(path)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout and (wd / "bundle" / "weights.safetensors").stat().st_mtime_ns == mtime
    # A config whose workdir has no views fails with a message naming the folder.
    cfg["workdir"] = str(tmp_path / "empty")
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "geoembed.cli", "train", "-c", str(path)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "locations" in r.stderr


_DDP_SCRIPT = r"""
import os, sys, json, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_train import tiny_config
from geoembed.train import train
torch.set_num_threads(1)
cfg = tiny_config({wd!r}, epochs=2, patience=None, batch_size=64, grad_clip=None)
out = train(cfg)
if int(os.environ.get("RANK", "0")) == 0:
    print("RESULT", json.dumps([h["train_loss"] for h in out["history"]]))
"""


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_single(world, tmp_path):
    """2 gloo processes with local batch 32 == 1 process with batch 64 (same global batches)."""
    from geoembed.io.bundle import load_bundle

    results = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        wd = _fresh(world, tmp_path, name)
        script = tmp_path / f"{name}.py"
        script.write_text(_DDP_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), wd=str(wd)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + nproc + os.getpid() % 1000), str(script)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "GEOEMBED_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")][0]
        results[name] = (json.loads(line.split(" ", 1)[1]), wd)
    np.testing.assert_allclose(results["single"][0], results["ddp"][0], rtol=1e-5)
    lon, lat = np.full(5, LON0 + 0.01), np.linspace(LAT0, LAT0 + 0.03, 5)
    np.testing.assert_allclose(load_bundle(results["single"][1] / "bundle").embed(lon, lat),
                               load_bundle(results["ddp"][1] / "bundle").embed(lon, lat), atol=1e-4)


def test_masked_hex_filters_train():
    """The OSM hex encoder's filters change in training and masked taps stay inert."""
    from geoembed.nn.views import HEX_MASK_3X3, HexEncoder

    torch.manual_seed(0)
    enc = HexEncoder(6, (7, 7), 8)
    conv = enc.convs[0]
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    x = torch.randn(32, 6, 7, 7)
    for _ in range(3):
        opt.zero_grad()
        enc(x).pow(2).sum().backward()
        opt.step()
    changed = (conv.weight.detach() - before).abs()
    assert changed[..., HEX_MASK_3X3.bool()].min() > 0
    # Gradient never reaches masked taps: they keep their initial values.
    assert changed[..., ~HEX_MASK_3X3.bool()].max() == 0
    assert "hex_mask" in dict(conv.named_buffers())


def test_paper_config_parses():
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    tc = cfg.train
    assert tc.coordinate_encoder.encodings[0].degrees == 8  # the reference's L = 8 (was 40 before parity)
    assert tc.coordinate_encoder.network.w0 == 30.0 and tc.coordinate_encoder.network.hidden == [128, 128]
    assert tc.embedding_dim == 16 and tc.lr == 1e-5 and tc.batch_size == 256 and tc.epochs == 500
    assert {v.view for v in tc.views} == {v.name for v in cfg.views}


@pytest.mark.slow
def test_gpu_benchmark_script_runs_small_on_cpu():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--small", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.splitlines()[0])
    assert res["samples_per_s"] > 0 and res["batch_size"] == 256 and math.isfinite(res["last_loss"])


def test_frozen_resnet_view_features_cached(world, tmp_path):
    """resnet18_frozen: features computed once (eval mode) from a local state dict, cached, reused."""
    from safetensors.torch import save_file

    from geoembed.nn.views import ResNet18
    from geoembed.train import load_training_data, train

    torch.manual_seed(0)
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ResNet18().state_dict().items()}, str(weights))
    wd = _fresh(world, tmp_path, "r")
    cfg = tiny_config(wd, epochs=1)
    data = cfg.model_dump(mode="json")
    data["train"]["views"] = [{"view": "img", "encoder": "resnet18_frozen", "backbone_weights": str(weights),
                               "backbone_bands": [0, 1, 2], "out_dim": 8}]
    cfg = parse_config(data)
    first = load_training_data(cfg)
    assert first.views["img"].shapes == {"features": (512,)}
    cached = list((wd / "cache").glob("img-resnet18-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = load_training_data(cfg)
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not recomputed
    torch.testing.assert_close(first.views["img"].arrays["features"], again.views["img"].arrays["features"])
    assert train(cfg, data=again)["epochs_run"] == 1
