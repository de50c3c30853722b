"""GeoCLIP's location encoder, rebuilt from its published description in geoembed's own modules.

GeoCLIP (Vivanco Cepeda, Nayak, Shah; NeurIPS 2023) encodes a location in three steps:

1. :class:`EqualEarth`: the Equal Earth projection (Šavrič, Patterson, Jenny 2018; polynomial
   coefficients A1..A4 below), scaled by ``SF / 180`` so that the map spans about [-1, 1] in x.
2. :class:`RFFBranches`: for each scale ``sigma`` (GeoCLIP: 1, 16, 256) a random-Fourier-feature map
   ``[cos(2 pi B v), sin(2 pi B v)]`` (``B``: a fixed Gaussian matrix of standard deviation ``sigma``,
   shipped with the weights), a ReLU MLP (512 -> 1024 -> 1024 -> 1024) and a linear head to 512.
3. The branch outputs are summed.

The computation is float32 in GeoCLIP's own operation order (projection in float32 from float32
lon/lat, ``(2 pi v) @ B.T``, cos before sin, branches summed in order), so outputs equal GeoCLIP's
``LocationEncoder`` on the same weights to float32 rounding. Inference skips what the original spends
time on besides the matrix products: TorchScript dispatch, out-of-place ReLUs and a zero-filled
accumulator (see BENCHMARKS.md, "Imported GeoCLIP").

Effective resolution: the finest branch (sigma = 256) has frequencies of about 256 cycles per projected
unit; one unit is about 20,000 km of longitude at the equator, so its typical half-wavelength is about
40 km. The encoder cannot separate places much closer than a few tens of km.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geoembed.errors import ConfigError

__all__ = ["EQUAL_EARTH", "EqualEarth", "RFFBranches"]

#: Equal Earth polynomial coefficients and GeoCLIP's scale factor (projected units = SF / 180).
EQUAL_EARTH = {"A1": 1.340264, "A2": -0.081106, "A3": 0.000893, "A4": 0.003796, "SF": 66.50336}


class EqualEarth(nn.Module):
    """GeoCLIP's scaled Equal Earth projection: ``(N, 2)`` columns ``[x, y]`` (float32).

    Longitude and latitude are taken by name, cast to float32 and projected with GeoCLIP's formula
    and operation order. The projection has its seam at the antimeridian: lon = 180 and lon = -180 map
    to opposite edges of the map (as in GeoCLIP).
    """

    out_dim = 2

    def __init__(self, scale: float = EQUAL_EARTH["SF"]):
        super().__init__()
        self.scale = float(scale)
        if self.scale != EQUAL_EARTH["SF"]:
            raise ConfigError(f"equal_earth encoding: only GeoCLIP's scale {EQUAL_EARTH['SF']} is supported, "
                              f"got {scale}")

    def spec(self) -> dict:
        return {"type": "equal_earth", "scale": self.scale}

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        a1, a2, a3, a4 = (EQUAL_EARTH[k] for k in ("A1", "A2", "A3", "A4"))
        latitude = lat.to(torch.float32)
        longitude = lon.to(torch.float32)
        latitude_rad = torch.deg2rad(latitude)
        longitude_rad = torch.deg2rad(longitude)
        sqrt3 = torch.sqrt(torch.tensor(3.0))
        sin_theta = (sqrt3 / 2) * torch.sin(latitude_rad)
        theta = torch.asin(sin_theta)
        denominator = 3 * (9 * a4 * theta**8 + 7 * a3 * theta**6 + 3 * a2 * theta**2 + a1)
        x = (2 * sqrt3 * longitude_rad * torch.cos(theta)) / denominator
        y = a4 * theta**9 + a3 * theta**7 + a2 * theta**3 + a1 * theta
        return (torch.stack((x, y), dim=1) * self.scale) / 180


class _Branch(nn.Module):
    """One scale: fixed Gaussian projection ``rff`` (features x inputs), ReLU MLP, linear head."""

    def __init__(self, in_dim: int, features: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        # Fixed (not trained here) but part of the weights: a persistent buffer, saved in safetensors.
        self.register_buffer("rff", torch.zeros(features, in_dim))
        dims = [2 * features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(hidden)))
        self.head = nn.Linear(dims[-1], out_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = (2 * math.pi * v) @ self.rff.T
        h = torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)
        if torch.is_grad_enabled():
            for lin in self.layers:
                h = F.relu(lin(h))
        else:  # inference: bias added inside the product, ReLU in place (same values)
            for lin in self.layers:
                h = torch.addmm(lin.bias, h, lin.weight.T).relu_()
        return F.linear(h, self.head.weight, self.head.bias)


class RFFBranches(nn.Module):
    """Sum over scales of random-Fourier-feature MLP branches (GeoCLIP's location network).

    Spec: ``{"type": "rff_branches", "sigmas": [1, 16, 256], "features": 256, "hidden": [1024, 1024,
    1024]}``. ``sigmas`` are the standard deviations the projections were drawn with; they describe the
    branches (and their resolution) and are checked against the loaded matrices by the importer, while
    the matrices themselves are weights.
    """

    def __init__(self, in_dim: int, out_dim: int, *, sigmas: Sequence[float], features: int = 256,
                 hidden: Sequence[int] = (1024, 1024, 1024)):
        super().__init__()
        if not sigmas or any(not (float(s) > 0) for s in sigmas):
            raise ConfigError(f"rff_branches needs positive sigmas, got {list(sigmas)}")
        if int(features) < 1 or not hidden or any(int(h) < 1 for h in hidden):
            raise ConfigError(f"rff_branches needs features >= 1 and non-empty positive hidden sizes, got "
                              f"features={features}, hidden={list(hidden)}")
        self.sigmas = [float(s) for s in sigmas]
        self.features = int(features)
        self.hidden = [int(h) for h in hidden]
        self.branches = nn.ModuleList(_Branch(in_dim, self.features, self.hidden, out_dim) for _ in self.sigmas)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](v)
        for branch in self.branches[1:]:
            y = branch(v)
            out = out + y if torch.is_grad_enabled() else out.add_(y)
        return out
