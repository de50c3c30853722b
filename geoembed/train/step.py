"""One training step and the machinery that runs it fast: :func:`train_step`, :class:`StepRunner`
(batch gather, coordinate jitter, optional ``torch.compile`` and a whole-step CUDA graph) and the
data-parallel setup and gradient all-reduce under ``torchrun``.

Small batches (the paper's 256) are bound by per-kernel launch cost, not arithmetic: an eager step is
~260 kernel launches (gather 6, forward ~113 and backward ~135 under bf16 autocast, fused AdamW a few) and
none of them reads a value back to the host. ``train.cuda_graph`` captures that whole step once in a CUDA
graph and replays it (three launches per step); ``train.compile`` runs the forward/backward through
``torch.compile`` (``default``, or ``reduce-overhead`` for inductor's own CUDA graphs). See
:class:`StepRunner`. With both off the step is the plain eager one.

Under ``torchrun`` each process takes its slice of every global batch and embeddings are gathered so the
negatives span the global batch; gradients are summed across processes (:func:`setup_distributed`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from geoembed.errors import ConfigError
from geoembed.nn.encodings import EARTH_RADIUS_M
from geoembed.train.data import batch_inputs
from geoembed.train.model import MultiViewModel, ema_update

log = logging.getLogger(__name__)

__all__ = ["CompileMode", "StepRunner", "jitter_coordinates", "setup_distributed", "train_step"]


def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
    initialised (NCCL on CUDA, else gloo) and each process takes its ``LOCAL_RANK`` GPU."""
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


def jitter_coordinates(lon: torch.Tensor, lat: torch.Tensor, noise: torch.Tensor,
                       sigma_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates moved by ``noise`` (``(B, 2)`` standard normal: east, north) times ``sigma_m`` metres
    (a local degrees-per-metre scale; latitude clamped to the poles)."""
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
            lon, lat = jitter_coordinates(lon, lat, noise, self.jitter_m)
        inputs, valid = batch_inputs(idx, self.views)
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
