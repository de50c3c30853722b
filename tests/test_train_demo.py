"""The shipped path: the demo's own train settings (configs/demo.yaml: pairwise objective, ``val_top5``
monitor, weight EMA, its CNN encoders and local coordinate encoder) trained on a small synthetic world
whose views are shaped like the demo's (Landsat 6 x 16 x 16 at 30 m, DEM 1 x 8 x 8 at 90 m).

Only the epoch count and the batch size are changed (a few hundred locations, seconds of CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import geoembed.train.loop as loop
from geoembed.config import load_config, parse_config
from geoembed.testing.worlds import SyntheticView, make_world
from geoembed.train import train

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
EPOCHS = 3


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory) -> Path:
    views = {"landsat": SyntheticView(channels=6, chip=16, pixel_m=30.0, invalid_frac=0.05),
             "dem": SyntheticView(channels=1, chip=8, pixel_m=90.0, first_field=6)}
    return make_world(tmp_path_factory.mktemp("demo_world") / "w", views, n=360, seed=3)


def demo_config(world: Path, workdir: Path):
    """configs/demo.yaml with ``workdir`` sharing ``world``'s inputs (symlinks); 3 epochs of batch 64, one
    member (the demo's ensemble of members is tested in tests/test_train_ensemble.py)."""
    workdir.mkdir(parents=True)
    (workdir / "locations.parquet").symlink_to(world / "locations.parquet")
    (workdir / "views").symlink_to(world / "views")
    data = load_config(DEMO).model_dump(mode="json")
    data["workdir"] = str(workdir)
    data["train"].update(epochs=EPOCHS, batch_size=64, ensemble=1)  # members: tests/test_train_ensemble.py
    return parse_config(data)


def _history(workdir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (workdir / "train" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in rows]


def _coord_weights(path: Path, prefix: str = "") -> dict:
    """Coordinate-encoder tensors of a bundle's weights (``prefix=""``) or of a checkpoint (``"ema."`` ...)."""
    tensors = load_file(str(path))
    if not prefix:
        return tensors
    head = prefix + "coord."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def test_the_demo_settings_are_the_ones_tested():
    tc = load_config(DEMO).train
    assert tc.objective == "pairwise" and tc.monitor == "val_top5" and tc.ema_decay
    assert {v.view for v in tc.views} == {"landsat", "dem"} and all(v.encoder == "cnn" for v in tc.views)
    assert tc.coordinate_encoder.encodings[0].type == "local_multiscale"


@pytest.fixture(scope="module")
def straight(demo_world, tmp_path_factory) -> tuple[Path, dict]:
    wd = tmp_path_factory.mktemp("straight") / "run"
    return wd, train(demo_config(demo_world, wd))


def test_demo_settings_train_learn_and_keep_the_best_top5_epoch(straight):
    wd, summary = straight
    hist = _history(wd)
    assert summary["stopped"] == "epochs" and summary["epochs_run"] == EPOCHS == len(hist)
    assert summary["monitor"] == "val_top5"
    # The raw model learns: the training loss falls over the epochs.
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] - 0.05, [h["train_loss"] for h in hist]
    assert all(np.isfinite(h["val_loss"]) and 0 <= h["val_top5"] <= 1 for h in hist)
    # The kept epoch is the first with the highest held-out top-5 (min_delta 0: ties keep the earlier).
    top5 = [h["val_top5"] for h in hist]
    assert summary["best_epoch"] == int(np.argmax(top5))
    metrics = json.loads((wd / "bundle" / "metrics.json").read_text())
    assert metrics["monitor"] == "val_top5" and metrics["val_top5"] == max(top5)
    # The bundle holds the kept (averaged) weights, not the raw weights of the last step.
    bundle = _coord_weights(wd / "bundle" / "weights.safetensors")
    ckpt = wd / "train" / "checkpoint" / "state.safetensors"
    assert _equal(bundle, _coord_weights(ckpt, "best."))
    assert not _equal(bundle, _coord_weights(ckpt, "model."))
    if summary["best_epoch"] == EPOCHS - 1:
        assert _equal(bundle, _coord_weights(ckpt, "ema."))


def test_demo_settings_resume_equals_uninterrupted_and_a_rerun_reuses(straight, demo_world, tmp_path):
    wd_a, _ = straight
    wd = tmp_path / "resumed"
    cfg = demo_config(demo_world, wd)
    first = train(cfg, stop_after_epochs=1)
    assert first["stopped"] == "interrupted" and not (wd / "bundle").exists()
    resumed = train(cfg)
    assert resumed["epochs_run"] == EPOCHS
    assert _history(wd) == _history(wd_a)
    assert (wd / "bundle" / "weights.safetensors").read_bytes() == \
        (wd_a / "bundle" / "weights.safetensors").read_bytes()
    assert (wd / "train" / "checkpoint" / "state.safetensors").read_bytes() == \
        (wd_a / "train" / "checkpoint" / "state.safetensors").read_bytes()
    stamp = (wd / "bundle" / "weights.safetensors").stat().st_mtime_ns
    assert train(cfg)["stopped"] == "up_to_date"
    assert (wd / "bundle" / "weights.safetensors").stat().st_mtime_ns == stamp


def test_monitor_val_top5_picks_the_epoch_and_the_bundle_holds_its_ema_weights(demo_world, tmp_path,
                                                                                monkeypatch):
    """Held-out scores scripted so that val_loss and val_top5 disagree: epoch 0 has the best top-5, epoch 1
    the best loss. The bundle is epoch 0's moving average (as its checkpoint holds it), not epoch 0's raw
    weights, and not epoch 1 or 2."""
    scripted = [{"val_loss": 1.0, "val_top5": 0.5}, {"val_loss": 0.5, "val_top5": 0.2},
                {"val_loss": 2.0, "val_top5": 0.3}]
    calls: list[int] = []
    real = loop.evaluate

    def evaluate(*args, **kwargs):
        out = real(*args, **kwargs)
        out.update(scripted[len(calls)])
        calls.append(1)
        return out

    monkeypatch.setattr(loop, "evaluate", evaluate)
    full = train(demo_config(demo_world, tmp_path / "full"))
    assert len(calls) == EPOCHS and full["best_epoch"] == 0 and full["stopped"] == "epochs"
    metrics = json.loads((tmp_path / "full" / "bundle" / "metrics.json").read_text())
    assert metrics["val_top5"] == 0.5 and metrics["best_val_loss"] == 1.0
    calls.clear()
    train(demo_config(demo_world, tmp_path / "epoch0"), stop_after_epochs=1)  # the same run, cut after epoch 0
    epoch0 = tmp_path / "epoch0" / "train" / "checkpoint" / "state.safetensors"
    bundle = _coord_weights(tmp_path / "full" / "bundle" / "weights.safetensors")
    assert _equal(bundle, _coord_weights(epoch0, "ema."))
    assert not _equal(bundle, _coord_weights(epoch0, "model."))
    assert not _equal(bundle, _coord_weights(tmp_path / "full" / "train" / "checkpoint" / "state.safetensors",
                                             "ema."))
