"""``train.ensemble: K``: K members trained on the same locations with seeds seed, seed+1, ..., then one
coordinate encoder that averages them after a Procrustes alignment (:mod:`geoembed.nn.ensemble`).

Each member trains exactly as a single run with its seed would (:func:`geoembed.train.loop.fit_model`) in
``<workdir>/train/member<k>/`` (checkpoint and metrics, resumable). A finished member's coordinate encoder
is kept as ``member<k>/encoder.safetensors`` (atomic, with the member's fingerprint in its metadata), so a
killed ensemble run retrains only the members it had not finished. A member's fingerprint leaves out the
number of members (member k trains the same whatever K is), so raising ``ensemble`` from 2 to 3 trains only
the third member. The rotations are fitted on the
members' outputs at every training location; the bundle's ``metrics.json`` gets an ``ensemble`` entry
(members' seeds, best epochs, held-out retrieval and how much of each member the aligned mean explains),
its held-out retrieval figures are the members' means, and ``epochs_run`` and ``best_epoch`` are per member
(the most epochs any member ran; member 0's best epoch).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from geoembed.config import Config
from geoembed.io.atomic import atomic_path, atomic_write_text
from geoembed.nn.ensemble import procrustes_rotations
from geoembed.nn.networks import build_coordinate_encoder
from geoembed.train.checkpoint import legacy_member_fingerprint, member_fingerprint
from geoembed.train.data import TrainData

log = logging.getLogger(__name__)

__all__ = ["member_dir", "members_note", "train_ensemble"]

ENCODER_FILE = "encoder.safetensors"
SUMMARY_FILE = "summary.json"
_MEAN_KEYS = ("val_top1", "val_top5", "chance_top1", "val_loss", "train_loss")


def member_dir(run_dir: Path, k: int) -> Path:
    """Where member ``k`` trains and keeps its finished encoder."""
    return run_dir / f"member{k}"


def _load_finished(folder: Path, *fingerprints: str) -> tuple[torch.nn.Module, dict] | None:
    """A member finished by an earlier invocation with one of ``fingerprints`` (its own, and the one members
    had before it left out K): its encoder and summary, else None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / ENCODER_FILE
    if not path.is_file() or not (folder / SUMMARY_FILE).is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("fingerprint") not in fingerprints:
        return None
    spec = json.loads(meta["spec"])
    enc = build_coordinate_encoder(spec)
    enc.load_state_dict(load_file(str(path)), strict=True)
    return enc, json.loads((folder / SUMMARY_FILE).read_text())


def _save_finished(folder: Path, encoder: torch.nn.Module, summary: dict, fingerprint: str) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_text(folder / SUMMARY_FILE, json.dumps(summary, default=float) + "\n")
    with atomic_path(folder / ENCODER_FILE) as tmp:
        save_file(state, str(tmp), metadata={"fingerprint": fingerprint,
                                             "spec": json.dumps(encoder.inference_spec)})


def _outputs(encoder: torch.nn.Module, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The encoder's outputs at float64 ``lon``/``lat`` (as :meth:`geoembed.io.bundle.Bundle.embed` feeds it)."""
    encoder = encoder.to("cpu").eval()
    lon, lat = np.ascontiguousarray(lon, dtype=np.float64), np.ascontiguousarray(lat, dtype=np.float64)
    out = []
    with torch.inference_mode():
        for i in range(0, len(lon), 8192):
            out.append(encoder(lon=torch.from_numpy(lon[i:i + 8192]),
                               lat=torch.from_numpy(lat[i:i + 8192])).double().numpy())
    return np.concatenate(out)


def ensemble_encoder(members: list[torch.nn.Module], lon: np.ndarray, lat: np.ndarray
                     ) -> tuple[torch.nn.Module, np.ndarray]:
    """One coordinate encoder averaging ``members`` (same encoding spec) after aligning their outputs at
    ``lon``/``lat`` by generalised Procrustes; returns it and each member's explained share (r2)."""
    specs = [m.inference_spec for m in members]
    base = specs[0]
    if any(s["encodings"] != base["encodings"] or s["network"] != base["network"] for s in specs[1:]):
        raise ValueError("ensemble members must share one encoding and network spec")
    rotations, r2 = procrustes_rotations([_outputs(m, lon, lat) for m in members])
    spec = {**base, "network": {"type": "ensemble", "members": len(members), "member": base["network"]}}
    enc = build_coordinate_encoder(spec)
    state = {"encoding." + k: v for k, v in members[0].encoding.state_dict().items()}
    for i, m in enumerate(members):
        state.update({f"network.nets.{i}.{k}": v for k, v in m.network.state_dict().items()})
    dtype = enc.network.rotations.dtype
    state["network.rotations"] = torch.as_tensor(rotations, dtype=dtype)
    enc.load_state_dict(state, strict=True)
    return enc.eval(), r2


def _finish_member(fit: dict, seed: int) -> tuple[torch.nn.Module, dict]:
    enc = fit["model"].coord.to("cpu").eval()
    summary = {key: fit["summary"][key] for key in ("stopped", "best_epoch", "best_val_loss", "epochs_run",
                                                    "n_train", "n_val")}
    summary.update({key: fit["best_row"].get(key) for key in _MEAN_KEYS})
    summary["seed"] = seed
    return enc, summary


def _member_process(config: dict, seed: int, run_dir: str, k: int) -> None:
    """Train member ``k`` in a fresh process (spawned) and keep its encoder (see :func:`train_ensemble`)."""
    from geoembed.config import parse_config
    from geoembed.train.data import load_training_data
    from geoembed.train.loop import fit_model

    cfg = parse_config(config)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    data = load_training_data(cfg, device="cpu")
    folder = member_dir(Path(run_dir), k)
    folder.mkdir(parents=True, exist_ok=True)
    member_fp = member_fingerprint(cfg, data.fingerprint, seed, k)
    fit = fit_model(cfg, data, seed + k, folder, member_fp, device=torch.device("cpu"))
    enc, summary = _finish_member(fit, seed + k)
    _save_finished(folder, enc, summary, member_fp)


def _train_in_processes(cfg: Config, seed: int, run_dir: Path, pending: list[int], jobs: int) -> None:
    """Train the ``pending`` members ``jobs`` at a time in spawned processes (``train.ensemble_jobs``)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    if not pending:
        return
    config = cfg.model_dump(mode="json")
    log.info("ensemble: training members %s, %d at a time", pending, jobs)
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_member_process, config, seed, str(run_dir), k) for k in pending]
        for f in futures:
            f.result()


def train_ensemble(cfg: Config, data: TrainData, seed: int, run_dir: Path, fingerprint: str, *,
                   device: torch.device, rank: int = 0, world: int = 1,
                   stop_after_epochs: int | None = None) -> dict:
    """Train (or resume) the ``cfg.train.ensemble`` members and build their aligned mean (module doc).
    Returns ``{"encoder", "summary", "best_row"}``, or an ``interrupted`` summary."""
    from geoembed.train.loop import fit_model

    k_members = cfg.train.ensemble
    jobs = min(cfg.train.ensemble_jobs, k_members)
    fps = [member_fingerprint(cfg, data.fingerprint, seed, k) for k in range(k_members)]
    legacy = [legacy_member_fingerprint(fingerprint, k) for k in range(k_members)]
    if jobs > 1 and world == 1 and device.type == "cpu" and stop_after_epochs is None:
        pending = [k for k in range(k_members)
                   if _load_finished(member_dir(run_dir, k), fps[k], legacy[k]) is None]
        _train_in_processes(cfg, seed, run_dir, pending, jobs)
    encoders, summaries = [], []
    for k in range(k_members):
        folder = member_dir(run_dir, k)
        member_fp = fps[k]
        found = _load_finished(folder, member_fp, legacy[k])
        if found is not None:
            log.info("ensemble member %d of %d: finished earlier, reused", k + 1, k_members)
            enc, summary = found
        else:
            log.info("ensemble member %d of %d: seed %d", k + 1, k_members, seed + k)
            folder.mkdir(parents=True, exist_ok=True)
            fit = fit_model(cfg, data, seed + k, folder, member_fp, device=device, rank=rank, world=world,
                            stop_after_epochs=stop_after_epochs)
            if fit.get("stopped") == "interrupted":
                return fit
            enc, summary = _finish_member(fit, seed + k)
            if rank == 0:
                _save_finished(folder, enc, summary, member_fp)
        encoders.append(enc)
        summaries.append(summary)
    encoder, r2 = ensemble_encoder(encoders, data.lon.numpy(), data.lat.numpy())

    def mean(key: str) -> float | None:
        vals = [s[key] for s in summaries if isinstance(s.get(key), int | float) and math.isfinite(s[key])]
        return float(np.mean(vals)) if vals else None

    best_row = {key: mean(key) for key in _MEAN_KEYS}
    best_row["temperature"] = None
    summary = {"stopped": summaries[0]["stopped"], "best_epoch": summaries[0]["best_epoch"],
               "monitor": cfg.train.monitor, "best_val_loss": mean("best_val_loss"),
               "epochs_run": max(s["epochs_run"] for s in summaries), "n_train": summaries[0]["n_train"],
               "n_val": summaries[0]["n_val"], "history": [],
               "ensemble": {"members": k_members, "alignment_r2": [round(float(v), 4) for v in r2],
                            "member_metrics": summaries}}
    log.info("ensemble of %d: each member's share explained by the aligned mean %s", k_members,
             ", ".join(f"{v:.2f}" for v in r2))
    return {"encoder": encoder, "summary": summary, "best_row": best_row}


def members_note(summary: dict) -> str:
    """`` x K members`` for a training summary of an ensemble (or its metrics), else ``""``."""
    ens = summary.get("ensemble") or (summary.get("metrics") or {}).get("ensemble")
    return f" x {ens['members']} members" if ens else ""
