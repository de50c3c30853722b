"""Training diagnostics (geoembed.train.diagnostics): retrieval against chance, variation over the footprint
and by scale, the verdict and its advice; stored after training, shown (or computed) by inspect."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoembed.geo import aeqd_km
from geoembed.io.bundle import build_coordinate_encoder, load_bundle, save_bundle
from geoembed.testing.bundles import OLINDA_BOX, TINY_SPEC, make_tiny_bundle
from geoembed.train import diagnostics as dg

sys.path.insert(0, str(Path(__file__).resolve().parent))

CENTRE = (-34.87, -7.995)


def _xy_km(lon, lat):
    return aeqd_km(np.asarray(lon), np.asarray(lat), *CENTRE)


def smooth(lon, lat):
    """A smooth 4-d map: waves of 12-19 km over the ~10 km Olinda box."""
    x, y = _xy_km(lon, lat)
    return np.column_stack([np.cos(x / 2), np.sin(x / 2), np.cos(y / 3), np.sin(y / 3) + 0.3 * x])


def noise(lon, lat):
    """A map with no spatial structure at all: each point's embedding is random (memorised identity)."""
    seed = np.round(np.asarray(lon) * 1e7).astype(np.int64) * 1_000_003 + np.round(np.asarray(lat) * 1e7).astype(np.int64)
    return np.stack([np.random.default_rng(abs(int(s))).normal(size=4) for s in seed])


def constant(lon, lat):
    return np.tile([0.5, -1.0, 2.0, 0.1], (len(lon), 1))


def metrics(top5: float, n: int = 500, best_epoch: int = 3, epochs_run: int = 10, stopped: str = "early_stopping"):
    return {"val_top1": top5 / 4, "val_top5": top5, "chance_top1": 1.0 / n, "best_epoch": best_epoch,
            "epochs_run": epochs_run, "stopped": stopped, "n_train": 4000}


def test_retrieval_against_chance():
    r = dg.retrieval_summary(metrics(0.2, n=500))
    assert r["n_candidates"] == 500 and r["chance_top5"] == pytest.approx(0.01)
    assert r["lift_top5"] == pytest.approx(20.0)
    assert r["z_top5"] == pytest.approx((0.2 - 0.01) / math.sqrt(0.01 * 0.99 / 500))
    assert dg.retrieval_summary({}) is None and dg.retrieval_summary(None) is None
    # A trained bundle whose held-out rows were too few to rank says so (not "not recorded").
    d = dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, {"best_epoch": 2, "epochs_run": 5, "stopped": "early_stopping"})
    assert d["retrieval"] is None and any("fewer than 5 held-out" in r for r in d["reasons"])


def test_smooth_map_with_good_retrieval_is_ok():
    d = dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, metrics(0.2), jitter_m=50.0)
    assert d["verdict"] == "ok" and d["reasons"] == [] and d["advice"] == []
    v = d["variation"]
    assert v["spread"] > dg.SPREAD_WEAK and 1.0 <= v["effective_dims"] <= 4.0
    shares = [s["share"] for s in v["scales"]]
    # TINY_SPEC's finest wavelength is 300 m: 0.3, 1.2, 4.8 km all fit in the ~5 km median distance
    assert [s["separation_m"] for s in v["scales"]] == [300.0, 1200.0, 4800.0]
    assert all(np.isfinite(shares)) and shares[0] < 0.05 and shares == sorted(shares)
    assert json.loads(json.dumps(d, allow_nan=False)) == d  # plain JSON for metrics.json


def test_constant_encoder_fails_with_advice_to_train_more():
    d = dg.diagnose(constant, OLINDA_BOX, TINY_SPEC, metrics(0.011, n=500, best_epoch=9, stopped="epochs"))
    assert d["verdict"] == "failed"
    assert d["variation"]["spread"] == pytest.approx(0.0, abs=1e-12)
    assert any("at chance" in r for r in d["reasons"]) and any("nearly constant" in r for r in d["reasons"])
    assert "train.epochs" in d["advice"][0] and "still improving" in d["advice"][0]
    assert "valid fractions" in d["advice"][-1]
    # Stopped early on a plateau: more locations come first.
    d = dg.diagnose(constant, OLINDA_BOX, TINY_SPEC, metrics(0.011, n=500, best_epoch=3, stopped="early_stopping"))
    assert d["verdict"] == "failed" and "locations.n; 4000 trained on" in d["advice"][0]
    # Without retrieval (an older or imported bundle): the variation alone still fails it.
    d = dg.diagnose(constant, OLINDA_BOX, TINY_SPEC, None)
    assert d["verdict"] == "failed" and d["retrieval"] is None
    assert any("not available" in r for r in d["reasons"])
    assert "train.epochs" in d["advice"][0] and "locations.n" in d["advice"][1]


def test_a_little_variation_or_weak_retrieval_is_weak():
    def faint(lon, lat):
        return constant(lon, lat) + 0.4 * smooth(lon, lat)

    d = dg.diagnose(faint, OLINDA_BOX, TINY_SPEC, metrics(0.2))
    assert dg.SPREAD_FAILED <= d["variation"]["spread"] < dg.SPREAD_WEAK
    assert d["verdict"] == "weak" and any("varies little" in r for r in d["reasons"])
    d = dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, metrics(0.03))  # 3x chance
    assert d["verdict"] == "weak" and any("retrieval is weak" in r for r in d["reasons"])
    # Few candidates: the bar is half the largest possible lift (30 candidates: 3x, i.e. top-5 0.5).
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, metrics(0.55, n=30))["verdict"] == "ok"
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, metrics(0.45, n=30))["verdict"] == "weak"
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, metrics(0.3, n=80))["verdict"] == "weak"  # 4.8x < 5x


def test_noise_at_the_finest_scale_is_weak_with_advice_on_wavelength_and_jitter():
    d = dg.diagnose(noise, OLINDA_BOX, TINY_SPEC, metrics(0.2), jitter_m=20.0, n_points=1024)
    fine = d["variation"]["scales"][0]
    assert fine["share"] > dg.FINEST_SHARE_NOISE
    assert d["verdict"] == "weak" and any("finest scale" in r for r in d["reasons"])
    assert any("min_wavelength_m" in a and "600 m" in a for a in d["advice"])
    assert any("train.jitter_m (now 20 m; try about 90 m)" in a for a in d["advice"])
    d = dg.diagnose(noise, OLINDA_BOX, TINY_SPEC, metrics(0.2), jitter_m=100.0, n_points=1024)
    assert not any("jitter" in a for a in d["advice"])  # already enough jitter for the doubled wavelength


def _history(val_losses, train_losses=None):
    train_losses = train_losses or [5.0 - 0.2 * i for i in range(len(val_losses))]
    pairs = enumerate(zip(val_losses, train_losses, strict=True))
    return [{"epoch": i, "val_loss": v, "train_loss": t} for i, (v, t) in pairs]


def test_held_out_loss_rising_while_training_loss_falls_is_memorising():
    # The Olinda kit's 400 m encoder without jitter: held-out loss 6.28 at epoch 2, 6.64 at the best epoch 11.
    mem = _history([6.70, 6.36, 6.28, 6.30, 6.33, 6.36, 6.39, 6.43, 6.49, 6.53, 6.57, 6.64])
    m = metrics(0.078, n=1975, best_epoch=11, epochs_run=12, stopped="epochs")
    d = dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, m, history=mem, jitter_m=0.0)
    loss = d["held_out_loss"]
    assert loss["minimum_epoch"] == 2 and loss["rise"] == pytest.approx(0.36) and loss["train_loss_fell"]
    assert d["verdict"] == "weak" and any("memorising" in r for r in d["reasons"])
    assert any("raise min_wavelength_m" in a and "600 m" in a for a in d["advice"])
    assert any("train.jitter_m (now 0 m" in a for a in d["advice"])
    assert not any("more epochs" in a for a in d["advice"])  # more epochs would memorise more
    # The demo's 1,000 m / 150 m encoder: the held-out loss stays at its minimum (+0.01): ok.
    demo = _history([6.78, 6.25, 5.98, 5.87, 5.82, 5.79, 5.76, 5.73, 5.728, 5.723, 5.730, 5.731])
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, m, history=demo)["verdict"] == "ok"
    # Too few held-out candidates to judge a noisy loss; a training loss that rose too is not memorising.
    few = metrics(0.3, n=150, best_epoch=11, epochs_run=12, stopped="epochs")
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, few, history=mem)["verdict"] == "ok"
    both = _history([6.70, 6.36, 6.28, 6.30, 6.64], [5.0, 4.0, 3.0, 3.5, 3.6])
    m5 = metrics(0.078, n=1975, best_epoch=4, epochs_run=5, stopped="epochs")
    assert dg.diagnose(smooth, OLINDA_BOX, TINY_SPEC, m5, history=both)["verdict"] == "ok"
    assert dg.held_out_loss(None, m) is None and dg.held_out_loss(mem, {}) is None


def test_footprint_small_for_the_wavelength_is_weak_with_advice_to_lower_it():
    spec = json.loads(json.dumps(TINY_SPEC))
    spec["encodings"][0]["min_wavelength_m"] = 20000.0
    d = dg.diagnose(smooth, OLINDA_BOX, spec, metrics(0.2))
    assert d["verdict"] == "weak" and d["variation"]["scales"] == []
    assert any("lower min_wavelength_m" in a for a in d["advice"])


def test_finest_wavelength_of_encoders():
    assert dg.finest_wavelength_m(TINY_SPEC) == 300.0
    sh = {"encodings": [{"type": "spherical_harmonics", "degrees": 40}]}
    assert dg.finest_wavelength_m(sh) == pytest.approx(2 * math.pi * 6371.0088e3 / 40)
    assert dg.finest_wavelength_m({"encodings": [{"type": "equal_earth"}]}) is None


def test_constant_bundle_on_demand_and_inspect(tmp_path, capsys):
    """A bundle without stored diagnostics (older, imported): inspect computes the variation part."""
    from geoembed.cli import main
    from geoembed.inspect import describe

    torch.manual_seed(0)
    enc = build_coordinate_encoder(TINY_SPEC)
    last = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    path = save_bundle(tmp_path / "const", enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=2.0,
                       config={"train": {"jitter_m": 30.0}}, metrics={}, data_fingerprint="test")
    info = describe(path)
    diag = info["training_diagnostics"]
    assert diag["computed"] == "on demand" and diag["verdict"] == "failed" and diag["retrieval"] is None
    assert "training_diagnostics" not in describe(path, diagnostics=False)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "training_diagnostics:" in out and "verdict: failed" in out and "nearly constant" in out
    assert main(["inspect", "--no-diagnostics", str(path)]) == 0
    assert "training_diagnostics" not in capsys.readouterr().out


def test_older_untrained_bundle_still_inspects(tmp_path, monkeypatch):
    from geoembed.errors import InputError
    from geoembed.inspect import describe

    path = make_tiny_bundle(tmp_path / "b")
    b = load_bundle(path)  # seal verified: nothing about diagnostics is sealed
    diag = dg.bundle_diagnostics(b)
    assert diag["verdict"] in ("ok", "weak", "failed") and diag["retrieval"] is None
    assert dg.bundle_diagnostics(b, compute=False) is None

    def fail(*args, **kwargs):
        raise InputError("could not draw 4096 points inside the region")

    monkeypatch.setattr(dg, "variation", fail)  # the description stands without the diagnostics
    info = describe(path)
    assert info["embedding_dim"] == 4 and "could not draw" in info["training_diagnostics"]["error"]


def test_trained_bundle_stores_diagnostics_and_outputs_are_unchanged(tmp_path, monkeypatch):
    """A tiny training run stores finite diagnostics and a verdict in metrics.json; inspect shows them
    without recomputing; the weights and geoembed.json are byte-identical to a run whose diagnostics fail
    (they only read the trained encoder), and such a run still writes its bundle."""
    from test_train import make_world, tiny_config

    from geoembed.inspect import describe
    from geoembed.train import loop, train

    world = make_world(tmp_path / "w", n=400)
    summary = train(tiny_config(world, epochs=2))
    bundle = Path(summary["bundle"])
    stored = json.loads((bundle / "metrics.json").read_text())["diagnostics"]
    assert stored["verdict"] in ("ok", "weak", "failed") and stored["retrieval"]["n_candidates"] > 0
    v = stored["variation"]
    assert all(math.isfinite(v[k]) for k in ("spread", "raw_variance_share", "effective_dims"))
    assert v["scales"] and all(math.isfinite(s["share"]) for s in v["scales"])
    assert summary["metrics"]["diagnostics"] == stored
    assert stored["held_out_loss"]["minimum_epoch"] <= summary["best_epoch"]
    # Recomputed for the bundle (as for one written before the diagnostics): the history comes from the
    # run folder beside it, and the figures are the stored ones.
    b = load_bundle(bundle)
    b.metrics.pop("diagnostics")
    again = dg.bundle_diagnostics(b)
    assert again["computed"] == "on demand" and again["held_out_loss"] == stored["held_out_loss"]
    assert again["verdict"] == stored["verdict"] and again["retrieval"] == stored["retrieval"]
    b.metrics["best_val_loss"] = 123.0  # a run folder of another run: its history is not used
    assert dg.bundle_diagnostics(b)["held_out_loss"] is None

    def boom(*args, **kwargs):
        raise RuntimeError("diagnostics broke")

    monkeypatch.setattr(loop, "diagnose", boom)
    monkeypatch.setattr(dg, "diagnose", boom)  # inspect must not recompute either
    info = describe(bundle)
    assert info["training_diagnostics"]["computed"] == "after training"
    assert info["training_diagnostics"]["verdict"] == stored["verdict"]

    other = tmp_path / "w2"
    other.mkdir()
    for name in ("locations.parquet", "views"):
        os.symlink(world / name, other / name)
    again = Path(train(tiny_config(other, epochs=2))["bundle"])
    assert "diagnostics" not in json.loads((again / "metrics.json").read_text())
    for name in ("weights.safetensors", "geoembed.json"):
        assert (again / name).read_bytes() == (bundle / name).read_bytes(), name


def test_train_command_prints_the_verdict_and_reprints_it_when_up_to_date(tmp_path, capsys):
    import yaml
    from test_train import make_world, tiny_config

    from geoembed.cli import main

    world = make_world(tmp_path / "w", n=400)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(world, epochs=1).model_dump(mode="json")))
    assert main(["train", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "training verdict:" in out and "held-out retrieval among" in out and "spread" in out
    assert main(["train", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out and "training verdict:" in out
