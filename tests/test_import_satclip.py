"""geoembed import satclip: checkpoints laid out like SatCLIP's (Lightning dict, hyper_parameters,
state_dict with the location network under model.location.nnet and model.nnet), compared with an
independent evaluation of SatCLIP's formulas (scipy's associated Legendre functions for 'closed-form',
the sympy expressions of SatCLIP's generator for 'analytic', a numpy SIREN)."""

from __future__ import annotations

import math
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.special import lpmv

from geoembed.cli import main
from geoembed.errors import InputError
from geoembed.importers.satclip import import_satclip
from geoembed.io.bundle import CARD_FIELDS, load_bundle

HP = {  # SatCLIPLightningModule's init arguments, as save_hyperparameters() stores them
    "embed_dim": 8, "image_resolution": 224, "vision_layers": "moco_resnet18", "vision_width": 768,
    "vision_patch_size": 32, "in_channels": 13, "le_type": "sphericalharmonics", "pe_type": "siren",
    "frequency_num": 16, "max_radius": 260, "min_radius": 1, "legendre_polys": 6,
    "harmonics_calculation": "closed-form", "sh_embedding_dims": 32, "learning_rate": 1e-4,
    "weight_decay": 0.01, "num_hidden_layers": 2, "capacity": 16,
}


def _siren_weights(hp: dict, seed: int = 0, dtype=torch.float64) -> OrderedDict:
    """SatCLIP's SirenNet initialisation (first layer U(-1/in, 1/in), then U(-sqrt(6/in)/w0, ...))."""
    g = torch.Generator().manual_seed(seed)
    dims = [hp["legendre_polys"] ** 2] + [hp["capacity"]] * hp["num_hidden_layers"]
    out = OrderedDict()
    for i in range(hp["num_hidden_layers"]):
        bound = 1 / dims[i] if i == 0 else math.sqrt(6 / dims[i])
        out[f"layers.{i}.weight"] = (torch.rand(dims[i + 1], dims[i], generator=g, dtype=dtype) * 2 - 1) * bound
        out[f"layers.{i}.bias"] = (torch.rand(dims[i + 1], generator=g, dtype=dtype) * 2 - 1) * bound
    bound = math.sqrt(6 / dims[-1])
    out["last_layer.weight"] = (torch.rand(hp["embed_dim"], dims[-1], generator=g, dtype=dtype) * 2 - 1) * bound
    out["last_layer.bias"] = (torch.rand(hp["embed_dim"], generator=g, dtype=dtype) * 2 - 1) * bound
    return out


def _checkpoint(path, hp=None, *, dtype=torch.float64, seed=0, hparams_obj=None, state_extra=None):
    hp = dict(HP if hp is None else hp)
    siren = _siren_weights(hp, seed, dtype)
    state = OrderedDict()
    state["model.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    state["model.visual.conv1.weight"] = torch.randn(4, 13, 3, 3)
    for k, v in siren.items():  # SatCLIP registers the network twice: model.nnet and model.location.nnet
        state[f"model.nnet.{k}"] = v
    for k, v in siren.items():
        state[f"model.location.nnet.{k}"] = v
    state.update(state_extra or {})
    ckpt = {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.1.2", "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "best_model_score": torch.tensor(1.5), "best_model_path": "/ckpts/e3.ckpt", "dirpath": "/ckpts"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-4, "weight_decay": 0.0, "params": [0]}]}],
        "lr_schedulers": [], "hparams_name": "kwargs",
        "hyper_parameters": hp if hparams_obj is None else hparams_obj(hp),
    }
    torch.save(ckpt, path)
    return path, siren


# ------------------------------------------------------------------ independent evaluation (numpy/scipy/sympy)
def _closed_form(L: int, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """SatCLIP 'closed-form': sqrt(2) K P_l^|m|(cos theta) {cos m phi, sin |m| phi}, P with the
    Condon-Shortley phase (scipy's lpmv), theta = lat + 90, phi = lon + 180 (radians)."""
    theta, phi = np.radians(lat + 90), np.radians(lon + 180)
    cols = []
    for ell in range(L):
        for m in range(-ell, ell + 1):
            am = abs(m)
            k = math.sqrt((2 * ell + 1) * math.factorial(ell - am) / (4 * math.pi * math.factorial(ell + am)))
            p = lpmv(am, ell, np.cos(theta))
            trig = 1.0 if m == 0 else math.sqrt(2) * (np.cos(m * phi) if m > 0 else np.sin(am * phi))
            cols.append(k * p * trig)
    return np.stack(cols, axis=1)


def _analytic(L: int, lon: np.ndarray, lat: np.ndarray, m0_pi: bool = True) -> np.ndarray:
    """SatCLIP 'analytic': its generator's sympy expressions (sympy's assoc_legendre, (-1)^m, and for
    m = 0 ``sqrt((2l+1)/4 * pi)``), evaluated numerically."""
    from sympy import Abs, Symbol, assoc_legendre, cos, factorial, lambdify, pi, sin, sqrt

    th, ph = Symbol("theta"), Symbol("phi")
    theta, phi = np.radians(lat + 90), np.radians(lon + 180)
    cols = []
    for ell in range(L):
        for m in range(-ell, ell + 1):
            if m == 0:
                norm = sqrt((2 * ell + 1) / 4 * pi) if m0_pi else sqrt((2 * ell + 1) / (4 * pi))
                expr = norm * assoc_legendre(ell, 0, cos(th))
            else:
                plm = assoc_legendre(ell, Abs(m), cos(th))
                pbar = sqrt(((2 * ell + 1) / (4 * pi)) * (factorial(ell - Abs(m)) / factorial(ell + Abs(m)))) * plm
                expr = (-1) ** m * sqrt(2) * pbar * (sin(Abs(m) * ph) if m < 0 else cos(m * ph))
            f = lambdify((th, ph), expr, "numpy")
            cols.append(np.broadcast_to(np.asarray(f(theta, phi), dtype=np.float64), theta.shape))
    return np.stack(cols, axis=1)


def _siren_np(siren: OrderedDict, x: np.ndarray, nh: int) -> np.ndarray:
    h = x
    for i in range(nh):
        w, b = siren[f"layers.{i}.weight"].double().numpy(), siren[f"layers.{i}.bias"].double().numpy()
        h = np.sin((30.0 if i == 0 else 1.0) * (h @ w.T + b))
    return h @ siren["last_layer.weight"].double().numpy().T + siren["last_layer.bias"].double().numpy()


def _coords(n=500, seed=0):
    rng = np.random.default_rng(seed)
    lon = np.r_[rng.uniform(-180, 180, n), 0, 0, 180, -180, 179.999, 12.5]
    lat = np.r_[np.degrees(np.arcsin(rng.uniform(-1, 1, n))), 90, -90, 0, 0, -60, 89.999]
    return lon, lat


@pytest.mark.parametrize("harm", ["closed-form", "analytic"])
def test_matches_independent_evaluation(tmp_path, harm):
    hp = dict(HP, harmonics_calculation=harm)
    ckpt, siren = _checkpoint(tmp_path / "satclip.ckpt", hp)
    bundle = load_bundle(import_satclip(ckpt, tmp_path / "b"))
    lon, lat = _coords()
    Y = _closed_form(6, lon, lat) if harm == "closed-form" else _analytic(6, lon, lat)
    ref = _siren_np(siren, Y, 2)
    # float64 kept: the encoder itself agrees with the float64 reference to ~1e-12 ...
    assert bundle.encoder.dtype == torch.float64
    with torch.inference_mode():
        enc = bundle.encoder(lon=torch.from_numpy(lon), lat=torch.from_numpy(lat)).numpy()
    np.testing.assert_allclose(enc, ref, rtol=0, atol=1e-10)
    # ... and the bundle's embeddings are those, rounded to float32.
    np.testing.assert_allclose(bundle.embed(lon, lat), ref.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert bundle.meta["encoder"]["encodings"][0]["convention"] == f"satclip-{harm}"
    card = bundle.card
    for key in CARD_FIELDS:
        assert card[key]
    assert card["output_dim"] == 8 and card["hyper_parameters"]["legendre_polys"] == 6
    assert "satclip.ckpt" in card["source"] and "epoch 3" in card["source"]
    assert card["effective_resolution_km"] == pytest.approx(20_000 / 6, rel=1e-3)


def test_analytic_m0_scale_option_and_float32(tmp_path):
    hp = dict(HP, harmonics_calculation="analytic", legendre_polys=4)
    ckpt, siren = _checkpoint(tmp_path / "a.ckpt", hp, dtype=torch.float32)
    lon, lat = _coords(100, seed=2)
    b = load_bundle(import_satclip(ckpt, tmp_path / "b", analytic_m0_scale=1.0))
    assert b.encoder.dtype == torch.float32 and b.meta["encoder"]["dtype"] == "float32"
    ref = _siren_np(siren, _analytic(4, lon, lat, m0_pi=False), 2)
    np.testing.assert_allclose(b.embed(lon, lat), ref, rtol=1e-4, atol=1e-4)
    pi_version = load_bundle(import_satclip(ckpt, tmp_path / "c"))
    assert np.abs(pi_version.embed(lon, lat) - b.embed(lon, lat)).max() > 1e-3


def test_lightning_attributedict_hparams_load_without_lightning(tmp_path, monkeypatch):
    """Lightning may store hyper-parameters as its AttributeDict (a dict subclass): allowlisted as a dict."""
    mod = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = mod.__name__, "AttributeDict"
    mod.AttributeDict = AttributeDict
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    ckpt, siren = _checkpoint(tmp_path / "l.ckpt", hparams_obj=AttributeDict)
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities", mod.__name__):
        monkeypatch.delitem(sys.modules, name)
    b = load_bundle(import_satclip(ckpt, tmp_path / "b"))
    lon, lat = _coords(50)
    np.testing.assert_allclose(b.embed(lon, lat), _siren_np(siren, _closed_form(6, lon, lat), 2).astype(np.float32),
                               rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ bad checkpoints
def _no_bundle(path) -> None:
    assert not path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]


@pytest.mark.parametrize("change, pattern", [
    ({"time": -1}, r"unknown hyper-parameter\(s\) \['time'\]"),
    ({"le_type": "grid"}, r"le_type='grid'"),
    ({"harmonics_calculation": "shtools"}, r"harmonics_calculation='shtools'"),
    ({"harmonics_calculation": "discretized"}, r"harmonics_calculation='discretized'"),
    ({"pe_type": "fcnet"}, r"pe_type='fcnet'"),
    ({"legendre_polys": "10"}, r"legendre_polys='10' is not an integer"),
])
def test_unknown_or_unsupported_hparams(tmp_path, change, pattern):
    hp = dict(HP)
    ckpt, _ = _checkpoint(tmp_path / "x.ckpt", hp)
    bad = torch.load(ckpt, weights_only=True)
    bad["hyper_parameters"].update(change)
    torch.save(bad, tmp_path / "bad.ckpt")
    with pytest.raises(InputError, match=r"bad\.ckpt.*" + pattern):
        import_satclip(tmp_path / "bad.ckpt", tmp_path / "b")
    _no_bundle(tmp_path / "b")


def test_ignored_hparam_and_missing_one(tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "x.ckpt", dict(HP, time=-1))
    import_satclip(ckpt, tmp_path / "b", ignore_hparams=["time"])
    hp = dict(HP)
    del hp["capacity"]
    ckpt, _ = _checkpoint(tmp_path / "y.ckpt", dict(HP))
    bad = torch.load(ckpt, weights_only=True)
    bad["hyper_parameters"] = hp
    torch.save(bad, tmp_path / "y.ckpt")
    with pytest.raises(InputError, match=r"y\.ckpt: hyper_parameters lack \['capacity'\]"):
        import_satclip(tmp_path / "y.ckpt", tmp_path / "c")


def test_shapes_disagree_with_hparams(tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "x.ckpt", dict(HP))
    bad = torch.load(ckpt, weights_only=True)
    bad["hyper_parameters"]["legendre_polys"] = 7  # the tensors were made for L = 6 (36 inputs)
    torch.save(bad, tmp_path / "x.ckpt")
    with pytest.raises(InputError, match=r"x\.ckpt.*'model\.location\.nnet\.layers\.0\.weight' has shape "
                                         r"\(16, 36\), expected \(16, 49\)"):
        import_satclip(tmp_path / "x.ckpt", tmp_path / "b")
    _no_bundle(tmp_path / "b")


def test_differing_copies_and_non_tensor_values(tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "x.ckpt", state_extra={})
    bad = torch.load(ckpt, weights_only=True)
    bad["state_dict"]["model.nnet.last_layer.bias"] = bad["state_dict"]["model.nnet.last_layer.bias"] + 1
    torch.save(bad, tmp_path / "x.ckpt")
    with pytest.raises(InputError, match=r"x\.ckpt: location networks under both 'model\.location\.nnet\.' and "
                                         r"'model\.nnet\.' differ"):
        import_satclip(tmp_path / "x.ckpt", tmp_path / "b")
    import_satclip(tmp_path / "x.ckpt", tmp_path / "b", prefix="model.location.nnet.")  # chosen explicitly
    bad["state_dict"]["model.location.nnet.layers.1.bias"] = "oops"
    torch.save(bad, tmp_path / "y.ckpt")
    with pytest.raises(InputError, match=r"y\.ckpt: state_dict: 'model\.location\.nnet\.layers\.1\.bias' holds a str"):
        import_satclip(tmp_path / "y.ckpt", tmp_path / "c")


class Hparams(dict):
    """A pickled class where plain dicts are expected."""


def test_pickled_object_is_refused(tmp_path):
    ckpt, _ = _checkpoint(tmp_path / "p.ckpt", hparams_obj=Hparams)
    with pytest.raises(InputError, match=r"p\.ckpt holds a pickled object \([\w.]*Hparams\)"):
        import_satclip(ckpt, tmp_path / "b")
    _no_bundle(tmp_path / "b")


def test_cli(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path / "c.ckpt")
    card = tmp_path / "card.yaml"
    card.write_text("licence: MIT\ntraining_data: S2-100K (test)\n")
    out = tmp_path / "b"
    assert main(["import", "satclip", str(ckpt), "--output", str(out), "--card", str(card),
                 "--footprint-bbox", "-10", "35", "30", "60", "--out-of-support-km", "100"]) == 0
    assert "8-d encoder" in capsys.readouterr().out
    b = load_bundle(out)
    assert b.card["licence"] == "MIT" and b.card["training_data"] == "S2-100K (test)"
    assert b.out_of_support_km == 100 and b.footprint.bounds == (-10, 35, 30, 60)
    from geoembed.io.seal import seal_fingerprint

    assert b.fingerprint == seal_fingerprint(b.meta["seal"])  # imported bundles are sealed
    assert main(["import", "satclip", str(tmp_path / "none.ckpt"), "--output", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "none.ckpt does not exist" in err and "Traceback" not in err
