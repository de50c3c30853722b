"""The model being trained: view encoders, the coordinate encoder and the contrastive loss in one module,
the coordinate encoder's spec (data-dependent constants resolved), the optimiser and the weight average.

Every view's encoder is built here, in :class:`MultiViewModel`, by one call to
:func:`geoembed.nn.views.build_view_encoder`; the coordinate encoder by
:func:`geoembed.nn.networks.build_coordinate_encoder` from :func:`coordinate_spec` (which is what the
bundle stores, so the encoder can be rebuilt from the spec alone).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from geoembed.config.train import TrainConfig, ViewEncoderConfig
from geoembed.geo import continuous_lon, wrap_lon
from geoembed.nn.encodings import EARTH_RADIUS_M
from geoembed.nn.fusion import FusionHead
from geoembed.nn.losses import ContrastiveLoss
from geoembed.nn.networks import CoordinateEncoder, build_coordinate_encoder
from geoembed.nn.views import build_view_encoder

__all__ = ["MultiViewModel", "coordinate_spec", "ema_update", "make_ema", "make_optimizer",
           "no_decay_parameters"]


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
            # The one place a view's encoder is built (``auto`` resolves through the store's view kind).
            encoders[name] = build_view_encoder(shapes, out_dim=vc.out_dim, encoder=vc.encoder, view=name,
                                                kind=(view_kinds or {}).get(name), channels=vc.channels,
                                                hidden=vc.hidden, head_norm=vc.head_norm)
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
        """The loss masks of :meth:`embed_views`' outputs: fused needs every view valid."""
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


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
          nn.SyncBatchNorm)


def no_decay_parameters(model: MultiViewModel, exclude: list[str] | tuple[str, ...]) -> set[int]:
    """``id``s of the parameters ``train.weight_decay_exclude`` names: ``bias`` (every bias), ``norm``
    (the parameters of LayerNorm / BatchNorm / GroupNorm / RMSNorm layers) and ``temperature`` (the loss's
    logit scale)."""
    out: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if (("bias" in exclude and name == "bias") or ("norm" in exclude and isinstance(module, _NORMS))
                    or ("temperature" in exclude and module is model.loss)):
                out.add(id(p))
    return out


def make_optimizer(model: MultiViewModel, tc: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the coordinate encoder in its own parameter group (``coord_lr``); fused on CUDA.

    With ``train.weight_decay_exclude`` the parameters it names go to two more groups (other, then
    coordinate encoder) with no weight decay; without it there are exactly the two groups above.
    """
    coord_params = list(model.coord.parameters())
    coord_ids = {id(p) for p in coord_params}
    other = [p for p in model.parameters() if id(p) not in coord_ids]
    lrs = (tc.lr, tc.coord_lr or tc.lr)
    groups = [{"params": other, "lr": lrs[0]}, {"params": coord_params, "lr": lrs[1]}]
    if tc.weight_decay_exclude:
        skip = no_decay_parameters(model, tc.weight_decay_exclude)
        decayed = [{"params": [p for p in g["params"] if id(p) not in skip], "lr": g["lr"]} for g in groups]
        free = [{"params": [p for p in g["params"] if id(p) in skip], "lr": g["lr"], "weight_decay": 0.0}
                for g in groups]
        groups = [g for g in decayed + free if g["params"]]
    return torch.optim.AdamW(groups, weight_decay=tc.weight_decay,
                             **({"fused": True} if device.type == "cuda" else {}))


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` to hold the moving average of its weights (see :func:`ema_update`)."""
    return copy.deepcopy(model).requires_grad_(False)


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
