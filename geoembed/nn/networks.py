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
from geoembed.nn.encodings import ConcatEncoding, build_encoding, check_encoding_spec
from geoembed.nn.specs import SpecError, check_spec_args, describe_value, within

__all__ = ["MLP", "Siren", "CoordinateEncoder", "build_coordinate_encoder", "build_network", "check_coordinate_spec",
           "check_network_spec"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _check_hidden(hidden: Sequence[int]) -> None:
    if any(int(h) < 1 for h in hidden):
        raise ConfigError(f"hidden layer sizes must be positive integers, got {list(hidden)}")


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
        _check_hidden(hidden)
        if not 0 <= dropout < 1:
            raise ConfigError(f"SIREN dropout must be in [0, 1), got {dropout}")
        if not (w0 > 0 and w0_hidden > 0):
            raise ConfigError(f"SIREN w0 and w0_hidden must be positive, got {w0}, {w0_hidden}")
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
        _check_hidden(hidden)
        if not 0 <= dropout < 1:
            raise ConfigError(f"MLP dropout must be in [0, 1), got {dropout}")
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


def check_network_spec(spec: object) -> tuple[type, dict]:
    """The network class of ``spec`` and its keyword arguments (``hidden`` filled in with its default
    ``[128, 128]``), checked strictly against the class's constructor
    (:func:`geoembed.nn.specs.check_spec_args`). Raises a :class:`~geoembed.nn.specs.SpecError`."""
    if not isinstance(spec, Mapping):
        raise SpecError("", f"expected an object (a network spec), got {describe_value(spec)}")
    kwargs = dict(spec)
    kind = kwargs.pop("type", "siren")
    if kind == "siren":
        cls = Siren
    elif kind == "mlp":
        cls = MLP
    elif kind == "rff_branches":
        from geoembed.nn.geoclip import RFFBranches

        cls = RFFBranches
    elif kind == "ensemble":
        from geoembed.nn.ensemble import Ensemble

        cls = Ensemble
    else:
        raise SpecError("type", f"unknown network type {describe_value(kind)} "
                                "(use siren, mlp, rff_branches or ensemble)")
    if kind not in ("rff_branches", "ensemble"):
        kwargs.setdefault("hidden", [128, 128])
    check_spec_args(f"{kind} network", cls, kwargs, supplied=("in_dim", "out_dim"))
    if kind == "ensemble":  # the member spec is checked here too, so errors name its key path
        member = kwargs.get("member")
        if isinstance(member, Mapping) and member.get("type") == "ensemble":
            raise SpecError("member.type", "an ensemble's member cannot itself be an ensemble")
        try:
            check_network_spec(member)
        except ConfigError as err:
            raise within("member", err) from None
    return cls, kwargs


def build_network(spec: Mapping, in_dim: int, out_dim: int) -> nn.Module:
    """A network from its spec (``{"type": "siren" | "mlp" | "rff_branches", "hidden": [...], ...}``),
    checked by :func:`check_network_spec` first.

    ``rff_branches`` is GeoCLIP's multi-scale random-Fourier-feature network (:mod:`geoembed.nn.geoclip`),
    used by imported GeoCLIP bundles; ``ensemble`` the Procrustes-aligned mean of several networks
    (:mod:`geoembed.nn.ensemble`), written by ``train.ensemble``.
    """
    cls, kwargs = check_network_spec(spec)
    return cls(in_dim=in_dim, out_dim=out_dim, **kwargs)


def check_coordinate_spec(spec: object) -> None:
    """Check a coordinate-encoder spec's structure and types (every encoding and the network against
    their constructors) without building anything. A :class:`~geoembed.nn.specs.SpecError` names the
    key path (``encodings[0].n_scales``)."""
    if not isinstance(spec, Mapping):
        raise SpecError("", f"expected an object (a coordinate encoder spec), got {describe_value(spec)}")
    for key in spec:
        if key not in _SPEC_KEYS:
            raise SpecError(str(key), f"unknown setting of a coordinate encoder (it takes {', '.join(_SPEC_KEYS)})")
    for key in ("encodings", "network", "embedding_dim"):
        if key not in spec:
            raise SpecError(key, "missing: a coordinate encoder spec needs encodings, network and embedding_dim")
    encodings = spec["encodings"]
    if not isinstance(encodings, list | tuple) or not encodings:
        raise SpecError("encodings", f"expected a non-empty list of encoding specs, got {describe_value(encodings)}")
    for i, enc in enumerate(encodings):
        try:
            check_encoding_spec(enc)
        except ConfigError as err:
            raise within(f"encodings[{i}]", err) from None
    try:
        check_network_spec(spec["network"])
    except ConfigError as err:
        raise within("network", err) from None
    dim = spec["embedding_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise SpecError("embedding_dim", f"expected a positive integer, got {describe_value(dim)}")
    dtype = spec.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise SpecError("dtype", f"expected \"float32\" or \"float64\", got {describe_value(dtype)}")


_SPEC_KEYS = ("encodings", "network", "embedding_dim", "dtype")


class CoordinateEncoder(nn.Module):
    """(lon, lat) degrees -> ``(N, embedding_dim)``: a positional encoding followed by a network.

    ``forward`` takes keyword-only ``lon`` and ``lat`` tensors, so coordinates are always named.
    Encoding and network run in the module's dtype with autocast disabled (harmonics and SIREN phases
    need full precision; on GPUs the matmuls can still use TF32).
    """

    def __init__(self, spec: Mapping):
        super().__init__()
        check_coordinate_spec(spec)
        spec = dict(spec)
        parts = []
        for i, e in enumerate(spec["encodings"]):
            try:
                parts.append(build_encoding(e))
            except ConfigError as err:  # a range the constructor refuses: name the encoding
                raise within(f"encodings[{i}]", err) from None
        self.encoding = ConcatEncoding(parts)
        self.embedding_dim = int(spec["embedding_dim"])
        try:
            self.network = build_network(spec["network"], self.encoding.out_dim, self.embedding_dim)
        except ConfigError as err:
            raise within("network", err) from None
        dtype = spec.get("dtype", "float32")
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
