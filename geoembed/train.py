"""The trainer: multi-view contrastive training of a coordinate encoder, then a bundle.

``geoembed train -c CONFIG`` reads ``<workdir>/locations.parquet`` and ``<workdir>/views/<name>/``
(row i of every store is locations row i), trains the views' encoders and the coordinate encoder so that
a location's view embedding and its coordinate embedding agree (symmetric InfoNCE, see
:mod:`geoembed.nn.losses`), and writes:

* ``<workdir>/train/``: ``config.yaml`` (resolved), ``metrics.jsonl`` / ``metrics.csv`` (per epoch: loss,
  held-out loss, held-out top-1/top-5 retrieval of each location among the validation locations from its
  views, temperature, time), ``checkpoint/`` (model + optimiser + best weights, safetensors; written
  atomically after every epoch; a killed run resumes from it);
* ``<workdir>/bundle/``: the coordinate encoder of the best epoch (see :mod:`geoembed.io.bundle`).

Validation holds out whole spatial blocks (``block_id``). A fixed seed gives identical results on CPU
(batch order and jitter come from per-epoch generators, so a resumed run equals an uninterrupted one).
Under ``torchrun`` each process takes its slice of every global batch and embeddings are gathered so the
negatives span the global batch; gradients are summed across processes.

Small batches (the paper's 256) are bound by per-kernel launch cost, not arithmetic: an eager step is
~260 kernel launches (gather 6, forward ~113 and backward ~135 under bf16 autocast, fused AdamW a few) and
none of them reads a value back to the host. ``train.cuda_graph`` captures that whole step once in a CUDA
graph and replays it (three launches per step); ``train.compile`` runs the forward/backward through
``torch.compile`` (``default``, or ``reduce-overhead`` for inductor's own CUDA graphs). See
:class:`StepRunner`. With both off the step is the plain eager one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from geoembed.config import Config, load_config, save_resolved
from geoembed.config.train import TrainConfig, ViewEncoderConfig
from geoembed.errors import ConfigError, InputError
from geoembed.geo import continuous_lon, grid_blocks, training_footprint, wrap_lon
from geoembed.io.atomic import atomic_path, atomic_write_text
from geoembed.io.fingerprint import file_fingerprint, text_fingerprint
from geoembed.nn.encodings import EARTH_RADIUS_M
from geoembed.nn.fusion import FusionHead
from geoembed.nn.losses import ContrastiveLoss
from geoembed.nn.networks import CoordinateEncoder, build_coordinate_encoder
from geoembed.nn.views import backbone_features, build_view_encoder, load_resnet18

log = logging.getLogger(__name__)

RUN_DIR = "train"
CHECKPOINT = "checkpoint"
BUNDLE_DIR = "bundle"
# Settings that may change between a run and its resume without invalidating the checkpoint.
_RESUMABLE_KEYS = ("epochs", "patience", "max_minutes", "device", "num_threads", "retrieval_rows", "compile",
                   "cuda_graph")

__all__ = [
    "MultiViewModel",
    "StepRunner",
    "TrainData",
    "ViewData",
    "configure_parser",
    "coordinate_spec",
    "load_training_data",
    "run",
    "make_optimizer",
    "spatial_split",
    "train",
    "train_step",
]


# ============================================================================ data


@dataclass
class ViewData:
    """One view in memory: normalised arrays (missing values = 0) and the per-row valid flag."""

    name: str
    arrays: dict[str, torch.Tensor]
    valid: torch.Tensor
    fingerprint: str
    kind: str | None = None  # the store's view kind (its default encoder serves ``encoder: auto``)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.arrays.items()}


@dataclass
class TrainData:
    """Locations and views, row-aligned."""

    lon: torch.Tensor  # float64 degrees
    lat: torch.Tensor
    block_id: np.ndarray
    views: dict[str, ViewData]
    fingerprint: str
    location_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lon_dev: torch.Tensor | None = None  # copies on the training device (set by train())
    lat_dev: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.lon.shape[0])


def normalise_array(arr: np.ndarray, stats: dict | None, log1p: bool = False) -> np.ndarray:
    """Per-channel (axis 1) standardisation by the store's stats; NaN (no data) becomes 0 afterwards."""
    x = np.asarray(arr, dtype=np.float32)
    if log1p:
        x = np.sign(x) * np.log1p(np.abs(x))
        mean, std = _moments(x)
    elif stats:
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    else:
        mean, std = _moments(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if x.ndim == 1:
        x, shape = x[:, None], (1, -1)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    x = (x - mean.reshape(shape)) / std.reshape(shape)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(x if x.ndim > 1 else x[:, None], 1, 0).reshape((x.shape[1] if x.ndim > 1 else 1), -1)
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmean(flat, 1)), np.nan_to_num(np.nanstd(flat, 1), nan=1.0)


def _load_view(workdir: Path, vc: ViewEncoderConfig, location_ids: np.ndarray, device: str) -> ViewData:
    from geoembed.io.viewstore import ViewStore

    path = workdir / "views" / vc.view
    if not path.exists():
        raise InputError(f"view {vc.view!r}: store {path} does not exist (run `geoembed build` first?)")
    store = ViewStore.open(path)
    if store.n_rows != len(location_ids):
        raise InputError(f"view store {path} has {store.n_rows} rows but locations.parquet has "
                         f"{len(location_ids)}: rebuild the views")
    ids = store.read("location_id")
    if not np.array_equal(ids, location_ids):
        bad = int(np.flatnonzero(ids != location_ids)[0])
        raise InputError(f"view store {path}: row {bad} holds location_id {ids[bad]}, locations.parquet "
                         f"has {location_ids[bad]}: rebuild the views")
    names = vc.arrays or list(store.arrays)
    unknown = [n for n in names if n not in store.arrays]
    if unknown:
        raise ConfigError(f"train.views[{vc.view}].arrays: store {path} has no array(s) {unknown} "
                          f"(has {sorted(store.arrays)})")
    valid = store.read("valid").astype(bool)
    arrays: dict[str, torch.Tensor] = {}
    fp_parts = {"store": store.meta.get("build_fingerprint"), "arrays": names, "log1p": vc.log1p}
    if vc.encoder == "resnet18_frozen":
        if len(names) != 1 or len(store.arrays[names[0]].shape) != 3:
            raise ConfigError(f"train.views[{vc.view}]: resnet18_frozen needs exactly one (C, H, W) array")
        arrays["features"] = torch.from_numpy(_frozen_features(workdir, vc, store, names[0], device))
        fp_parts["backbone"] = file_fingerprint(vc.backbone_weights)
    else:
        for name in names:
            arrays[name] = torch.from_numpy(
                normalise_array(store.read(name), store.stats.get(name), log1p=vc.log1p))
    return ViewData(vc.view, arrays, torch.from_numpy(valid), text_fingerprint(fp_parts), store.meta.get("kind"))


def _frozen_features(workdir: Path, vc: ViewEncoderConfig, store, array: str, device: str) -> np.ndarray:
    """Backbone features of every row, computed once in eval mode and cached as safetensors."""
    from safetensors.numpy import load_file, save_file

    key = text_fingerprint({"store": store.meta.get("build_fingerprint"), "weights":
                            file_fingerprint(vc.backbone_weights), "bands": vc.backbone_bands,
                            "size": vc.backbone_input_size, "array": array})
    cache = workdir / "cache" / f"{vc.view}-resnet18-{key.split(':')[1][:16]}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["features"]
    model = load_resnet18(vc.backbone_weights)
    chips = store.read(array)
    nchan = chips.shape[1]
    if max(vc.backbone_bands) >= nchan:
        raise ConfigError(f"train.views[{vc.view}].backbone_bands {vc.backbone_bands}: chips have {nchan} channels")
    x = normalise_array(chips, store.stats.get(array))
    log.info("computing frozen ResNet-18 features of %d chips of view %s", len(x), vc.view)
    feats = backbone_features(model, x, bands=vc.backbone_bands, input_size=vc.backbone_input_size,
                              device=device)
    with atomic_path(cache, suffix=".safetensors") as tmp:
        save_file({"features": np.ascontiguousarray(feats, dtype=np.float32)}, str(tmp))
    return feats


def _view_configs(cfg: Config) -> list[ViewEncoderConfig]:
    tc = cfg.train
    if tc.views:
        return list(tc.views)
    names = [v.name for v in cfg.views]
    if not names:
        vdir = cfg.workdir_path / "views"
        names = sorted(p.name for p in vdir.iterdir() if (p / "meta.json").is_file()) if vdir.is_dir() else []
    if not names:
        raise ConfigError("train: no views configured and none found under "
                          f"{cfg.workdir_path / 'views'}; list them in train.views")
    return [ViewEncoderConfig(view=n) for n in names]


def load_training_data(cfg: Config, device: str = "cpu") -> TrainData:
    """Read ``locations.parquet`` and the configured views of ``cfg.workdir`` (checked row-aligned)."""
    from geoembed.io.locations import read_locations

    workdir = cfg.workdir_path
    loc_path = workdir / "locations.parquet"
    locs = read_locations(loc_path)
    lon = locs["lon"].to_numpy(np.float64)
    lat = locs["lat"].to_numpy(np.float64)
    ids = locs["location_id"].to_numpy(np.int64)
    if "block_id" in locs.columns:
        blocks = locs["block_id"].to_numpy(np.int64)
    else:
        blocks = grid_blocks(lon, lat, cfg.train.block_size_m)
    views = {vc.view: _load_view(workdir, vc, ids, device) for vc in _view_configs(cfg)}
    fp = text_fingerprint({"locations": file_fingerprint(loc_path),
                           "views": {k: v.fingerprint for k, v in views.items()}})
    return TrainData(torch.from_numpy(lon.copy()), torch.from_numpy(lat.copy()), blocks, views, fp, ids)


def spatial_split(block_id: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole spatial blocks (random block order) until ``val_fraction`` of rows is reached."""
    blocks, counts = np.unique(block_id, return_counts=True)
    if len(blocks) < 2:
        raise InputError("locations have a single spatial block: cannot hold out blocks for validation "
                         "(use a smaller block size)")
    order = np.random.default_rng(seed).permutation(len(blocks))
    target = val_fraction * len(block_id)
    cum = np.cumsum(counts[order])
    k = int(np.searchsorted(cum, target) + 1)
    k = min(max(k, 1), len(blocks) - 1)
    val_blocks = blocks[order[:k]]
    is_val = np.isin(block_id, val_blocks)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def coordinate_spec(tc: TrainConfig, lon: np.ndarray, lat: np.ndarray) -> dict:
    """The coordinate encoder spec with data-dependent constants (projection centre, extent) resolved."""
    encs = []
    for e in tc.coordinate_encoder.encodings:
        if e.type == "spherical_harmonics":
            encs.append({"type": "spherical_harmonics", "degrees": e.degrees})
            continue
        ulon = continuous_lon(lon)  # the footprint's extent, also across the antimeridian
        if e.center is not None:
            c_lon, c_lat = e.center
        else:
            c_lon = float(wrap_lon((np.nanmin(ulon) + np.nanmax(ulon)) / 2))
            c_lat = float((np.nanmin(lat) + np.nanmax(lat)) / 2)
        max_wl = e.max_wavelength_m
        if max_wl is None:
            dx = math.radians(float(np.nanmax(ulon) - np.nanmin(ulon))) * EARTH_RADIUS_M * math.cos(math.radians(c_lat))
            dy = math.radians(float(np.ptp(lat))) * EARTH_RADIUS_M
            max_wl = max(2.0 * math.hypot(dx, dy), 4.0 * e.min_wavelength_m)
        encs.append({"type": "local_multiscale", "center_lon": c_lon, "center_lat": c_lat,
                     "min_wavelength_m": e.min_wavelength_m, "max_wavelength_m": float(max_wl),
                     "n_scales": e.n_scales, "n_directions": e.n_directions, "include_xy": e.include_xy})
    return {"encodings": encs, "network": tc.coordinate_encoder.network.spec(),
            "embedding_dim": tc.embedding_dim, "dtype": tc.coordinate_encoder.dtype}


# ============================================================================ model


class MultiViewModel(nn.Module):
    """View encoders (+ fusion head or per-view projections), the coordinate encoder and the loss."""

    def __init__(self, tc: TrainConfig, view_shapes: dict[str, dict[str, tuple[int, ...]]],
                 coord_spec: dict, view_configs: list[ViewEncoderConfig] | None = None,
                 view_kinds: dict[str, str | None] | None = None):
        super().__init__()
        vcs = {vc.view: vc for vc in (view_configs or tc.views)}
        self.view_names = list(view_shapes)
        self.mode = tc.objective
        encoders = {}
        for name, shapes in view_shapes.items():
            vc = vcs.get(name) or ViewEncoderConfig(view=name)
            encoders[name] = build_view_encoder(shapes, out_dim=vc.out_dim, encoder=vc.encoder, view=name,
                                                kind=(view_kinds or {}).get(name), channels=vc.channels,
                                                hidden=vc.hidden)
        self.views = nn.ModuleDict(encoders)
        dims = {n: e.out_dim for n, e in encoders.items()}
        d = tc.embedding_dim
        if self.mode == "fused":
            self.fusion = FusionHead(self.view_names, dims, d, hidden=tc.fusion_hidden)
        else:
            self.proj = nn.ModuleDict({n: nn.Linear(dims[n], d) for n in self.view_names})
        self.coord: CoordinateEncoder = build_coordinate_encoder(coord_spec)
        self.loss = ContrastiveLoss(tc.objective, tc.view_pairs, tc.temperature_init, tc.temperature_min,
                                    tc.learnable_temperature)

    def embed_views(self, inputs: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``{"fused": (B, d)}`` in fused mode, else ``{view: (B, d)}``."""
        encoded = {n: self.views[n](inputs[n]) for n in self.view_names}
        if self.mode == "fused":
            return {"fused": self.fusion(encoded)}
        return {n: self.proj[n](encoded[n]) for n in self.view_names}

    def masks(self, valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.mode == "fused":
            m = valid[self.view_names[0]]
            for n in self.view_names[1:]:
                m = m & valid[n]
            return {"fused": m}
        return dict(valid)

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor, inputs: dict[str, dict[str, torch.Tensor]],
                valid: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        coords = self.coord(lon=lon, lat=lat)
        return self.loss(coords, self.embed_views(inputs), self.masks(valid))


# ============================================================================ checkpoints


def _state_tensors(model: nn.Module, opt: torch.optim.Optimizer, best: dict[str, torch.Tensor] | None):
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous().clone()
    if best is not None:
        for k, v in best.items():
            tensors[f"best.{k}"] = v.detach().cpu().contiguous().clone()
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{idx}.{k}"] = t.detach().cpu().contiguous().clone()
    return tensors, osd["param_groups"]


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    best: dict[str, torch.Tensor] | None, info: dict, ema: nn.Module | None = None) -> None:
    """Write ``state.safetensors`` + ``state.json`` into ``path`` atomically (no pickle)."""
    from safetensors.torch import save_file

    tensors, groups = _state_tensors(model, opt, best)
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous().clone() for k, v in ema.state_dict().items()})
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**info, "param_groups": groups}, default=float))


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    ema: nn.Module | None = None) -> tuple[dict, dict | None]:
    """Restore model, optimiser (and the weight average); returns (info, best weights or None)."""
    from safetensors.torch import load_file

    info = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        ema_state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        ema.load_state_dict(ema_state if ema_state else model.state_dict())
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info, best


# ============================================================================ training


def _setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        return rank, world, dev
    return 0, 1, torch.device("cuda" if use_cuda else "cpu")


def _allreduce_grads(model: MultiViewModel, world: int) -> None:
    """Sum gradients over processes: each process's loss is the global loss, differentiated through its
    own shard only, so the sum is the exact global gradient. The loss module's own parameters (the
    temperature) see the whole global batch in every process, so theirs is averaged instead."""
    import torch.distributed as dist

    loss_params = {id(p) for p in model.loss.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    off = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        g.copy_(flat[off : off + n].view_as(g))
        if id(p) in loss_params:
            g.div_(world)
        off += n


def train_step(model: MultiViewModel, opt: torch.optim.Optimizer, *, lon: torch.Tensor, lat: torch.Tensor,
               inputs: dict, valid: dict, amp: bool = False, grad_clip: float | None = None,
               world: int = 1, forward: Callable[..., tuple[torch.Tensor, dict]] | None = None,
               autocast_cache: bool = True) -> torch.Tensor:
    """One optimisation step on a (local shard of a) batch; returns the detached loss (no device sync).

    ``forward`` computes the loss instead of ``model`` (e.g. ``torch.compile(model)``; parameters,
    gradients and clipping stay ``model``'s). ``autocast_cache=False`` re-casts weights at every use, as
    CUDA graph capture requires (same values). Nothing in the step reads a value back to the host.
    """
    # Gradients are released before the forward pass (same arithmetic as after it) so that a compiled
    # forward with CUDA graphs never sees the previous step's gradients alive.
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=lon.device.type, dtype=torch.bfloat16, enabled=amp,
                        cache_enabled=autocast_cache):
        loss, _ = (model if forward is None else forward)(lon=lon, lat=lat, inputs=inputs, valid=valid)
    loss.backward()
    if world > 1:
        _allreduce_grads(model, world)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied (two multi-tensor
    launches on a GPU instead of two per tensor; the same per-element arithmetic as ``lerp_``)."""
    ema_p, model_p = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_p) != len(model_p):
        raise ValueError("ema_update: the EMA copy and the model have different parameters")
    if ema_p:
        torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
    ema_b, model_b = list(ema.buffers()), list(model.buffers())
    if len(ema_b) != len(model_b):
        raise ValueError("ema_update: the EMA copy and the model have different buffers")
    if ema_b:
        torch._foreach_copy_(ema_b, model_b)


def make_optimizer(model: MultiViewModel, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the coordinate encoder in its own parameter group (``coord_lr``); fused on CUDA."""
    coord_params = list(model.coord.parameters())
    coord_ids = {id(p) for p in coord_params}
    other = [p for p in model.parameters() if id(p) not in coord_ids]
    return torch.optim.AdamW(
        [{"params": other, "lr": tc.lr}, {"params": coord_params, "lr": tc.coord_lr or tc.lr}],
        weight_decay=tc.weight_decay, **({"fused": True} if device.type == "cuda" else {}),
    )


_OPT_FLAGS = ("fused", "foreach", "capturable")


def _restore_optimizer_flags(opt: torch.optim.Optimizer, flags: list[dict]) -> None:
    """After a resume, the optimiser's implementation flags are this run's (the checkpoint may come from
    another device or step mode); step counters move to where those flags need them (no-op when equal)."""
    for group, own in zip(opt.param_groups, flags, strict=True):
        group.update(own)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                want = p.device if on_device else torch.device("cpu")
                if step.device != want:
                    opt.state[p]["step"] = step.to(want)


def _batch_inputs(idx: torch.Tensor, dev_views: dict) -> tuple[dict, dict]:
    inputs = {n: {k: a.index_select(0, idx) for k, a in arrs.items()} for n, (arrs, _) in dev_views.items()}
    valid = {n: v.index_select(0, idx) for n, (_, v) in dev_views.items()}
    return inputs, valid


def _jitter(lon: torch.Tensor, lat: torch.Tensor, noise: torch.Tensor, sigma_m: float):
    if sigma_m <= 0:
        return lon, lat
    rad = sigma_m / EARTH_RADIUS_M * (180.0 / math.pi)
    dlat = noise[:, 1] * rad
    dlon = noise[:, 0] * rad / torch.cos(torch.deg2rad(lat)).clamp_min(1e-6)
    return lon + dlon, (lat + dlat).clamp(-90.0, 90.0)


CompileMode = Literal["off", "default", "reduce-overhead"]


class StepRunner:
    """Runs training steps for batches given as row indices into data already on the device.

    Each call gathers the batch (``index_select``), jitters its coordinates, and makes one
    :func:`train_step` (plus the EMA update). Two optional accelerations, both the same arithmetic:

    * ``compile``: ``"default"`` or ``"reduce-overhead"`` runs the loss forward (and its backward)
      through ``torch.compile`` with that mode (static shapes); ``"off"`` is eager. Only the step uses
      the compiled wrapper: state dicts, EMA, evaluation and the bundle use ``model`` itself.
    * ``cuda_graph`` (CUDA, single process): the whole step -- gather, jitter, forward, backward,
      gradient clipping, fused AdamW and the EMA update -- is captured once in a CUDA graph and replayed
      for every later step, so a step costs a few launches instead of hundreds (small batches are
      launch-bound). The first ``warmup_steps`` steps run eagerly on a side stream (they are real
      steps; they create the optimiser state and warm up cuDNN/cuBLAS/compile), the next is captured
      and replayed. If capture fails the runner logs why and continues eagerly (``graph_error``).

    The returned loss is a device tensor; under ``cuda_graph`` it is the graph's static output,
    overwritten by the next step, so consume it (e.g. add it to a running sum) before the next call.
    Batch shapes must not change between calls (the trainer drops the last partial batch).
    """

    def __init__(self, model: MultiViewModel, opt: torch.optim.Optimizer, *, lon: torch.Tensor,
                 lat: torch.Tensor, views: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]],
                 amp: bool = False, grad_clip: float | None = None, jitter_m: float = 0.0, world: int = 1,
                 ema: nn.Module | None = None, ema_decay: float | None = None, compile: CompileMode = "off",
                 cuda_graph: bool = False, warmup_steps: int = 3):
        if compile not in ("off", "default", "reduce-overhead"):
            raise ConfigError(f"train.compile must be off, default or reduce-overhead, got {compile!r}")
        if cuda_graph and compile == "reduce-overhead":
            raise ConfigError("train.cuda_graph captures the whole step itself: use it with train.compile "
                              "off or default, not reduce-overhead")
        self.model, self.opt = model, opt
        self.lon, self.lat, self.views = lon, lat, views
        self.amp, self.grad_clip, self.jitter_m, self.world = amp, grad_clip, float(jitter_m), world
        self.ema, self.ema_decay = ema, ema_decay
        self.compile = compile
        self.forward: Callable[..., tuple[torch.Tensor, dict]] = model
        if compile != "off":
            self.forward = torch.compile(model, mode=compile, dynamic=False)
        device = lon.device
        self.device = device
        self.graph_error: str | None = None
        if cuda_graph and device.type != "cuda":
            log.info("train.cuda_graph needs a CUDA device; running the %s steps without it", device.type)
            cuda_graph = False
        if cuda_graph and world > 1:
            log.warning("train.cuda_graph is single-process only; %d processes run without it", world)
            cuda_graph = False
        self.cuda_graph = cuda_graph
        self.warmup_steps = max(1, int(warmup_steps))
        self._warm = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._loss: torch.Tensor | None = None
        self._idx: torch.Tensor | None = None
        self._noise: torch.Tensor | None = None
        self._side: torch.cuda.Stream | None = None
        for group in opt.param_groups:
            if "capturable" in group and (cuda_graph or device.type != "cuda"):
                # A captured optimiser step must be capturable (fused AdamW: the same arithmetic).
                group["capturable"] = cuda_graph

    @property
    def graphed(self) -> bool:
        """Whether steps are now replays of one captured CUDA graph."""
        return self._graph is not None

    def _step(self, idx: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        lon, lat = self.lon.index_select(0, idx), self.lat.index_select(0, idx)
        if noise is not None:
            lon, lat = _jitter(lon, lat, noise, self.jitter_m)
        inputs, valid = _batch_inputs(idx, self.views)
        if self.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        loss = train_step(self.model, self.opt, lon=lon, lat=lat, inputs=inputs, valid=valid, amp=self.amp,
                          grad_clip=self.grad_clip, world=self.world, forward=self.forward,
                          autocast_cache=not self.cuda_graph)
        if self.ema is not None:
            ema_update(self.ema, self.model, self.ema_decay)
        return loss

    def __call__(self, idx: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One step on rows ``idx`` (``(B,)`` int64 on the device) with coordinate noise ``noise``
        (``(B, 2)`` standard normal, or None without jitter); returns the detached loss."""
        if self.jitter_m <= 0:
            noise = None
        if not self.cuda_graph:
            return self._step(idx, noise)
        if self._idx is None:
            self._idx = torch.empty_like(idx)
            self._noise = None if noise is None else torch.empty_like(noise)
        if idx.shape != self._idx.shape or (noise is None) != (self._noise is None):
            raise ValueError(f"cuda_graph steps need one batch shape: got {tuple(idx.shape)}, "
                             f"captured {tuple(self._idx.shape)}")
        self._idx.copy_(idx)
        if noise is not None:
            self._noise.copy_(noise)
        if self._graph is not None:
            self._graph.replay()
            return self._loss
        if self._warm < self.warmup_steps:
            return self._warmup_step()
        return self._capture_and_replay()

    def _warmup_step(self) -> torch.Tensor:
        self._warm += 1
        current = torch.cuda.current_stream(self.device)
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            loss = self._step(self._idx, self._noise)
        current.wait_stream(self._side)
        return loss

    def _capture_and_replay(self) -> torch.Tensor:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self._step(self._idx, self._noise)
        except Exception as err:  # noqa: BLE001 - any capture failure: fall back to eager steps
            self.graph_error = f"{type(err).__name__}: {err}"
            log.warning("CUDA graph capture of the training step failed (%s); continuing without it",
                        self.graph_error)
            self.cuda_graph = False
            torch.cuda.synchronize(self.device)
            return self._step(self._idx, self._noise)  # nothing of the failed capture ran
        self._graph, self._loss = graph, loss
        graph.replay()
        log.info("training step captured in a CUDA graph after %d warm-up steps", self._warm)
        return loss


@torch.no_grad()
def evaluate(model: MultiViewModel, data: TrainData, rows: np.ndarray, dev_views: dict,
             device: torch.device, batch_size: int, retrieval_rows: int, amp: bool) -> dict:
    """Held-out loss (fixed batches) and top-1/top-5 retrieval of each location among ``rows`` from its
    views (rows valid for all views; at most ``retrieval_rows`` of them)."""
    model.eval()
    idx_all = torch.from_numpy(rows).to(device)
    coords, views, valid = [], {}, {}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    for i in range(0, len(rows), 4096):
        idx = idx_all[i : i + 4096]
        inputs, val = _batch_inputs(idx, dev_views)
        with autocast:
            coords.append(model.coord(lon=data.lon_dev.index_select(0, idx),
                                      lat=data.lat_dev.index_select(0, idx)).float())
            for k, v in model.embed_views(inputs).items():
                views.setdefault(k, []).append(v.float())
        for k, v in model.masks(val).items():
            valid.setdefault(k, []).append(v)
    c = torch.cat(coords)
    vs = {k: torch.cat(v) for k, v in views.items()}
    ms = {k: torch.cat(v) for k, v in valid.items()}
    losses = []
    for i in range(0, len(rows), batch_size):
        sl = slice(i, i + batch_size)
        if min(batch_size, len(rows) - i) < 2:
            continue
        loss, _ = model.loss(c[sl], {k: v[sl] for k, v in vs.items()}, {k: m[sl] for k, m in ms.items()},
                             gather=False)
        losses.append(loss.detach())  # read back once below, not once per batch
    both = torch.stack(list(ms.values())).all(0)
    keep = torch.nonzero(both).flatten()[:retrieval_rows]
    val_loss = float(np.mean(torch.stack(losses).cpu().numpy().astype(np.float64))) if losses else float("nan")
    out = {"val_loss": val_loss, "val_rows": len(rows),
           "retrieval_rows": int(keep.numel())}
    if keep.numel() >= 5:
        cn = torch.nn.functional.normalize(c[keep], dim=1)
        sim = sum(torch.nn.functional.normalize(v[keep], dim=1) @ cn.t() for v in vs.values())
        diag = sim.diagonal()[:, None]
        rank = (sim > diag).sum(1)
        out["val_top1"] = float((rank < 1).float().mean())
        out["val_top5"] = float((rank < 5).float().mean())
        out["chance_top1"] = 1.0 / keep.numel()
    model.train()
    return out


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    keys: list[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(history)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def _run_fingerprint(cfg: Config, data_fp: str, seed: int) -> str:
    tc = cfg.train.model_dump(mode="json")
    for k in _RESUMABLE_KEYS:
        tc.pop(k, None)
    return text_fingerprint({"train": tc, "seed": seed, "data": data_fp})


def train(cfg: Config, *, resume: bool = True, overwrite: bool = False,
          stop_after_epochs: int | None = None, data: TrainData | None = None) -> dict:
    """Train per ``cfg.train`` on ``cfg.workdir``; returns a summary (paths, best epoch, metrics).

    A checkpoint of the same run (same settings and data) is resumed unless ``resume=False``; a
    checkpoint of a different run is an error unless ``overwrite``. ``stop_after_epochs`` ends this
    invocation after that many epochs (as a kill would), leaving a resumable checkpoint.
    """
    cfg.require("train")
    threads = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    try:
        return _train(cfg, resume=resume, overwrite=overwrite, stop_after_epochs=stop_after_epochs, data=data)
    finally:
        torch.set_num_threads(threads)


def _budget(tc: TrainConfig) -> dict:
    """The training budget: left out of the run fingerprint (a resume may change it) but a finished
    bundle only stands for the budget it was trained with."""
    return {"epochs": tc.epochs, "patience": tc.patience, "max_minutes": tc.max_minutes}


def _finished_bundle(path: Path, fingerprint: str, budget: dict) -> Path | None:
    """The bundle at ``path`` if a finished run with this fingerprint and budget wrote it, else None."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = metrics.get("run_fingerprint") == fingerprint and metrics.get("budget") == budget
    return path if same and (path / "geoembed.json").exists() else None


def _train(cfg: Config, *, resume: bool, overwrite: bool, stop_after_epochs: int | None,
           data: TrainData | None) -> dict:
    tc = cfg.train
    seed = cfg.seed if tc.seed is None else tc.seed
    rank, world, device = _setup_distributed(tc.device)
    workdir = cfg.workdir_path
    run_dir = workdir / RUN_DIR
    ckpt = run_dir / CHECKPOINT
    if data is None:
        data = load_training_data(cfg, device=str(device))
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")
    fingerprint = _run_fingerprint(cfg, data.fingerprint, seed)
    done = _finished_bundle(workdir / BUNDLE_DIR, fingerprint, _budget(tc))
    if done is not None and not overwrite and resume:
        log.info("bundle %s is up to date with these settings and data; nothing to train", done)
        return {"stopped": "up_to_date", "bundle": str(done), "metrics": json.loads((done / "metrics.json").read_text())}
    if ckpt.exists() and rank == 0:
        old = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
        if overwrite or not resume:
            shutil.rmtree(run_dir)
        elif old.get("fingerprint") != fingerprint:
            raise ConfigError(f"{ckpt} belongs to a run with other settings or data; pass --overwrite to "
                              "start again (or --no-resume)")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_resolved(cfg, run_dir / "config.yaml")

    train_idx, val_idx = spatial_split(data.block_id, tc.val_fraction, seed)
    lon_np, lat_np = data.lon.numpy(), data.lat.numpy()
    spec = coordinate_spec(tc, lon_np, lat_np)
    torch.manual_seed(seed)
    view_cfgs = _view_configs(cfg) if not tc.views else list(tc.views)
    model = MultiViewModel(tc, {n: v.shapes for n, v in data.views.items()}, spec, view_cfgs,
                           {n: v.kind for n, v in data.views.items()}).to(device)
    opt = make_optimizer(model, tc, device)
    ema = None
    if tc.ema_decay:
        import copy

        ema = copy.deepcopy(model).requires_grad_(False)
    history: list[dict] = []
    start_epoch, best_loss, best_epoch, bad_epochs, best_state = 0, math.inf, -1, 0, None
    if ckpt.is_dir() and (ckpt / "state.json").is_file():
        flags = [{k: g[k] for k in _OPT_FLAGS if k in g} for g in opt.param_groups]
        info, best_state = load_checkpoint(ckpt, model, opt, ema)
        _restore_optimizer_flags(opt, flags)
        history = info["history"]
        start_epoch = info["epoch"] + 1
        best_loss, best_epoch, bad_epochs = info["best_loss"], info["best_epoch"], info["bad_epochs"]
        log.info("resuming %s from epoch %d", ckpt, start_epoch)

    # Data on the training device once; per-batch gathers only.
    data.lon_dev = data.lon.to(device)
    data.lat_dev = data.lat.to(device)
    dev_views = {n: ({k: a.to(device) for k, a in v.arrays.items()}, v.valid.to(device))
                 for n, v in data.views.items()}
    n_train = len(train_idx)
    gbatch = min(tc.batch_size, n_train - n_train % world)
    steps = max(1, n_train // gbatch)
    local = gbatch // world
    amp = tc.amp and device.type == "cuda"
    train_idx_t = torch.from_numpy(train_idx)
    runner = StepRunner(model, opt, lon=data.lon_dev, lat=data.lat_dev, views=dev_views, amp=amp,
                        grad_clip=tc.grad_clip, jitter_m=tc.jitter_m, world=world, ema=ema,
                        ema_decay=tc.ema_decay, compile=tc.compile, cuda_graph=tc.cuda_graph)
    stopped = "epochs"
    t_start = time.perf_counter()
    from tqdm.auto import tqdm

    from geoembed.runtime import progress_enabled

    bar = tqdm(total=tc.epochs, initial=min(start_epoch, tc.epochs), desc="train", unit="epoch",
               disable=not progress_enabled() or rank != 0, leave=False)
    epoch = start_epoch
    done_this_run = 0
    if start_epoch > 0 and bad_epochs >= (tc.patience or math.inf):
        stopped = "early_stopping"
        epoch = tc.epochs
    while epoch < tc.epochs:
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = train_idx_t[torch.randperm(n_train, generator=gen)].to(device)
        noise = torch.randn(n_train, 2, generator=gen, dtype=torch.float64).to(device)
        loss_sum = torch.zeros((), device=device)
        for s in range(steps):
            sl = slice(s * gbatch + rank * local, s * gbatch + (rank + 1) * local)
            loss_sum += runner(perm[sl], noise[sl])
        train_loss = float(loss_sum) / steps
        judged = ema if ema is not None else model  # the weights that are validated and kept
        ev = evaluate(judged, data, val_idx, dev_views, device, gbatch, tc.retrieval_rows, amp)
        elapsed = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, **ev, "temperature": model.loss.temperature,
               "seconds": elapsed, "samples_per_s": steps * gbatch / elapsed}
        history.append(row)
        # Best epoch by the monitored held-out metric (loss: lower is better; retrieval: higher).
        score = ev["val_loss"] if tc.monitor == "val_loss" else -ev.get(tc.monitor, -math.inf)
        if score < best_loss - tc.min_delta:
            best_loss, best_epoch, bad_epochs = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        else:
            bad_epochs += 1
        if rank == 0:
            save_checkpoint(ckpt, model, opt, best_state, {
                "fingerprint": fingerprint, "epoch": epoch, "history": history, "best_loss": best_loss,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs}, ema=ema)
            _write_metrics(run_dir, history)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{ev['val_loss']:.3f}",
                            top5=f"{ev.get('val_top5', float('nan')):.3f}")
            log.info("epoch %d: loss %.4f val %.4f top1 %.3f top5 %.3f (%.1fs)", epoch, train_loss,
                     ev["val_loss"], ev.get("val_top1", float("nan")), ev.get("val_top5", float("nan")), elapsed)
        epoch += 1
        done_this_run += 1
        if tc.patience and bad_epochs >= tc.patience:
            stopped = "early_stopping"
            break
        if tc.max_minutes and (time.perf_counter() - t_start) / 60 > tc.max_minutes:
            stopped = "time_budget"
            break
        if stop_after_epochs is not None and done_this_run >= stop_after_epochs and epoch < tc.epochs:
            bar.close()
            return {"stopped": "interrupted", "epoch": epoch - 1, "history": history}
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    elif ema is not None:
        model.load_state_dict(ema.state_dict())
    best_row = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    summary = {"stopped": stopped, "best_epoch": best_epoch, "monitor": tc.monitor,
               "best_val_loss": best_row.get("val_loss"),
               "epochs_run": len(history), "n_train": int(n_train), "n_val": int(len(val_idx)),
               "history": history}
    if rank == 0:
        metrics = {k: summary[k] for k in ("stopped", "best_epoch", "monitor", "best_val_loss", "epochs_run",
                                           "n_train", "n_val")}
        metrics.update({k: best_row.get(k) for k in ("val_top1", "val_top5", "chance_top1", "train_loss",
                                                      "temperature")})
        metrics["run_fingerprint"] = fingerprint
        metrics["budget"] = _budget(tc)
        enc = model.coord.to("cpu").eval()
        from geoembed.io.bundle import save_bundle

        bundle = save_bundle(workdir / BUNDLE_DIR, enc, enc.spec, footprint=training_footprint(lon_np, lat_np),
                             out_of_support_km=tc.out_of_support_km, config=cfg.model_dump(mode="json"),
                             metrics=metrics, data_fingerprint=data.fingerprint)
        summary["bundle"] = str(bundle)
        summary["metrics"] = metrics
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return summary


# ============================================================================ CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed train``."""
    parser.add_argument("-c", "--config", required=True, help="YAML config with a train section")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard a checkpoint from a run with other settings and start again")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def run(args: argparse.Namespace) -> int:
    """``geoembed train -c CONFIG``: train and write ``<workdir>/bundle``."""
    cfg = load_config(args.config)
    cfg.require("train")
    summary = train(cfg, resume=not args.no_resume, overwrite=args.overwrite)
    if summary.get("stopped") == "up_to_date":
        print(f"bundle {summary['bundle']} is up to date with these settings and data: nothing to train")
        return 0
    if "bundle" in summary:
        m = summary["metrics"]
        print(f"trained {summary['epochs_run']} epochs ({summary['stopped']}); best epoch {m['best_epoch']}: "
              f"val loss {m['best_val_loss']:.4f}, top-1 {m.get('val_top1') or float('nan'):.3f}, "
              f"top-5 {m.get('val_top5') or float('nan'):.3f} (chance {m.get('chance_top1') or float('nan'):.4f})")
        print(f"bundle: {summary['bundle']}")
    return 0
