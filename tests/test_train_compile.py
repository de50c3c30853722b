"""Training-step modes: the compile / cuda_graph options, the StepRunner's eager step against the
original step arithmetic, a sync-free static-shape step, and torch.compile against eager (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geoembed.config import load_config, parse_config
from geoembed.config.train import TrainConfig
from geoembed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _tiny_dict(**train) -> dict:
    data = load_config(ROOT / "configs" / "tiny.yaml").model_dump(mode="json")
    data["train"].update(train)
    return data


def test_compile_and_cuda_graph_options_are_validated():
    cfg = parse_config(_tiny_dict())
    assert cfg.train.compile == "off" and cfg.train.cuda_graph is False
    for mode in ("off", "default", "reduce-overhead"):
        assert parse_config(_tiny_dict(compile=mode)).train.compile == mode
    with pytest.raises(ConfigError, match=r"train\.compile"):
        parse_config(_tiny_dict(compile="max-autotune"))
    with pytest.raises(ConfigError, match=r"train\.cuda_graph"):
        parse_config(_tiny_dict(compile="reduce-overhead", cuda_graph=True))
    assert parse_config(_tiny_dict(compile="default", cuda_graph=True)).train.cuda_graph is True


def test_step_settings_do_not_change_the_run_fingerprint():
    """compile / cuda_graph are speed settings: a checkpoint resumes across them, and runs made before
    the options existed keep their fingerprint."""
    from geoembed.train.checkpoint import run_fingerprint

    base = parse_config(_tiny_dict())
    other = parse_config(_tiny_dict(compile="default", cuda_graph=True))
    assert run_fingerprint(base, "data", 0) == run_fingerprint(other, "data", 0)
    assert run_fingerprint(base, "data", 0) != run_fingerprint(parse_config(_tiny_dict(lr=0.1)), "data", 0)


def _paper_setup(seed: int = 0, n: int = 512, ema: bool = False, grad_clip: float | None = 0.5):
    """A small paper-shaped model (L = 6) with its data, built identically for every call."""
    from gpu_train import paper_config

    from geoembed.train import MultiViewModel, make_optimizer

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 50 - 10
    lat = torch.rand(n, generator=g, dtype=torch.float64) * 35 + 35
    views = {"image": ({"features": torch.randn(n, 512, generator=g)}, torch.rand(n, generator=g) > 0.2),
             "osm": ({"hex": torch.randn(n, 6, 7, 7, generator=g)}, torch.rand(n, generator=g) > 0.1)}
    tc = paper_config(6, 64)
    tc.lr, tc.grad_clip = 3e-3, grad_clip
    shapes = {"image": {"features": (512,)}, "osm": {"hex": (6, 7, 7)}}
    spec = {"encodings": [{"type": "spherical_harmonics", "degrees": 6}],
            "network": tc.coordinate_encoder.network.spec(), "embedding_dim": 16, "dtype": "float32"}
    model = MultiViewModel(tc, shapes, spec)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    import copy

    ema_model = copy.deepcopy(model).requires_grad_(False) if ema else None
    return model, opt, ema_model, lon, lat, views


def _reference_step(model, opt, ema, lon, lat, views, idx, noise, jitter_m, grad_clip, decay):
    """The trainer's step as it was before StepRunner: gather, jitter, forward, zero_grad, backward,
    clip, AdamW, per-tensor EMA."""
    from geoembed.train.step import jitter_coordinates

    lo, la = jitter_coordinates(lon.index_select(0, idx), lat.index_select(0, idx), noise, jitter_m)
    inputs = {n: {k: a.index_select(0, idx) for k, a in arrs.items()} for n, (arrs, _) in views.items()}
    valid = {n: v.index_select(0, idx) for n, (_, v) in views.items()}
    loss, _ = model(lon=lo, lat=la, inputs=inputs, valid=valid)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(b)
    return loss.detach()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_eager_runner_is_bit_identical_to_the_original_step(cuda_graph):
    """compile off: the StepRunner does exactly the original arithmetic (losses, weights, optimiser state,
    EMA, BatchNorm statistics all equal bit for bit); cuda_graph is ignored on CPU."""
    from geoembed.train import StepRunner

    jitter_m, clip, decay = 300.0, 0.5, 0.9
    a = _paper_setup(ema=True, grad_clip=clip)
    b = _paper_setup(ema=True, grad_clip=clip)
    runner = StepRunner(b[0], b[1], lon=b[3], lat=b[4], views=b[5], grad_clip=clip, jitter_m=jitter_m,
                        ema=b[2], ema_decay=decay, cuda_graph=cuda_graph)
    assert not runner.graphed and runner.cuda_graph is False
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        idx = torch.randperm(512, generator=g)[:64]
        noise = torch.randn(64, 2, generator=g, dtype=torch.float64)
        ref = _reference_step(a[0], a[1], a[2], a[3], a[4], a[5], idx, noise, jitter_m, clip, decay)
        got = runner(idx, noise)
        assert torch.equal(ref, got)
    for (ka, va), (kb, vb) in zip(a[0].state_dict().items(), b[0].state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    for va, vb in zip(a[2].state_dict().values(), b[2].state_dict().values(), strict=True):
        assert torch.equal(va, vb)
    sa, sb = a[1].state_dict()["state"], b[1].state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    # The EMA moved (decay 0.9 over 4 steps) and is not the model.
    assert not torch.equal(a[2].coord.network.net[0].weight, a[0].coord.network.net[0].weight)


def test_resume_uses_this_runs_optimizer_flags(tmp_path):
    """A checkpoint written by a CUDA-graph run (fused, capturable AdamW) resumes on CPU with this run's
    flags and ends where an uninterrupted CPU run ends."""
    from test_train import _fresh, make_world, tiny_config

    from geoembed.train import train

    world = make_world(tmp_path / "w", n=200)
    a, b = _fresh(world, tmp_path, "a"), _fresh(world, tmp_path, "b")
    kw = {"epochs": 2, "patience": None, "batch_size": 32}
    straight = train(tiny_config(a, **kw))
    train(tiny_config(b, **kw), stop_after_epochs=1)
    state = b / "train" / "checkpoint" / "state.json"
    info = json.loads(state.read_text())
    for group in info["param_groups"]:
        group.update(fused=True, capturable=True)
    state.write_text(json.dumps(info))
    resumed = train(tiny_config(b, **kw))
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    groups = json.loads(state.read_text())["param_groups"]  # the checkpoint written after the resume
    assert all(not g["fused"] and not g["capturable"] for g in groups), groups


_SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select",
             "aten::_unique", "aten::unique", "aten::is_nonzero", "aten::equal")


def test_training_step_has_no_host_reads_or_data_dependent_shapes():
    """Gather, forward (with invalid views masked), backward and EMA: no op that reads a device value
    back to the host (a CUDA sync) or makes a data-dependent shape, so the step can be graph-captured.
    (The optimiser is replaced by SGD here: CPU AdamW reads its step counter; fused CUDA AdamW does not.)"""
    from torch.profiler import ProfilerActivity, profile

    from geoembed.train import StepRunner

    model, _, ema, lon, lat, views = _paper_setup(ema=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    runner = StepRunner(model, opt, lon=lon, lat=lat, views=views, grad_clip=0.5, jitter_m=100.0, ema=ema,
                        ema_decay=0.9)
    idx, noise = torch.arange(64), torch.randn(64, 2, dtype=torch.float64)
    runner(idx, noise)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = runner(idx, noise)
    names = {e.name for e in prof.events()}
    assert "aten::index_select" in names and "aten::masked_fill_" in names  # the step was profiled
    assert not names & set(_SYNC_OPS), sorted(names & set(_SYNC_OPS))
    assert loss.shape == () and math.isfinite(float(loss))


def test_masked_rows_leave_the_step_unchanged():
    """Static-shape masking keeps the semantics: a sample whose view is invalid drops out of the fused
    term, so changing its inputs changes neither the loss nor the gradients."""
    from geoembed.train import train_step

    model, opt, _, lon, lat, views = _paper_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    idx = torch.arange(64)
    valid = {n: v.index_select(0, idx) for n, (_, v) in views.items()}
    dropped = ~(valid["image"] & valid["osm"])
    assert 0 < int(dropped.sum()) < 64

    def step(feats):
        inputs = {"image": {"features": feats}, "osm": {"hex": views["osm"][0]["hex"][:64]}}
        loss = train_step(model, opt, lon=lon[:64], lat=lat[:64], inputs=inputs, valid=valid)
        return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    feats = views["image"][0]["features"][:64].clone()
    model.eval()  # BatchNorm on running statistics: batch statistics would mix rows
    l1, g1 = step(feats)
    feats[dropped] = 1e3 * torch.randn(int(dropped.sum()), 512)
    l2, g2 = step(feats)
    assert torch.equal(l1, l2)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(g1, g2, strict=True))


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path):
    """compile: default trains the tiny config to the eager loss (~1e-5); checkpoint and bundle hold
    the plain module's keys (no ``_orig_mod.``), and the run resumes from an eager checkpoint."""
    from safetensors.torch import load_file
    from test_train import _fresh, make_world, tiny_config

    from geoembed.io.bundle import load_bundle
    from geoembed.train import train

    world = make_world(tmp_path / "w", n=400)
    eager = train(tiny_config(_fresh(world, tmp_path, "eager"), epochs=2, patience=None))
    wd = _fresh(world, tmp_path, "compiled")
    train(tiny_config(wd, epochs=2, patience=None), stop_after_epochs=1)  # epoch 0 eager
    compiled = train(tiny_config(wd, epochs=2, patience=None, compile="default"))  # resumes, compiles
    assert compiled["epochs_run"] == 2
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([h[key] for h in compiled["history"]], [h[key] for h in eager["history"]],
                                   rtol=1e-5)
    keys = load_file(str(wd / "train" / "checkpoint" / "state.safetensors")).keys()
    assert keys and not [k for k in keys if "_orig_mod" in k]
    weights = load_file(str(wd / "bundle" / "weights.safetensors")).keys()
    assert weights and not [k for k in weights if "_orig_mod" in k]
    lon, lat = np.full(4, -34.86), np.linspace(-7.99, -7.97, 4)
    np.testing.assert_allclose(load_bundle(wd / "bundle").embed(lon, lat),
                               load_bundle(Path(eager["bundle"])).embed(lon, lat), atol=1e-4)


# Modules absent from the GPU machine (torch, numpy, pyyaml, tqdm, pydantic only).
_BLOCKED = ("rasterio", "geopandas", "zarr", "pyarrow", "pandas", "shapely", "safetensors", "scipy", "h3",
            "sklearn", "dask", "pyogrio", "osmnx", "lightgbm", "statsmodels", "matplotlib")
_RUN_BLOCKED = """
import importlib.machinery, runpy, sys
class Block:  # a blocked module "exists" without an origin (torch probes some) but cannot be imported
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ImportError("not on the GPU machine: " + spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_train.py"] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def _bench(*args: str) -> subprocess.CompletedProcess:
    code = _RUN_BLOCKED.format(blocked=_BLOCKED, args=list(args), script=str(ROOT / "benchmarks" / "gpu_train.py"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_gpu_benchmark_runs_without_the_geo_stack():
    """benchmarks/gpu_train.py imports nothing the GPU machine lacks; modes and --verify run on CPU."""
    r = _bench("--small", "--device", "cpu", "--modes", "off,off+graph")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [x["mode"] for x in rows] == ["off", "off+graph"]
    assert all(x["batch_size"] == 256 and x["samples_per_s"] > 0 and x["eval_s"] > 0 for x in rows)
    assert rows[0]["last_loss"] == rows[1]["last_loss"] and rows[1]["cuda_graph"] is False  # CPU: no graph
    assert "best at batch 256" in r.stdout
    r = _bench("--small", "--device", "cpu", "--verify", "--verify-steps", "3", "--modes", "off,off+graph")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert rows[2]["mode"] == "off+graph" and rows[2]["ok"] and rows[2]["max_rel_loss_diff"] == 0.0


def test_trainconfig_default_compile_is_off():
    assert TrainConfig().compile == "off" and TrainConfig().cuda_graph is False
