"""The run's state on disk: checkpoints, the run fingerprint, and whether a finished bundle is reusable.

``<workdir>/train/checkpoint/`` holds ``state.safetensors`` (model, optimiser state, best weights and the
weight average; no pickle) and ``state.json`` (epoch, history, early-stopping state, the optimiser's
parameter groups and the run fingerprint). It is rewritten atomically after every epoch, so a killed run
resumes from the last finished epoch and ends where an uninterrupted run ends.

The run fingerprint covers the train settings (less the ones a resume may change, ``_RESUMABLE_KEYS``),
the seed and the data; a checkpoint of another fingerprint is not resumed. A finished bundle with this
fingerprint and the same budget (epochs, patience, time) stands for the run: training it again does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from geoembed.config import Config
from geoembed.config.train import TrainConfig
from geoembed.io.atomic import atomic_path
from geoembed.io.fingerprint import text_fingerprint

__all__ = ["BUNDLE_DIR", "CHECKPOINT", "RUN_DIR", "finished_bundle", "load_checkpoint", "restore_checkpoint",
           "run_fingerprint", "save_checkpoint", "training_budget"]

RUN_DIR = "train"
CHECKPOINT = "checkpoint"
BUNDLE_DIR = "bundle"
# Settings that may change between a run and its resume without invalidating the checkpoint.
_RESUMABLE_KEYS = ("epochs", "patience", "max_minutes", "device", "num_threads", "retrieval_rows", "compile",
                   "cuda_graph", "ensemble_jobs")
# Optimiser implementation flags: this run's, whatever run wrote the checkpoint.
_OPT_FLAGS = ("fused", "foreach", "capturable")
# Settings added after runs were fingerprinted (the reference-parity options): left out of the fingerprint
# while they hold their defaults, so that earlier runs keep theirs (their checkpoints resume, their
# finished bundles are reused).
_LATER_TRAIN_DEFAULTS = {"weight_decay_exclude": [], "validation": "spatial_block", "ensemble": 1}
_LATER_VIEW_DEFAULTS = {"scale": "standardise", "divide_by": None, "head_norm": "layernorm"}
_LATER_NETWORK_DEFAULTS = {"dropout": 0.0}


def _drop_defaults(section: dict, defaults: dict) -> None:
    for key, value in defaults.items():
        if key in section and section[key] == value:
            del section[key]


def run_fingerprint(cfg: Config, data_fp: str, seed: int) -> str:
    """The identity of a run: train settings (less the resumable ones), seed and data fingerprint."""
    tc = cfg.train.model_dump(mode="json")
    for k in _RESUMABLE_KEYS:
        tc.pop(k, None)
    _drop_defaults(tc, _LATER_TRAIN_DEFAULTS)
    for view in tc.get("views", []):
        _drop_defaults(view, _LATER_VIEW_DEFAULTS)
    _drop_defaults(tc.get("coordinate_encoder", {}).get("network", {}), _LATER_NETWORK_DEFAULTS)
    return text_fingerprint({"train": tc, "seed": seed, "data": data_fp})


def member_fingerprint(cfg: Config, data_fp: str, seed: int, k: int) -> str:
    """Ensemble member ``k``'s identity: the run's settings with one member (so not K), the run's seed and
    ``k``; member k trains the same whatever the number of members."""
    single = cfg.model_copy(update={"train": cfg.train.model_copy(update={"ensemble": 1})})
    return f"{run_fingerprint(single, data_fp, seed)}-member{k}"


def legacy_member_fingerprint(run_fp: str, k: int) -> str:
    """The fingerprint members written before it left out K carry: the whole run's (K included) and ``k``;
    such a member is still reused, by a run with the same K."""
    return f"{run_fp}-member{k}"


def training_budget(tc: TrainConfig) -> dict:
    """The training budget: left out of the run fingerprint (a resume may change it) but a finished
    bundle only stands for the budget it was trained with."""
    return {"epochs": tc.epochs, "patience": tc.patience, "max_minutes": tc.max_minutes}


def finished_bundle(path: Path, fingerprint: str, budget: dict) -> Path | None:
    """The bundle at ``path`` if a finished run with this fingerprint and budget wrote it, else None."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    same = metrics.get("run_fingerprint") == fingerprint and metrics.get("budget") == budget
    return path if same and (path / "geoembed.json").exists() else None


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


def restore_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                       ema: nn.Module | None = None) -> tuple[dict, dict | None]:
    """:func:`load_checkpoint` for a resume: the optimiser keeps this run's implementation flags (fused,
    foreach, capturable; the checkpoint may come from another device or step mode)."""
    flags = [{k: g[k] for k in _OPT_FLAGS if k in g} for g in opt.param_groups]
    out = load_checkpoint(path, model, opt, ema)
    _restore_optimizer_flags(opt, flags)
    return out


def _restore_optimizer_flags(opt: torch.optim.Optimizer, flags: list[dict]) -> None:
    """Put this run's optimiser flags back; step counters move to where those flags need them (no-op when
    equal)."""
    for group, own in zip(opt.param_groups, flags, strict=True):
        group.update(own)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if torch.is_tensor(step):
                want = p.device if on_device else torch.device("cpu")
                if step.device != want:
                    opt.state[p]["step"] = step.to(want)
