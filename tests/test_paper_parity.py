"""Reference parity: configs/paper.yaml builds the reference architecture (PAPER.md, "Reference code, layer
by layer"), layer by layer and parameter by parameter, and each parity option does what it says: SIREN
dropout (training only, never in a bundle), no weight decay on biases / norms / the temperature, input
scaling by fixed divisors, the head without a norm, the unclamped temperature and the random split.
The defaults leave earlier runs' fingerprints as they were."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from geoembed.config import load_config, parse_config
from geoembed.errors import ConfigError
from geoembed.nn.encodings import SphericalHarmonics
from geoembed.nn.losses import ContrastiveLoss
from geoembed.nn.networks import Siren, build_coordinate_encoder
from geoembed.nn.views import HEX_MASK_3X3, FeatureHead, MaskedHexConv2d, ResNet18
from geoembed.train import MultiViewModel, coordinate_spec, make_optimizer, normalise_array, random_split
from geoembed.train.checkpoint import run_fingerprint

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper.yaml"
# The paper's inputs: 512-d features of the frozen ResNet-18 (computed once, outside the model) and the
# 6 x 7 x 7 OSM hex tensor.
SHAPES = {"sentinel2": {"features": (512,)}, "osm": {"hex": (6, 7, 7)}}
KINDS = {"sentinel2": "raster", "osm": "osm"}


def paper_model(seed: int = 0) -> tuple[MultiViewModel, object]:
    tc = load_config(PAPER).train
    lon, lat = np.array([-9.0, 2.3, 24.9]), np.array([38.7, 48.9, 60.2])  # the harmonics use no data
    torch.manual_seed(seed)
    return MultiViewModel(tc, SHAPES, coordinate_spec(tc, lon, lat), tc.views, KINDS), tc


def paper_batch(n: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"lon": torch.rand(n, generator=g, dtype=torch.float64) * 30 - 10,
            "lat": torch.rand(n, generator=g, dtype=torch.float64) * 25 + 36,
            "inputs": {"sentinel2": {"features": torch.rand(n, 512, generator=g)},
                       "osm": {"hex": torch.rand(n, 6, 7, 7, generator=g)}},
            "valid": {"sentinel2": torch.ones(n, dtype=torch.bool), "osm": torch.ones(n, dtype=torch.bool)}}


def _describe(m: nn.Module) -> tuple | None:
    """A layer as (type, shape...); None for a no-op (Identity)."""
    if isinstance(m, MaskedHexConv2d):
        return ("MaskedHexConv2d", m.in_channels, m.out_channels, m.kernel_size, int(m.hex_mask.sum()))
    if isinstance(m, nn.Linear):
        return ("Linear", m.in_features, m.out_features)
    if isinstance(m, nn.BatchNorm2d):
        return ("BatchNorm2d", m.num_features)
    if isinstance(m, nn.LayerNorm):
        return ("LayerNorm", *m.normalized_shape)
    if isinstance(m, SphericalHarmonics):
        return ("SphericalHarmonics", m.degrees, m.out_dim)
    if type(m).__name__ == "_Sine":
        return ("Sine", m.w0, m.dropout)
    if isinstance(m, ContrastiveLoss):
        return ("ContrastiveLoss", m.mode, "clamped" if m.max_log_scale is not None else "unclamped")
    if isinstance(m, nn.Identity):
        return None
    return (type(m).__name__,)


def layer_list(module: nn.Module, **inputs) -> list[tuple]:
    """The layers ``module`` runs on ``inputs``, in call order: every leaf module, and the functional ReLUs
    called outside them (the hex encoder calls ``torch.relu``)."""
    calls: list[tuple] = []
    depth = [0]

    def pre(m, args):
        d = _describe(m)
        if d is not None:
            calls.append(d)
        depth[0] += 1

    def post(m, args, out):
        depth[0] -= 1

    class FunctionalRelu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if depth[0] == 0 and func in (torch.relu, F.relu, torch.relu_, F.relu_):
                calls.append(("ReLU",))
            return func(*args, **(kwargs or {}))

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [h for m in leaves for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with FunctionalRelu(), torch.no_grad():
            module(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return calls


def test_paper_model_layers_match_the_reference_architecture():
    """PAPER.md: location SH (L = 8 -> 64) -> SIREN 2 x 128 (w0 30, hidden w0 1, dropout 0.5) -> Linear d;
    image head Linear 512 -> 32 without a norm; OSM two masked 3x3 hex convs (16, 8) with BatchNorm + ReLU,
    flatten 392 -> Linear 16 -> LayerNorm; fusion Linear (32 + 16) -> 128 -> ReLU -> Linear d ->
    LayerNorm; one symmetric InfoNCE (fused views vs location) with an unclamped logit scale. The model's
    forward runs the coordinate encoder, then the views (config order), the fusion and the loss."""
    model, tc = paper_model()
    d = tc.embedding_dim
    assert d == 16
    location = [("SphericalHarmonics", 8, 64),
                ("Linear", 64, 128), ("Sine", 30.0, 0.5),
                ("Linear", 128, 128), ("Sine", 1.0, 0.5),
                ("Linear", 128, d)]
    image = [("Linear", 512, 32)]
    osm = [("MaskedHexConv2d", 6, 16, (3, 3), 7), ("BatchNorm2d", 16), ("ReLU",),
           ("MaskedHexConv2d", 16, 8, (3, 3), 7), ("BatchNorm2d", 8), ("ReLU",),
           ("Flatten",), ("Linear", 8 * 7 * 7, 16), ("LayerNorm", 16)]
    fusion = [("Linear", 32 + 16, 128), ("ReLU",), ("Linear", 128, d), ("LayerNorm", d)]
    loss = [("ContrastiveLoss", "fused", "unclamped")]
    assert layer_list(model, **paper_batch()) == location + image + osm + fusion + loss
    # Float64 coordinate encoder; the temperature starts at 0.07 and is a learnable logit scale.
    assert model.coord.dtype == torch.float64
    assert isinstance(model.loss.log_scale, nn.Parameter) and model.loss.log_scale.numel() == 1
    assert model.loss.temperature == pytest.approx(0.07)
    # The frozen backbone is not part of the model: its features come precomputed.
    assert not any(isinstance(m, ResNet18) for m in model.modules())


def test_paper_model_trainable_parameter_count():
    """Trainable parameters counted by hand from the shapes above. Convolutions count their STORED kernel
    taps (3 x 3 = 9 per filter and input channel: nn.Conv2d stores all nine and the hex mask is a buffer
    applied in forward; geoembed's convolutions keep their biases although BatchNorm follows). The
    EFFECTIVE count leaves out the 2 masked-out taps of each 3 x 3 kernel (they never get a gradient).
    BatchNorm running statistics and the masks are buffers, not parameters."""
    model, tc = paper_model()
    d = tc.embedding_dim

    def linear(i, o):
        return i * o + o

    def conv(i, o, taps):
        return o * i * taps + o

    image = linear(512, 32)                                               # 16,416 (no norm)
    osm_norms = 2 * 16 + 2 * 8 + 2 * 16                                   # BatchNorm 16, 8; LayerNorm 16
    osm_stored = conv(6, 16, 9) + conv(16, 8, 9) + linear(392, 16) + osm_norms
    osm_effective = conv(6, 16, 7) + conv(16, 8, 7) + linear(392, 16) + osm_norms
    fusion = linear(48, 128) + linear(128, d) + 2 * d
    location = linear(64, 128) + linear(128, 128) + linear(128, d)       # harmonics have no parameters
    temperature = 1
    stored = image + osm_stored + fusion + location + temperature
    effective = image + osm_effective + fusion + location + temperature
    assert (stored, effective) == (60089, 59641)
    assert stored - effective == (16 * 6 + 8 * 16) * 2                   # 2 masked taps per kernel

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert count(model.views["sentinel2"]) == image
    assert count(model.views["osm"]) == osm_stored
    assert count(model.fusion) == fusion
    assert count(model.coord) == location
    assert count(model.loss) == temperature
    assert count(model) == stored
    masked = sum(int((m.hex_mask == 0).sum()) * m.in_channels * m.out_channels
                 for m in model.modules() if isinstance(m, MaskedHexConv2d))
    assert count(model) - masked == effective
    assert int((HEX_MASK_3X3 == 0).sum()) == 2


def test_paper_optimizer_decays_weight_matrices_only():
    model, tc = paper_model()
    assert tc.weight_decay_exclude == ["bias", "norm", "temperature"] and tc.weight_decay == 0.01
    opt = make_optimizer(model, tc, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    free = [names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert sorted(decayed + free) == sorted(names.values())  # every parameter, once
    params = dict(model.named_parameters())
    assert all(params[n].ndim >= 2 for n in decayed), decayed
    norm_prefixes = ("views.osm.parts.hex.norms.", "views.osm.parts.hex.head.2.", "fusion.net.3.")
    assert "loss.log_scale" in free
    for n in free:
        assert n.endswith(".bias") or n.startswith(norm_prefixes) or n == "loss.log_scale", n
    assert {"views.osm.parts.hex.norms.0.weight", "fusion.net.3.weight", "coord.network.net.0.bias"} <= set(free)
    # The coordinate encoder keeps its own learning rate in both of its groups.
    coord_ids = {id(p) for p in model.coord.parameters()}
    for g in opt.param_groups:
        assert g["lr"] == (tc.coord_lr or tc.lr)
        assert {id(p) in coord_ids for p in g["params"]} in ({True}, {False})
    # A step with zero gradients: AdamW only decays, so excluded parameters stay exactly as they were.
    for g in opt.param_groups:
        g["lr"] = 0.5
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        if n in free:
            assert torch.equal(p, before[n]), n
        else:
            torch.testing.assert_close(p, before[n] * (1 - 0.5 * 0.01))


def test_default_optimizer_groups_unchanged():
    """Without weight_decay_exclude: the two groups as before (others, coordinate encoder), both decayed."""
    tc = parse_config({"train": {"coord_lr": 0.002}}).train
    model = MultiViewModel(tc, {"v": {"x": (4,)}}, coordinate_spec(tc, np.array([1.0, 2.0]), np.array([1.0, 2.0])))
    opt = make_optimizer(model, tc, torch.device("cpu"))
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(tc.lr, 0.01), (0.002, 0.01)]
    assert [len(g["params"]) for g in opt.param_groups] == [
        len(list(model.parameters())) - len(list(model.coord.parameters())), len(list(model.coord.parameters()))]


def test_siren_dropout_in_training_only():
    model, _ = paper_model()
    enc = model.coord
    lon = torch.linspace(-10, 20, 64, dtype=torch.float64)
    lat = torch.linspace(36, 60, 64, dtype=torch.float64)
    enc.train()
    torch.manual_seed(0)
    a = enc(lon=lon, lat=lat)
    b = enc(lon=lon, lat=lat)
    assert not torch.equal(a, b)  # dropout draws new masks each call
    enc.eval()
    e1, e2 = enc(lon=lon, lat=lat), enc(lon=lon, lat=lat)
    assert torch.equal(e1, e2)
    # In eval the network is the same function as one built without dropout from the same weights (the
    # state-dict keys do not depend on dropout).
    plain = build_coordinate_encoder(enc.inference_spec)
    plain.load_state_dict(enc.state_dict())
    assert torch.equal(plain.eval()(lon=lon, lat=lat), e1)
    assert "dropout" in enc.spec["network"] and "dropout" not in enc.inference_spec["network"]
    # Dropout sits on the linear output before each hidden sine: a zeroed unit gives sin(0) = 0.
    siren = Siren(4, [256], 3, dropout=0.5).train()
    hidden = siren.net[:2](torch.randn(32, 4))
    assert 0.3 < (hidden == 0).float().mean() < 0.7
    with pytest.raises(ConfigError):
        Siren(4, [8], 3, dropout=1.0)


def test_bundle_of_a_dropout_run_has_no_dropout(tmp_path):
    """A run with SIREN dropout writes a bundle whose spec has none: its encoder is deterministic even in
    train mode, and it holds the run's kept weights under the same keys."""
    from safetensors.torch import load_file
    from test_train import make_world, tiny_config

    from geoembed.io.bundle import load_bundle
    from geoembed.train import train

    wd = make_world(tmp_path / "w", n=300)
    cfg = tiny_config(wd, epochs=1, patience=None).model_dump(mode="json")
    cfg["train"]["coordinate_encoder"]["network"] = {"type": "siren", "hidden": [32, 32], "dropout": 0.5}
    summary = train(parse_config(cfg))
    meta = json.loads((wd / "bundle" / "geoembed.json").read_text())
    assert meta["encoder"]["network"] == {"type": "siren", "hidden": [32, 32], "w0": 30.0, "w0_hidden": 1.0}
    bundle = load_bundle(summary["bundle"])
    assert all(getattr(m, "dropout", 0.0) == 0.0 for m in bundle.encoder.modules())
    lon = torch.linspace(-35.0, -34.9, 20, dtype=torch.float64)
    lat = torch.linspace(-8.1, -8.0, 20, dtype=torch.float64)
    bundle.encoder.train()
    assert torch.equal(bundle.encoder(lon=lon, lat=lat), bundle.encoder(lon=lon, lat=lat))
    best = {k[len("best.coord."):]: v for k, v in
            load_file(str(wd / "train" / "checkpoint" / "state.safetensors")).items() if k.startswith("best.coord.")}
    weights = load_file(str(wd / "bundle" / "weights.safetensors"))
    assert best.keys() == weights.keys() and all(torch.equal(best[k], weights[k]) for k in best)


def test_feature_head_without_norm_and_config_checks():
    assert [type(m) for m in FeatureHead(512, 32, norm="none").net] == [nn.Linear]
    assert [type(m) for m in FeatureHead(512, 32).net] == [nn.Linear, nn.LayerNorm]
    with pytest.raises(ConfigError, match="head_norm"):
        parse_config({"train": {"views": [{"view": "osm", "encoder": "hex", "head_norm": "none"}]}})
    with pytest.raises(ConfigError, match="divide_by"):
        parse_config({"train": {"views": [{"view": "a", "scale": "divide"}]}})
    with pytest.raises(ConfigError, match="divide_by"):
        parse_config({"train": {"views": [{"view": "a", "divide_by": 255}]}})
    with pytest.raises(ConfigError, match="positive"):
        parse_config({"train": {"views": [{"view": "a", "scale": "divide", "divide_by": [1, 0]}]}})
    with pytest.raises(ConfigError, match="divide_by"):
        parse_config({"train": {"views": [{"view": "a", "scale": "divide", "divide_by": "min"}]}})
    with pytest.raises(ConfigError, match="weight_decay_exclude"):
        parse_config({"train": {"weight_decay_exclude": ["bias", "bias"]}})
    with pytest.raises(ConfigError, match="weight_decay_exclude"):
        parse_config({"train": {"weight_decay_exclude": ["biases"]}})
    with pytest.raises(ConfigError, match="dropout"):
        parse_config({"train": {"coordinate_encoder": {"network": {"dropout": 1.0}}}})
    tc = parse_config({"train": {"temperature_min": None, "validation": "random", "patience": None}}).train
    assert tc.temperature_min is None and tc.validation == "random" and tc.patience is None


def test_input_scaling_by_divisors():
    x = np.array([[[1.0, 2.0]], [[4.0, np.nan]]], dtype=np.float32)  # (2 rows, 1 channel, 2)
    np.testing.assert_array_equal(normalise_array(x, None, scale="divide", divide_by=4.0),
                                  [[[0.25, 0.5]], [[1.0, 0.0]]])
    osm = np.ones((3, 6, 7, 7), dtype=np.float32) * np.array([48, 1048, 377, 189, 17, 10],
                                                             dtype=np.float32)[None, :, None, None]
    out = normalise_array(osm, None, scale="divide", divide_by=[48, 1048, 377, 189, 17, 10])
    np.testing.assert_allclose(out, 1.0)
    counts = np.random.default_rng(0).integers(0, 50, size=(20, 6, 7, 7)).astype(np.float32)
    counts[:, 5] = 0  # a channel with no features at all stays 0
    out = normalise_array(counts, None, scale="divide", divide_by="max")
    np.testing.assert_allclose(out.max(axis=(0, 2, 3))[:5], 1.0)
    assert (out[:, 5] == 0).all()
    with pytest.raises(ConfigError, match="6 channels"):
        normalise_array(counts, None, scale="divide", divide_by=[1.0, 2.0], where="train.views[osm].divide_by")
    # The default is the store's per-channel standardisation, as before.
    stats = {"mean": [2.0], "std": [2.0]}
    np.testing.assert_array_equal(normalise_array(x, stats), [[[-0.5, 0.0]], [[1.0, 0.0]]])


def test_standardisation_in_place_equals_the_formula():
    """(x - mean) / std per channel in float32, NaN and infinities to 0; by default the input is left alone,
    with ``copy=False`` it is scaled in place."""
    rng = np.random.default_rng(3)
    x = rng.normal(100.0, 20.0, size=(50, 3, 4, 4)).astype(np.float32)
    x[0, 1, 2, 3], x[4, 0, 0, 0], x[7, 2, 1, 1] = np.nan, np.inf, -np.inf
    stats = {"mean": [100.0, 90.0, 110.0], "std": [20.0, 0.0, 5.0]}  # a zero std divides by 1
    mean = np.float32([100.0, 90.0, 110.0])[None, :, None, None]
    std = np.float32([20.0, 1.0, 5.0])[None, :, None, None]
    want = (x - mean) / std
    want[~np.isfinite(want)] = 0.0
    before = x.copy()
    out = normalise_array(x, stats)
    assert out.dtype == np.float32 and np.array_equal(out, want)
    assert np.array_equal(x, before, equal_nan=True)  # untouched
    inplace = normalise_array(x, stats, copy=False)
    assert np.shares_memory(inplace, x) and np.array_equal(inplace, want)
    ints = rng.integers(0, 255, size=(10, 2, 3, 3)).astype(np.uint8)  # another dtype is converted, not reused
    got = normalise_array(ints, {"mean": [0.0, 1.0], "std": [2.0, 2.0]}, copy=False)
    assert got.dtype == np.float32 and not np.shares_memory(got, ints) and got[0, 1, 0, 0] == (ints[0, 1, 0, 0] - 1) / 2


def test_unclamped_temperature():
    clamped = ContrastiveLoss(temperature_min=0.01)
    free = ContrastiveLoss(temperature_min=None)
    with torch.no_grad():
        clamped.log_scale.fill_(math.log(1000.0))
        free.log_scale.fill_(math.log(1000.0))
    assert clamped.logit_scale().item() == pytest.approx(100.0)
    assert free.logit_scale().item() == pytest.approx(1000.0)
    assert free.temperature == pytest.approx(0.001)
    model, _ = paper_model()
    assert model.loss.max_log_scale is None


def test_random_split():
    tr, va = random_split(1000, 0.1, seed=0)
    assert len(va) == 100 and len(tr) == 900 and not set(tr) & set(va)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    again = random_split(1000, 0.1, seed=0)
    assert np.array_equal(va, again[1]) and not np.array_equal(va, random_split(1000, 0.1, seed=1)[1])


def test_random_validation_in_training_and_scaled_frozen_features(tmp_path):
    """validation: random holds out a random 20% of the 300 rows (not whole blocks); a frozen backbone
    fed 1/255-scaled chips caches other features than one fed standardised chips, and its head has no
    norm."""
    from safetensors.torch import save_file
    from test_train import make_world, tiny_config

    from geoembed.train import load_training_data, train

    wd = make_world(tmp_path / "w", n=300)
    torch.manual_seed(0)
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ResNet18().state_dict().items()}, str(weights))
    data = tiny_config(wd, epochs=1, patience=None, validation="random").model_dump(mode="json")
    view = {"view": "img", "encoder": "resnet18_frozen", "backbone_weights": str(weights), "out_dim": 8}
    data["train"]["views"] = [view]
    standard = load_training_data(parse_config(data))
    data["train"]["views"] = [{**view, "scale": "divide", "divide_by": 255, "head_norm": "none"}]
    cfg = parse_config(data)
    divided = load_training_data(cfg)
    assert len(list((wd / "cache").glob("img-resnet18-*.safetensors"))) == 2
    assert standard.fingerprint != divided.fingerprint
    assert not torch.equal(standard.views["img"].arrays["features"], divided.views["img"].arrays["features"])
    summary = train(cfg, data=divided)
    assert summary["n_val"] == 60 and summary["n_train"] == 240
    blocks = divided.block_id
    _, va = random_split(300, 0.2, seed=cfg.seed)
    assert set(np.unique(blocks[va])) & set(np.unique(blocks[np.setdiff1d(np.arange(300), va)]))


def test_parity_defaults_keep_earlier_fingerprints():
    """The parity options at their defaults leave the run fingerprint as it was before they existed
    (pinned: computed by the code before them), so earlier checkpoints resume and finished bundles are
    reused; set, they change it."""
    base = {"views": [{"view": "img", "encoder": "cnn", "out_dim": 16}],
            "coordinate_encoder": {"network": {"type": "siren", "hidden": [32, 32]}}, "epochs": 3}
    cfg = parse_config({"train": base})
    assert run_fingerprint(cfg, "sha256:data", 0) == \
        "sha256:37c171e7911c5e452a1b7453cd57ec976771dc2331128d59af3b3bc581b359e2"
    changed = [{"weight_decay_exclude": ["bias"]}, {"validation": "random"},
               {"views": [{**base["views"][0], "scale": "divide", "divide_by": 255}]},
               {"coordinate_encoder": {"network": {"type": "siren", "hidden": [32, 32], "dropout": 0.1}}}]
    prints = {run_fingerprint(parse_config({"train": {**base, **c}}), "sha256:data", 0) for c in changed}
    assert len(prints) == len(changed) and run_fingerprint(cfg, "sha256:data", 0) not in prints


def test_paper_config_is_the_reference_configuration():
    tc = load_config(PAPER).train
    enc = tc.coordinate_encoder
    assert [(e.type, e.degrees) for e in enc.encodings] == [("spherical_harmonics", 8)] and enc.dtype == "float64"
    assert enc.network.dropout == 0.5 and enc.network.w0 == 30.0 and enc.network.w0_hidden == 1.0
    assert tc.temperature_min is None and tc.patience is None and tc.epochs == 500
    assert tc.validation == "random" and tc.val_fraction == 0.1 and tc.grad_clip is None
    assert tc.lr == 1e-5 and tc.weight_decay == 0.01 and tc.batch_size == 256 and tc.objective == "fused"
    views = {v.view: v for v in tc.views}
    assert (views["sentinel2"].scale, views["sentinel2"].divide_by, views["sentinel2"].head_norm) == \
        ("divide", 255.0, "none")
    assert views["osm"].divide_by == [48.0, 1048.0, 377.0, 189.0, 17.0, 10.0] and views["osm"].arrays == ["hex"]
    assert os.fspath(views["sentinel2"].backbone_weights).endswith(".safetensors")


def test_parity_options_resume_equals_uninterrupted(tmp_path):
    """With SIREN dropout (global RNG, seeded per epoch), weight-decay groups, an unclamped temperature, float64
    harmonics and a random split, a run killed after one epoch and resumed ends as an uninterrupted one."""
    from test_train import make_world, tiny_config

    from geoembed.train import train

    world = make_world(tmp_path / "w", n=300)
    runs = {}
    for name, stop in (("straight", None), ("resumed", 1)):
        wd = tmp_path / name
        wd.mkdir()
        (wd / "locations.parquet").symlink_to(world / "locations.parquet")
        (wd / "views").symlink_to(world / "views")
        data = tiny_config(wd, epochs=2, patience=None, validation="random", temperature_min=None,
                           weight_decay_exclude=["bias", "norm", "temperature"]).model_dump(mode="json")
        data["train"]["coordinate_encoder"] = {
            "encodings": [{"type": "spherical_harmonics", "degrees": 8}], "dtype": "float64",
            "network": {"type": "siren", "hidden": [32, 32], "dropout": 0.5}}
        cfg = parse_config(data)
        if stop:
            assert train(cfg, stop_after_epochs=stop)["stopped"] == "interrupted"
        runs[name] = train(cfg)
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in runs["straight"]["history"]]
    again = [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in runs["resumed"]["history"]]
    assert strip == again and len(strip) == 2
    assert (tmp_path / "straight" / "bundle" / "weights.safetensors").read_bytes() == \
        (tmp_path / "resumed" / "bundle" / "weights.safetensors").read_bytes()
