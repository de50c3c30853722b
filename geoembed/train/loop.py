"""The training loop: epochs of steps, held-out evaluation after each, early stopping, checkpoints, and
the bundle of the best epoch.

:func:`train` is the stage's entry point (``geoembed train`` calls it through
:mod:`geoembed.train.command`). Each epoch shuffles the training rows and draws the coordinate jitter from
a generator seeded by (seed, epoch) (with coordinate-network dropout, the global generator its masks come
from is seeded by (seed, epoch) too, so a resumed run matches an uninterrupted one), runs the steps
(:class:`~geoembed.train.step.StepRunner`), then :func:`evaluate` scores the held-out rows: loss, and
top-1/top-5 retrieval of each location's coordinates among the validation locations from its views. The
weights judged (and kept as the best) are the moving average when ``train.ema_decay`` is set, else the raw
weights; ``train.monitor`` picks the best epoch (``val_loss``: lower is better; ``val_top1`` / ``val_top5``:
higher). After every epoch the checkpoint and ``metrics.jsonl`` / ``metrics.csv`` are rewritten atomically.
The bundle's ``metrics.json`` carries the training diagnostics of the final encoder (retrieval against
chance, variation over the footprint and by scale, a verdict: :mod:`geoembed.train.diagnostics`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from geoembed.config import Config, save_resolved
from geoembed.errors import ConfigError
from geoembed.geo import training_footprint
from geoembed.io.atomic import atomic_write_text
from geoembed.train.checkpoint import (
    BUNDLE_DIR,
    CHECKPOINT,
    RUN_DIR,
    finished_bundle,
    legacy_member_fingerprint,
    member_fingerprint,
    restore_checkpoint,
    run_fingerprint,
    save_checkpoint,
    training_budget,
)
from geoembed.train.data import (
    TrainData,
    batch_inputs,
    load_training_data,
    random_split,
    spatial_split,
    view_configs,
)
from geoembed.train.diagnostics import diagnose, encoder_embed
from geoembed.train.model import MultiViewModel, coordinate_spec, make_ema, make_optimizer
from geoembed.train.step import StepRunner, setup_distributed

log = logging.getLogger(__name__)

__all__ = ["evaluate", "fit_model", "train"]


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
        inputs, val = batch_inputs(idx, dev_views)
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




def train(cfg: Config, *, resume: bool = True, overwrite: bool = False,
          stop_after_epochs: int | None = None, data: TrainData | None = None) -> dict:
    """Train per ``cfg.train`` on ``cfg.workdir``; returns a summary (paths, best epoch, metrics).

    A checkpoint of the same run (same settings and data) is resumed, and a finished bundle of it is up to
    date, unless ``resume=False`` (start again); a checkpoint of a different run is an error unless
    ``overwrite`` (then it is discarded; the same run's work is still kept). ``stop_after_epochs`` ends this
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


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _prepare_run_dir(cfg: Config, fingerprint: str, data_fp: str, seed: int, *, rank: int, world: int,
                     resume: bool, overwrite: bool) -> Path:
    """``<workdir>/train`` holding this run: a checkpoint of another run is an error (or removed with
    ``overwrite`` / ``resume=False``); the resolved config is written."""
    run_dir = cfg.workdir_path / RUN_DIR
    ckpts = [run_dir / CHECKPOINT, *sorted(run_dir.glob(f"member*/{CHECKPOINT}"))]  # members: train.ensemble
    ckpts = [c for c in ckpts if c.exists()]
    if ckpts and rank == 0:
        if not resume:
            shutil.rmtree(run_dir)
        for ckpt in ckpts if run_dir.exists() else []:
            old = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
            if ckpt.parent == run_dir:
                own = {fingerprint}
            else:  # an ensemble member's (its fingerprint leaves out K; before it did not)
                k = int(ckpt.parent.name.removeprefix("member"))
                own = {member_fingerprint(cfg, data_fp, seed, k), legacy_member_fingerprint(fingerprint, k)}
            if old.get("fingerprint") in own:
                continue
            if not overwrite:
                raise ConfigError(f"{ckpt} belongs to a run with other settings or data; pass --overwrite to "
                                  "start again (or --no-resume)")
            log.info("discarding %s: a run with other settings or data (--overwrite)", ckpt.parent)
            shutil.rmtree(run_dir)
            break
    _barrier(world)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_resolved(cfg, run_dir / "config.yaml")
    return run_dir


def _train(cfg: Config, *, resume: bool, overwrite: bool, stop_after_epochs: int | None,
           data: TrainData | None) -> dict:
    tc = cfg.train
    seed = cfg.seed if tc.seed is None else tc.seed
    rank, world, device = setup_distributed(tc.device)
    workdir = cfg.workdir_path
    if data is None:
        data = load_training_data(cfg, device=str(device))
    if tc.batch_size % world:
        raise ConfigError(f"train.batch_size {tc.batch_size} is not divisible by the {world} processes")
    fingerprint = run_fingerprint(cfg, data.fingerprint, seed)
    done = finished_bundle(workdir / BUNDLE_DIR, fingerprint, training_budget(tc))
    if done is not None and resume:
        log.info("bundle %s is up to date with these settings and data; nothing to train", done)
        return {"stopped": "up_to_date", "bundle": str(done), "metrics": json.loads((done / "metrics.json").read_text())}
    run_dir = _prepare_run_dir(cfg, fingerprint, data.fingerprint, seed, rank=rank, world=world, resume=resume, overwrite=overwrite)
    if tc.ensemble > 1:
        from geoembed.train.ensemble import train_ensemble

        out = train_ensemble(cfg, data, seed, run_dir, fingerprint, device=device, rank=rank, world=world,
                             stop_after_epochs=stop_after_epochs)
        if out.get("stopped") == "interrupted":
            return out
        encoder, summary, best_row = out["encoder"], out["summary"], out["best_row"]
    else:
        fit = fit_model(cfg, data, seed, run_dir, fingerprint, device=device, rank=rank, world=world,
                        stop_after_epochs=stop_after_epochs)
        if fit.get("stopped") == "interrupted":
            return fit
        encoder, summary, best_row = fit["model"].coord, fit["summary"], fit["best_row"]
    if rank == 0:
        summary.update(_write_bundle(cfg, encoder, summary, best_row, fingerprint, data))
    _barrier(world)
    return summary


def fit_model(cfg: Config, data: TrainData, seed: int, run_dir: Path, fingerprint: str, *,
              device: torch.device, rank: int = 0, world: int = 1, stop_after_epochs: int | None = None) -> dict:
    """Train one model with ``seed`` in ``run_dir`` (its checkpoint and metrics; resumed when a checkpoint
    is there) and return ``{"model", "summary", "best_row"}`` with the best weights loaded, or the
    ``{"stopped": "interrupted", ...}`` summary when ``stop_after_epochs`` ended it early."""
    tc = cfg.train
    ckpt = run_dir / CHECKPOINT

    if tc.validation == "random":
        train_idx, val_idx = random_split(data.n, tc.val_fraction, seed)
    else:
        train_idx, val_idx = spatial_split(data.block_id, tc.val_fraction, seed)
    lon_np, lat_np = data.lon.numpy(), data.lat.numpy()
    spec = coordinate_spec(tc, lon_np, lat_np)
    torch.manual_seed(seed)
    model = MultiViewModel(tc, {n: v.shapes for n, v in data.views.items()}, spec, view_configs(cfg),
                           {n: v.kind for n, v in data.views.items()}).to(device)
    opt = make_optimizer(model, tc, device)
    ema = make_ema(model) if tc.ema_decay else None
    history: list[dict] = []
    start_epoch, best_loss, best_epoch, bad_epochs, best_state = 0, math.inf, -1, 0, None
    if ckpt.is_dir() and (ckpt / "state.json").is_file():
        info, best_state = restore_checkpoint(ckpt, model, opt, ema)
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
    dropout = tc.coordinate_encoder.network.dropout > 0
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
        if dropout:  # dropout draws from the global generator: seeded per epoch so a resume matches
            torch.manual_seed((seed * 1_000_003 + epoch) * 64 + 1 + rank)
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
    return {"model": model, "summary": summary, "best_row": best_row}


def _write_bundle(cfg: Config, encoder: torch.nn.Module, summary: dict, best_row: dict, fingerprint: str,
                  data: TrainData) -> dict:
    """The bundle of the trained coordinate ``encoder`` (the best weights, already loaded) and its metrics
    (an ensemble's summary adds its ``ensemble`` entry)."""
    from geoembed.io.bundle import save_bundle

    tc = cfg.train
    metrics = {k: summary[k] for k in ("stopped", "best_epoch", "monitor", "best_val_loss", "epochs_run",
                                       "n_train", "n_val")}
    metrics.update({k: best_row.get(k) for k in ("val_top1", "val_top5", "chance_top1", "train_loss",
                                                  "temperature")})
    if "ensemble" in summary:
        metrics["ensemble"] = summary["ensemble"]
    metrics["run_fingerprint"] = fingerprint
    metrics["budget"] = training_budget(tc)
    enc = encoder.to("cpu").eval()
    footprint = training_footprint(data.lon.numpy(), data.lat.numpy())
    # Did training work? Read-only on the final encoder; stored in metrics.json (not sealed, no output changes).
    try:
        metrics["diagnostics"] = diagnose(encoder_embed(enc), footprint, enc.inference_spec, metrics,
                                          history=summary["history"], jitter_m=tc.jitter_m)
    except Exception as err:  # noqa: BLE001 - a diagnostics failure must not lose a finished training
        log.warning("training diagnostics could not be computed (%s); `geoembed inspect` computes them "
                    "on demand", err)
    # The bundle's spec leaves out training-only settings (dropout): its encoder has no dropout at all.
    bundle = save_bundle(cfg.workdir_path / BUNDLE_DIR, enc, enc.inference_spec,
                         footprint=footprint,
                         out_of_support_km=tc.out_of_support_km, config=cfg.model_dump(mode="json"),
                         metrics=metrics, data_fingerprint=data.fingerprint)
    return {"bundle": str(bundle), "metrics": metrics}
