"""View encoders: raster CNN, frozen ResNet-18 backbone, OSM hex-grid CNN, tabular MLP, and their registry.

A view store holds one or more named arrays per location (a raster view: ``chips`` ``(C, H, W)``; an OSM
view: ``hex`` ``(K, 7, 7)``, ``radius`` ``(F,)``, ``distance`` ``(K,)``). :class:`ViewEncoder` encodes each
array with a suitable sub-encoder and merges them into one ``out_dim`` vector per location.
Inputs arrive normalised by the store's per-channel stats with missing values set to 0.

Encoders are registered by name (:func:`register_encoder`); ``train.views[].encoder`` names one, and
``auto`` takes the default encoder of the store's view kind (:func:`resolve_encoder`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoembed.errors import ConfigError, InputError

__all__ = [
    "HEX_MASK_3X3",
    "HEX_MASK_7X7",
    "ChipStats",
    "FeatureHead",
    "HexEncoder",
    "MaskedHexConv2d",
    "RasterCNN",
    "ResNet18",
    "TabularMLP",
    "ViewEncoder",
    "backbone_features",
    "build_view_encoder",
    "encoder_names",
    "load_resnet18",
    "register_encoder",
    "resolve_encoder",
]

# Hex layout of the OSM view (geoembed.views.osm_geom): cell (di, dj) of the 3-ring disk sits at
# [3 + di, 3 + dj] of a 7 x 7 grid; H3 local-IJ neighbours are (+-1, 0), (0, +-1), (1, 1), (-1, -1), so
# the 3x3 stencil drops the anti-diagonal corners and the 7 x 7 disk mask is |di - dj| <= 3.
HEX_MASK_3X3 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
_DI, _DJ = torch.meshgrid(torch.arange(-3, 4), torch.arange(-3, 4), indexing="ij")
HEX_MASK_7X7 = ((_DI - _DJ).abs() <= 3).float()


class MaskedHexConv2d(nn.Conv2d):
    """A 3x3 convolution restricted to the 7-tap hexagonal stencil.

    The mask is a registered buffer multiplied into the (trainable) weight inside ``forward``, so the
    filters train normally and masked taps stay exactly zero in effect (the reference code re-created its
    weight every forward pass, so its filters never trained).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)
        self.register_buffer("hex_mask", HEX_MASK_3X3.clone().view(1, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.hex_mask, self.bias, self.stride, self.padding)


class HexEncoder(nn.Module):
    """The paper's OSM encoder: two masked hex convolutions (BatchNorm, ReLU), flatten, linear, LayerNorm.

    On the 7 x 7 axial grid, positions outside the 37-cell disk are zeroed (input and every layer's
    output) by the ``disk_mask`` buffer, so normalisation offsets never leak in from non-cells.
    """

    def __init__(self, in_channels: int, grid: tuple[int, int], out_dim: int,
                 channels: Sequence[int] = (16, 8)):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = in_channels
        for width in channels:
            self.convs.append(MaskedHexConv2d(c, width))
            self.norms.append(nn.BatchNorm2d(width))
            c = width
        mask = HEX_MASK_7X7 if tuple(grid) == (7, 7) else torch.ones(grid)
        self.register_buffer("disk_mask", mask.clone().view(1, 1, *grid))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * grid[0] * grid[1], out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.disk_mask
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = torch.relu(norm(conv(x))) * self.disk_mask
        return self.head(x)


class RasterCNN(nn.Module):
    """A small CNN trained from scratch for ``(C, H, W)`` chips.

    3x3 convolutions (the first at full resolution, then stride 2), GELU, GroupNorm; global average
    pooling concatenated with the chip's per-channel means (a strong, cheap summary), then a linear
    layer and LayerNorm.
    """

    def __init__(self, in_channels: int, out_dim: int, channels: Sequence[int] = (32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(channels):
            layers += [nn.Conv2d(c, width, 3, stride=1 if i == 0 else 2, padding=1),
                       nn.GroupNorm(min(8, width), width), nn.GELU()]
            c = width
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c + in_channels, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.convs(x).mean(dim=(2, 3))
        return self.head(torch.cat([pooled, x.mean(dim=(2, 3))], dim=1))


class TabularMLP(nn.Module):
    """An MLP (ReLU) for per-location feature vectors, with a LayerNorm output."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(hidden)):
            layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
        layers += [nn.Linear(dims[-1], out_dim), nn.LayerNorm(out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ChipStats(nn.Module):
    """Per-channel mean and standard deviation of a ``(C, H, W)`` chip, then an MLP (LayerNorm output).

    A deliberately low-capacity raster encoder: it sees the chip's content summary, not its texture or
    exact position, which keeps the coordinate encoder from learning location identity.
    """

    def __init__(self, in_channels: int, out_dim: int, hidden: Sequence[int] = (64,)):
        super().__init__()
        self.mlp = TabularMLP(2 * in_channels, out_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1))


class FeatureHead(nn.Module):
    """A trainable linear head on precomputed frozen-backbone features, plus a LayerNorm
    (``norm="layernorm"``, the default) or nothing (``norm="none"``: the reference's bare linear head)."""

    def __init__(self, in_dim: int, out_dim: int, norm: str = "layernorm"):
        super().__init__()
        if norm not in ("layernorm", "none"):
            raise ConfigError(f"feature head norm must be layernorm or none, got {norm!r}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        if norm == "layernorm":
            layers.append(nn.LayerNorm(out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViewEncoder(nn.Module):
    """Encodes one view's named arrays; several arrays are concatenated and projected to ``out_dim``."""

    def __init__(self, parts: Mapping[str, nn.Module], part_dims: Mapping[str, int], out_dim: int):
        super().__init__()
        if not parts:
            raise ConfigError("a view encoder needs at least one array")
        self.names = list(parts)
        self.parts = nn.ModuleDict(dict(parts))
        total = sum(part_dims[n] for n in self.names)
        self.merge = (nn.Identity() if len(self.names) == 1 and total == out_dim
                      else nn.Sequential(nn.Linear(total, out_dim), nn.LayerNorm(out_dim)))
        self.out_dim = out_dim

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        outs = [self.parts[n](inputs[n]) for n in self.names]
        return self.merge(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))


#: An encoder builder: ``builder(shapes, *, out_dim, channels, hidden)`` -> a module with an ``out_dim``
#: attribute whose forward takes ``{array name: (B, *shape) tensor}`` and returns ``(B, out_dim)``.
#: A builder may also take ``head_norm`` (the norm of a frozen-backbone feature head); it is passed
#: only when set to something other than ``layernorm``.
EncoderBuilder = Callable[..., nn.Module]

_ENCODERS: dict[str, EncoderBuilder] = {}


def register_encoder(name: str, builder: EncoderBuilder, *, replace: bool = False) -> None:
    """Register a view encoder under ``name`` (for ``train.views[].encoder`` and a view kind's default).

    ``builder(shapes, *, out_dim, channels, hidden)`` gets the view's arrays (name -> per-row shape),
    the configured ``out_dim``, ``channels`` (None when not configured) and ``hidden``, and returns a
    module as :class:`ViewEncoder` (``out_dim`` attribute; forward from a dict of arrays). Registering
    a name twice is an error unless ``replace`` is set; ``auto`` is reserved.
    """
    if name == "auto":
        raise ValueError("encoder name 'auto' is reserved (it picks the view kind's default encoder)")
    if name in _ENCODERS and not replace:
        raise ValueError(f"view encoder {name!r} is already registered (pass replace=True to replace it)")
    _ENCODERS[name] = builder


def encoder_names() -> list[str]:
    """The registered view encoders, sorted (``auto`` aside)."""
    return sorted(_ENCODERS)


def resolve_encoder(encoder: str, kind: str | None = None, view: str | None = None) -> str:
    """The registered encoder ``encoder`` names; ``auto`` is the default encoder of the view store's
    ``kind`` (see :mod:`geoembed.views.registry`), or, for a store of no registered kind, ``by_shape``.
    A ConfigError names the setting when the encoder is not registered."""
    where = f"train.views[{view}].encoder" if view else "encoder"
    name = encoder
    if encoder == "auto":
        from geoembed.views.registry import view_kinds

        name = "by_shape"
        if kind in view_kinds():
            from geoembed.views.registry import view_kind

            name = view_kind(kind).encoder
            where = f"the default encoder of view kind {kind!r}"
    if name not in _ENCODERS:
        raise ConfigError(f"{where}: unknown view encoder {name!r} (registered: auto, {', '.join(encoder_names())})")
    return name


def build_view_encoder(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    out_dim: int,
    encoder: str = "auto",
    kind: str | None = None,
    view: str | None = None,
    channels: Sequence[int] | None = None,
    hidden: Sequence[int] = (64,),
    head_norm: str = "layernorm",
) -> nn.Module:
    """The encoder of one view: ``encoder`` from the registry (``auto``: the default of the store's view
    ``kind``, see :func:`resolve_encoder`); ``view`` names the view in errors. ``head_norm`` is the norm
    after the linear head on ``features`` (``layernorm`` or ``none``); a builder that does not take it
    is an error when it is not ``layernorm``.

    Built-in encoders, per array (``features``, a frozen backbone's output, always gets a
    :class:`FeatureHead`, vectors a :class:`TabularMLP`): ``cnn`` (``(C, H, W)`` -> :class:`RasterCNN`;
    the raster kind's default), ``stats`` (-> :class:`ChipStats`), ``hex`` (-> :class:`HexEncoder`; the
    OSM kind's default), ``mlp`` (everything flattened into an MLP), ``embedding`` (a linear head on each ``(D,)``
    vector; the embedding kind's default), ``resnet18_frozen`` (the frozen
    backbone's features, precomputed by the trainer) and ``by_shape`` (an array named ``hex`` ->
    hex CNN, other ``(C, H, W)`` -> CNN).
    """
    name = resolve_encoder(encoder, kind, view)
    builder = _ENCODERS[name]
    options = {}
    if head_norm != "layernorm":
        params = inspect.signature(builder).parameters
        if "head_norm" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            where = f"train.views[{view}].head_norm" if view else "head_norm"
            raise ConfigError(f"{where}: view encoder {name!r} has no head norm to set")
        options["head_norm"] = head_norm
    return builder(dict(shapes), out_dim=out_dim, channels=channels, hidden=hidden, **options)


def _per_array(grid: Callable[[str, tuple[int, ...], int, Sequence[int] | None, Sequence[int]], nn.Module | None]
               ) -> EncoderBuilder:
    """A builder giving each array its own sub-encoder: ``grid(name, shape, out_dim, channels, hidden)``
    for ``(C, H, W)`` arrays (None: an MLP), a FeatureHead (norm ``head_norm``) for ``features``, an MLP
    for the others."""

    def build(shapes: Mapping[str, tuple[int, ...]], *, out_dim: int, channels: Sequence[int] | None = None,
              hidden: Sequence[int] = (64,), head_norm: str = "layernorm") -> ViewEncoder:
        parts: dict[str, nn.Module] = {}
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            part = None
            if name == "features":
                part = FeatureHead(int(np.prod(shape)), out_dim, norm=head_norm)
            elif len(shape) == 3:
                part = grid(name, shape, out_dim, channels, hidden)
            parts[name] = part if part is not None else TabularMLP(int(np.prod(shape)), out_dim,
                                                                   hidden=tuple(hidden))
        return ViewEncoder(parts, dict.fromkeys(parts, out_dim), out_dim)

    return build


def _cnn(name, shape, out_dim, channels, hidden) -> nn.Module:
    return RasterCNN(shape[0], out_dim, channels=tuple(channels) if channels else (32, 64))


def _hex(name, shape, out_dim, channels, hidden) -> nn.Module:
    return HexEncoder(shape[0], (shape[1], shape[2]), out_dim, channels=tuple(channels) if channels else (16, 8))


register_encoder("cnn", _per_array(_cnn))
register_encoder("stats", _per_array(lambda name, shape, out_dim, channels, hidden:
                                     ChipStats(shape[0], out_dim, hidden=tuple(hidden))))
register_encoder("hex", _per_array(_hex))
register_encoder("mlp", _per_array(lambda *args: None))
register_encoder("resnet18_frozen", _per_array(lambda *args: None))  # its one array arrives as ``features``
register_encoder("by_shape", _per_array(lambda name, *args: (_hex if name == "hex" else _cnn)(name, *args)))


def _embedding(shapes: Mapping[str, tuple[int, ...]], *, out_dim: int, channels: Sequence[int] | None = None,
               hidden: Sequence[int] = (64,)) -> ViewEncoder:
    """The ``embedding`` view kind's default: a linear head (linear layer + LayerNorm) on each ``(D,)``
    embedding vector, which arrives standardised per dimension by the store's statistics as every vector
    does. A teacher's embedding is already a representation: a linear head keeps its geometry, so the
    coordinate encoder learns it up to a linear map (an MLP head lets it match a warped copy; ``encoder:
    mlp`` gives one). ``hidden`` and ``channels`` are not used."""
    flat = {n: tuple(int(s) for s in shape) for n, shape in shapes.items()}
    bad = {n: s for n, s in flat.items() if len(s) != 1}
    if bad:
        raise ConfigError(f"view encoder 'embedding' takes (D,) vectors; array(s) {bad} are not: "
                          "choose another encoder for this view")
    parts = {n: TabularMLP(s[0], out_dim, hidden=()) for n, s in flat.items()}
    return ViewEncoder(parts, dict.fromkeys(parts, out_dim), out_dim)


register_encoder("embedding", _embedding)


# ----------------------------------------------------------------------------- frozen ResNet-18
# Written out here rather than taken from torchvision: torchvision's only release for torch 2.13.0 is built
# against CUDA and does not import with the CPU torch pinned in pyproject.toml (issue 10). The module names
# are torchvision's, so its ResNet-18 state dicts load as they are.


class _BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's module names (so torchvision state dicts load as is).

    ``forward`` returns the 512-d pooled features (``fc`` is kept for key compatibility but unused).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(64, 64), _BasicBlock(64, 64))
        self.layer2 = nn.Sequential(_BasicBlock(64, 128, 2), _BasicBlock(128, 128))
        self.layer3 = nn.Sequential(_BasicBlock(128, 256, 2), _BasicBlock(256, 256))
        self.layer4 = nn.Sequential(_BasicBlock(256, 512, 2), _BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def load_resnet18(weights_file: str | os.PathLike) -> ResNet18:
    """A ResNet-18 from a local torchvision-style state dict (.safetensors, or .pt/.pth read with
    ``weights_only=True``: tensors only, no arbitrary objects). Never downloads anything."""
    path = Path(weights_file)
    if not path.is_file():
        raise InputError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(f"cannot read backbone weights {path}: {err}") from None
    if not isinstance(state, dict):
        raise InputError(f"backbone weights {path} do not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    in_ch = int(state["conv1.weight"].shape[1]) if "conv1.weight" in state else 3
    n_cls = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
    model = ResNet18(in_channels=in_ch, num_classes=n_cls)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise InputError(f"backbone weights {path} are not a ResNet-18 state dict "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model.eval()


@torch.no_grad()
def backbone_features(
    model: nn.Module,
    chips: np.ndarray,
    *,
    bands: Sequence[int] | None = None,
    input_size: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Frozen features ``(N, 512)`` of normalised chips, computed once in eval mode (no BatchNorm drift).

    ``bands`` picks the backbone's input channels from the chip channels; ``input_size`` resizes
    chips (bilinear) before the backbone.
    """
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    out = []
    for i in range(0, len(chips), batch_size):
        x = torch.as_tensor(np.asarray(chips[i : i + batch_size], dtype=np.float32), device=device)
        if bands is not None:
            x = x[:, list(bands)]
        if input_size is not None and x.shape[-1] != input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 512), np.float32)
