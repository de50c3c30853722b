"""Networks (SIREN, MLP) and the coordinate encoder = positional encoding + network.

A coordinate encoder is fully described by a JSON-serialisable ``spec``::

    {"encodings": [{"type": "spherical_harmonics", "degrees": 40}, ...],
     "network": {"type": "siren", "hidden": [128, 128], "w0": 30.0, "w0_hidden": 1.0},
     "embedding_dim": 16, "dtype": "float32"}

:func:`build_coordinate_encoder` rebuilds the module from that spec alone (weights come separately).
The network may carry ``"dropout": p`` (training only); :attr:`CoordinateEncoder.inference_spec` is the
spec without it, which is what a bundle stores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geoembed.errors import ConfigError
from geoembed.nn.encodings import ConcatEncoding, build_encoding

__all__ = ["MLP", "Siren", "CoordinateEncoder", "build_coordinate_encoder", "build_network"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class _Sine(nn.Module):
    """``sin(w0 * x)``; with ``dropout`` > 0, ``x`` is dropped out first in training (as SatCLIP's SIREN
    layer drops its linear output before the sine). Dropout lives inside the activation so the layer
    indices (state-dict keys) do not depend on it."""

    def __init__(self, w0: float, dropout: float = 0.0):
        super().__init__()
        self.w0 = float(w0)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout > 0 and self.training:
            x = F.dropout(x, self.dropout, training=True)
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}" + (f", dropout={self.dropout}" if self.dropout > 0 else "")


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``sin(w0 * (W x + b))`` layers and a linear output layer.

    Initialisation: the first layer's weights are ``U(-1/in, 1/in)`` and it uses frequency ``w0``
    (configurable; 30 in the paper); later layers use ``U(-sqrt(6/in)/w0_hidden, sqrt(6/in)/w0_hidden)``
    with frequency ``w0_hidden``, which keeps pre-activations ~ arcsine-distributed through depth.
    ``dropout`` (training only) drops every hidden layer's linear output before its sine (the reference:
    0.5); the output layer has none.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, w0: float = 30.0,
                 w0_hidden: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ConfigError("SIREN needs at least one hidden layer")
        if not 0 <= dropout < 1:
            raise ConfigError(f"SIREN dropout must be in [0, 1), got {dropout}")
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for i in range(len(hidden)):
            lin = nn.Linear(dims[i], dims[i + 1])
            w = w0 if i == 0 else w0_hidden
            bound = 1.0 / dims[i] if i == 0 else math.sqrt(6.0 / dims[i]) / w0_hidden
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound)
                lin.bias.uniform_(-1.0 / math.sqrt(dims[i]), 1.0 / math.sqrt(dims[i]))
            layers += [lin, _Sine(w, dropout)]
        last = nn.Linear(dims[-1], out_dim)
        bound = math.sqrt(6.0 / dims[-1]) / w0_hidden
        with torch.no_grad():
            last.weight.uniform_(-bound, bound)
            last.bias.zero_()
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Linear layers with an activation (relu, gelu, silu, tanh) between them; optional LayerNorm output.

    ``dropout`` (training only) follows each hidden activation, in the same ``Sequential`` slot, so the
    linear layers' indices (state-dict keys) do not depend on it.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu",
                 layernorm: bool = False, dropout: float = 0.0):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r} (use {sorted(_ACTIVATIONS)})")
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for i in range(len(hidden)):
            act = _ACTIVATIONS[activation]()
            layers += [nn.Linear(dims[i], dims[i + 1]),
                       nn.Sequential(act, nn.Dropout(dropout)) if dropout > 0 else act]
        layers.append(nn.Linear(dims[-1], out_dim))
        if layernorm:
            layers.append(nn.LayerNorm(out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_network(spec: Mapping, in_dim: int, out_dim: int) -> nn.Module:
    """A network from its spec (``{"type": "siren" | "mlp" | "rff_branches", "hidden": [...], ...}``).

    ``rff_branches`` is GeoCLIP's multi-scale random-Fourier-feature network (:mod:`geoembed.nn.geoclip`),
    used by imported GeoCLIP bundles.
    """
    spec = dict(spec)
    kind = spec.pop("type", "siren")
    hidden = list(spec.pop("hidden", [128, 128]))
    try:
        if kind == "siren":
            return Siren(in_dim, hidden, out_dim, **spec)
        if kind == "mlp":
            return MLP(in_dim, hidden, out_dim, **spec)
        if kind == "rff_branches":
            from geoembed.nn.geoclip import RFFBranches

            return RFFBranches(in_dim, out_dim, hidden=hidden, **spec)
    except TypeError as err:
        raise ConfigError(f"bad {kind} network spec {spec}: {err}") from None
    raise ConfigError(f"unknown network type {kind!r} (use siren, mlp or rff_branches)")


class CoordinateEncoder(nn.Module):
    """(lon, lat) degrees -> ``(N, embedding_dim)``: a positional encoding followed by a network.

    ``forward`` takes keyword-only ``lon`` and ``lat`` tensors, so coordinates are always named.
    Encoding and network run in the module's dtype with autocast disabled (harmonics and SIREN phases
    need full precision; on GPUs the matmuls can still use TF32).
    """

    def __init__(self, spec: Mapping):
        super().__init__()
        spec = dict(spec)
        if "encodings" not in spec or "network" not in spec or "embedding_dim" not in spec:
            raise ConfigError(f"coordinate encoder spec needs encodings, network, embedding_dim; got {sorted(spec)}")
        self.encoding = ConcatEncoding([build_encoding(e) for e in spec["encodings"]])
        self.embedding_dim = int(spec["embedding_dim"])
        self.network = build_network(spec["network"], self.encoding.out_dim, self.embedding_dim)
        dtype = spec.get("dtype", "float32")
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"coordinate encoder dtype must be float32 or float64, got {dtype!r}")
        self._spec = {
            "encodings": self.encoding.spec(),
            "network": dict(spec["network"]),
            "embedding_dim": self.embedding_dim,
            "dtype": dtype,
        }
        # Encoding tables are built in float64; keep them in the working dtype (float32 halves the
        # memory traffic and doubles the matmul rate of the harmonics).
        if dtype == "float64":
            self.double()
        else:
            self.float()

    @property
    def spec(self) -> dict:
        """The JSON spec that rebuilds this module (see :func:`build_coordinate_encoder`)."""
        return {**self._spec, "encodings": [dict(e) for e in self._spec["encodings"]]}

    @property
    def inference_spec(self) -> dict:
        """:attr:`spec` without training-only settings (the network's ``dropout``): what a bundle stores.
        The weights are the same either way (dropout has none and shifts no layer index)."""
        spec = self.spec
        spec["network"] = {k: v for k, v in spec["network"].items() if k != "dropout"}
        return spec

    @property
    def dtype(self) -> torch.dtype:
        return next(self.network.parameters()).dtype

    def encode(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """The positional features alone."""
        dev = lon.device.type
        with torch.autocast(device_type=dev, enabled=False):
            return self.encoding(lon=lon, lat=lat).to(self.dtype)

    def forward(self, *, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        # Full precision even under autocast: sin(w0 * x) with w0 = 30 loses its phase in bf16.
        with torch.autocast(device_type=lon.device.type, enabled=False):
            return self.network(self.encoding(lon=lon, lat=lat).to(self.dtype))


def build_coordinate_encoder(spec: Mapping) -> CoordinateEncoder:
    """Rebuild a coordinate encoder from its spec alone (weights are loaded separately)."""
    return CoordinateEncoder(spec)
