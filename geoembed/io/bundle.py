"""The model bundle artefact: everything needed to embed coordinates, and nothing else.

Layout of ``bundle/`` (written atomically as one folder)::

    weights.safetensors   coordinate-encoder weights (no pickle)
    geoembed.json         schema_version, encoder spec, coordinate_order ["lon", "lat"], embedding_dim,
                          training footprint (GeoJSON, EPSG:4326), normalisation constants, data
                          fingerprint, package version, out_of_support_km; optionally a model_card
                          and a reduction (see below)
    config.yaml           the resolved run config
    metrics.json          training metrics (best epoch, held-out retrieval accuracy, ...) and the
                          training diagnostics (:mod:`geoembed.train.diagnostics`; not sealed)

:func:`load_bundle` rebuilds the coordinate encoder from the spec alone (no view data) and
:meth:`Bundle.embed` maps float64 lon/lat arrays to ``(N, d)`` float32 embeddings.

**Validated and sealed**: :func:`save_bundle` (the one writer: ``geoembed train``, ``geoembed import``
and reduced copies all go through it) checks what it writes against the schema of geoembed.json
(:mod:`geoembed.io.bundle_schema`), refuses non-finite weights and records a seal, SHA-256 hashes of
every geoembed.json field and of the weights file (:mod:`geoembed.io.seal`). :func:`load_bundle`
checks the path (a file, a missing path or a folder without geoembed.json is an error saying so),
every field for type and range (errors name the file and the key), the seal (an edited field or
other weights are refused) and the weights (NaN/inf refused, naming the tensor). The bundle
fingerprint is derived from the seal. Bundles written before the seal (schema 1) load with a warning.

**Model card** (``model_card`` in geoembed.json; required for imported encoders, optional otherwise):
where the encoder comes from and what it is good for: ``source``, ``version``, ``licence``,
``training_data``, ``output_dim`` (the encoder's own dimension) and ``effective_resolution``, plus any
further JSON fields.

**Reduction** (optional): a fixed PCA (optionally whitened) to ``k`` components shipped with the bundle
(:class:`geoembed.io.reduction.Reduction` maths; fitted by :mod:`geoembed.importers.reduce`). Its
spec is ``reduction`` in geoembed.json, its arrays are the float64 tensors ``reduction.mean``,
``reduction.components`` and ``reduction.explained_variance`` in weights.safetensors, so the seal
and the bundle fingerprint cover it. :meth:`Bundle.embed` applies it: ``embedding_dim`` is then ``k`` and
``raw_embedding_dim`` the encoder's own dimension.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from geoembed.errors import ConfigError, InputError
from geoembed.io.atomic import atomic_path
from geoembed.io.bundle_schema import CARD_FIELDS, SCHEMA_VERSION, normalisation, validate_card, validate_meta
from geoembed.io.seal import make_seal, verify_seal
from geoembed.nn.networks import CoordinateEncoder, build_coordinate_encoder
from geoembed.nn.specs import within
from geoembed.version import __version__

__all__ = [
    "CARD_FIELDS",
    "SCHEMA_VERSION",
    "Bundle",
    "build_coordinate_encoder",
    "check_bundle_path",
    "load_bundle",
    "save_bundle",
    "save_untrained_bundle",
    "validate_card",
]

WEIGHTS = "weights.safetensors"
META = "geoembed.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
_MIN_ROWS = 64
_CHUNK = 4096  # rows per forward pass: keeps the (chunk, L^2) harmonics block in cache
REDUCTION_PREFIX = "reduction."
_REDUCTION_TENSORS = ("mean", "components", "explained_variance")


def _reduction_meta(reduction, raw_dim: int) -> dict:
    """The JSON part of a reduction stored in a bundle (the arrays go to the weights file)."""
    if reduction.embedding_dim != raw_dim:
        raise ValueError(f"the reduction expects {reduction.embedding_dim}-dimensional embeddings, the "
                         f"encoder gives {raw_dim}")
    total = float(reduction.info.get("total_variance", 0.0))
    return {
        "method": reduction.method,
        "n_components": reduction.n_components,
        "raw_embedding_dim": raw_dim,
        "n_samples": int(reduction.n_samples),
        "explained_variance_ratio": [float(v) / total for v in reduction.explained_variance] if total > 0 else None,
        "info": {k: v for k, v in reduction.info.items() if k != "total_variance"} | {"total_variance": total},
    }


def _weights_state(encoder: torch.nn.Module, reduction=None) -> dict[str, torch.Tensor]:
    """The tensors of weights.safetensors: the encoder's state and the reduction's float64 arrays."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    if reduction is not None:
        for name in _REDUCTION_TENSORS:
            state[REDUCTION_PREFIX + name] = torch.from_numpy(
                np.ascontiguousarray(getattr(reduction, name), dtype=np.float64))
    return state


def _non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding NaN or inf, else None."""
    for name in sorted(state):
        t = state[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def save_bundle(
    path: str | os.PathLike,
    encoder: torch.nn.Module,
    spec: dict,
    *,
    footprint,
    out_of_support_km: float,
    config: dict,
    metrics: dict,
    data_fingerprint: str,
    card: dict | None = None,
    reduction=None,
) -> Path:
    """Write a bundle folder atomically (a killed write leaves no half bundle) and return its path.

    ``footprint`` is a shapely geometry in EPSG:4326 (lon, lat) covering the training locations;
    ``config`` is the resolved run config as a plain dict. ``card`` is an optional model card
    (:func:`validate_card`); ``reduction`` an optional :class:`geoembed.io.reduction.Reduction`
    fitted on this encoder's embeddings, applied by :meth:`Bundle.embed`.
    """
    import shapely.geometry

    path = Path(path)
    spec = json.loads(json.dumps(spec))  # plain JSON types only
    probe = {k: tuple(v.shape) for k, v in build_coordinate_encoder(spec).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    if probe != have:
        diff = sorted(k for k in set(probe) | set(have) if probe.get(k) != have.get(k))
        raise ValueError(f"encoder weights do not match its spec (differing: {diff[:5]})")
    if footprint is None or footprint.is_empty:
        raise ValueError("save_bundle needs a non-empty training footprint")
    raw_dim = int(spec["embedding_dim"])
    meta = {
        "schema_version": SCHEMA_VERSION,
        "encoder": spec,
        "coordinate_order": ["lon", "lat"],
        "crs": "EPSG:4326",
        "embedding_dim": raw_dim if reduction is None else int(reduction.n_components),
        "footprint": shapely.geometry.mapping(footprint),
        "normalisation": normalisation(spec),
        "data_fingerprint": data_fingerprint,
        "package_version": __version__,
        "out_of_support_km": float(out_of_support_km),
    }
    if card is not None:
        meta["model_card"] = validate_card(card)
    if reduction is not None:
        meta["raw_embedding_dim"] = raw_dim
        meta["reduction"] = _reduction_meta(reduction, raw_dim)
    try:  # plain JSON (lists, no NaN), exactly as it will read back: the seal is computed on that
        meta = json.loads(json.dumps(meta, default=float, allow_nan=False))
    except ValueError as err:
        raise InputError(f"bundle {path}: cannot write geoembed.json: {err}") from None
    origin = f"bundle {path / META} (being written)"
    validate_meta({**meta, "seal": None}, origin)  # what load_bundle will check, before anything is written
    state = _weights_state(encoder, reduction)
    bad = _non_finite(state)
    if bad:
        raise InputError(f"{origin}: the tensor {bad!r} holds NaN or infinite values; a bundle with them cannot "
                         f"embed anything (did the training diverge?)")
    from safetensors.torch import save

    weights = save(state, metadata={"format": "pt"})
    meta["seal"] = make_seal(meta, weights)
    meta_text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        (tmp / WEIGHTS).write_bytes(weights)
        (tmp / META).write_text(meta_text)
        (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return path


def save_untrained_bundle(
    path: str | os.PathLike,
    spec: dict,
    *,
    footprint,
    seed: int = 0,
    out_of_support_km: float = 5.0,
) -> Path:
    """A bundle of a freshly initialised encoder (no training): for tests and plumbing checks."""
    torch.manual_seed(seed)
    enc = build_coordinate_encoder(spec)
    return save_bundle(path, enc, enc.inference_spec, footprint=footprint,
                       out_of_support_km=out_of_support_km,
                       config={"untrained": True, "seed": seed}, metrics={},
                       data_fingerprint="untrained")


@dataclass
class Bundle:
    """A loaded bundle. ``embed(lon, lat)`` is the only thing enrichment needs."""

    path: Path
    meta: dict
    encoder: CoordinateEncoder
    fingerprint: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    coordinate_order: tuple[str, str] = ("lon", "lat")
    reduction: Any = None  # geoembed.io.reduction.Reduction shipped with the bundle, if any

    @property
    def embedding_dim(self) -> int:
        """Dimension of :meth:`embed`'s output (``k`` when the bundle ships a reduction)."""
        return int(self.meta["embedding_dim"])

    @property
    def raw_embedding_dim(self) -> int:
        """The coordinate encoder's own output dimension (before any reduction)."""
        return int(self.meta.get("raw_embedding_dim", self.meta["embedding_dim"]))

    @property
    def card(self) -> dict | None:
        """The model card (imported encoders always have one), or None."""
        return self.meta.get("model_card")

    @property
    def out_of_support_km(self) -> float:
        return float(self.meta["out_of_support_km"])

    @property
    def footprint(self):
        """Training footprint as a shapely geometry in EPSG:4326."""
        import shapely.geometry

        return shapely.geometry.shape(self.meta["footprint"])

    def embed(self, lon: np.ndarray, lat: np.ndarray, batch_size: int = 65536, *, raw: bool = False) -> np.ndarray:
        """``(N, embedding_dim)`` float32 embeddings of named lon/lat arrays (degrees, EPSG:4326).

        Rows with non-finite coordinates get NaN embeddings. Work is done in float32 (or the spec's
        float64) under ``torch.inference_mode`` in cache-sized chunks. The bundle's reduction, if any,
        is applied (in float64) unless ``raw`` is set, which returns the encoder's own
        ``raw_embedding_dim`` features.
        """
        # Writable: torch must not wrap read-only buffers (pandas' copy-on-write arrays, Arrow columns).
        lon = np.require(np.asarray(lon, dtype=np.float64).reshape(-1), requirements=["C", "W"])
        lat = np.require(np.asarray(lat, dtype=np.float64).reshape(-1), requirements=["C", "W"])
        if lon.shape != lat.shape:
            raise InputError(f"lon and lat have different lengths ({lon.size} vs {lat.size})")
        bad = ~(np.isfinite(lon) & np.isfinite(lat))
        if bad.any():
            lon, lat = np.where(bad, 0.0, lon), np.where(bad, 0.0, lat)
        reduction = None if raw else self.reduction
        dim = self.raw_embedding_dim if reduction is None else self.embedding_dim
        out = np.empty((lon.size, dim), dtype=np.float32)
        chunk = max(1, min(int(batch_size), _CHUNK))
        with torch.inference_mode():
            for i in range(0, lon.size, chunk):
                j = min(i + chunk, lon.size)
                # Pad short pieces to _MIN_ROWS: BLAS rounds tiny matrix products differently, and a
                # row's embedding must not depend on how a table was split into calls.
                pad = max(0, _MIN_ROWS - (j - i))
                lo, la = lon[i:j], lat[i:j]
                if pad:
                    lo, la = np.concatenate([lo, np.repeat(lo[-1:], pad)]), np.concatenate([la, np.repeat(la[-1:], pad)])
                emb = self.encoder(lon=torch.from_numpy(lo), lat=torch.from_numpy(la))
                if reduction is None:
                    out[i:j] = emb.float().numpy()[: j - i]
                else:  # on the padded block too: a row's value must not depend on the call's length
                    out[i:j] = reduction.transform(emb.numpy())[: j - i]
        if bad.any():
            out[bad] = np.nan
        return out

    def distance_to_footprint_km(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Distance (km) from each point to the training footprint: 0 inside, NaN for non-finite input
        (:class:`geoembed.geo.SupportIndex`, also across the antimeridian)."""
        from geoembed.geo import SupportIndex

        return SupportIndex(self.footprint).distance_km(lon, lat)


def check_bundle_path(path: str | os.PathLike) -> Path:
    """``path`` as a bundle folder holding geoembed.json and weights.safetensors, or an InputError
    saying what it is instead (missing, a file, a folder without geoembed.json, a run folder)."""
    p = Path(path)
    what = f"{WEIGHTS} + {META}"
    if not p.exists():
        raise InputError(f"bundle {p} does not exist (a bundle is a folder holding {what}, written by "
                         f"`geoembed train` or `geoembed import`)")
    if not p.is_dir():
        inside = p.parent if (p.parent / META).is_file() and p.name in (META, WEIGHTS, CONFIG, METRICS) else None
        raise InputError(f"bundle {p} is a file, not a bundle folder (a folder holding {what})"
                         + (f": pass its folder {inside}" if inside is not None else ""))
    if not (p / META).is_file():
        hint = f"; the bundle of a run folder is {p / 'bundle'}" if (p / "bundle" / META).is_file() else ""
        raise InputError(f"bundle {p} is a folder without {META}, not a bundle (a folder holding {what}){hint}")
    if not (p / WEIGHTS).is_file():
        raise InputError(f"bundle {p} is incomplete: {WEIGHTS} is missing")
    return p


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a bundle folder: check ``geoembed.json`` (:func:`geoembed.io.bundle_schema.validate_meta`)
    and its seal against the weights (:func:`geoembed.io.seal.verify_seal`), refuse non-finite
    weights, rebuild the encoder from the spec and load the safetensors weights. Every problem is an
    InputError naming the file and the key or tensor."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = check_bundle_path(path)
    origin = f"bundle {path / META}"
    meta_bytes = (path / META).read_bytes()
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{origin} is not valid JSON: {err}") from None
    validate_meta(meta, origin)
    weight_bytes = (path / WEIGHTS).read_bytes()
    fingerprint = verify_seal(meta, weight_bytes, meta_bytes, origin, str(path))
    try:
        state = load(weight_bytes)
    except (SafetensorError, Exception) as err:  # noqa: BLE001 - any parse failure is a bad file
        raise InputError(f"bundle {path / WEIGHTS} is not a valid safetensors file: {err}") from None
    bad = _non_finite(state)
    if bad:
        raise InputError(f"bundle {path / WEIGHTS}: the tensor {bad!r} holds NaN or infinite values")
    reduction = _load_reduction(path, meta, state)
    try:
        encoder = build_coordinate_encoder(meta["encoder"])
    except ConfigError as err:  # a range the encoding or network refuses (types were checked above)
        raise InputError(f"{origin}: {within('encoder', err)}") from None
    own = encoder.state_dict()
    for name, t in sorted(state.items()):  # load_state_dict would cast silently
        if name in own and t.dtype != own[name].dtype:
            raise InputError(f"bundle {path / WEIGHTS}: the tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, "
                             f"the encoder spec's dtype is {str(own[name].dtype).removeprefix('torch.')}")
    try:
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"bundle {path}: weights do not match the encoder spec: {err}") from None
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    try:
        config = yaml.safe_load((path / CONFIG).read_text()) if (path / CONFIG).is_file() else {}
    except yaml.YAMLError as err:
        raise InputError(f"bundle {path}: {CONFIG} is not valid YAML: {err}") from None
    try:
        metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).is_file() else {}
    except ValueError as err:
        raise InputError(f"bundle {path}: {METRICS} is not valid JSON: {err}") from None
    return Bundle(path=path, meta=meta, encoder=encoder, fingerprint=fingerprint, config=config or {},
                  metrics=metrics, reduction=reduction)


def _load_reduction(path: Path, meta: dict, state: dict):
    """Pop the reduction tensors from ``state`` and rebuild the bundle's reduction (or None)."""
    from geoembed.io.reduction import METHODS, Reduction

    arrays = {k[len(REDUCTION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(REDUCTION_PREFIX)}
    spec = meta.get("reduction")
    if spec is None and not arrays:
        return None
    if spec is None or set(arrays) != set(_REDUCTION_TENSORS):
        raise InputError(f"bundle {path}: the reduction is incomplete (geoembed.json "
                         f"{'has no' if spec is None else 'has a'} reduction entry, {WEIGHTS} holds "
                         f"{sorted(REDUCTION_PREFIX + k for k in arrays) or 'no reduction tensors'})")
    try:
        red = Reduction(mean=arrays["mean"].double().numpy(), components=arrays["components"].double().numpy(),
                        explained_variance=arrays["explained_variance"].double().numpy(),
                        method=spec["method"], n_samples=int(spec.get("n_samples", 0)),
                        info=dict(spec.get("info") or {}))
        raw_dim, k = int(meta["raw_embedding_dim"]), int(meta["embedding_dim"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path / META}: malformed reduction entry ({err})") from None
    ok = (red.method in METHODS and red.components.ndim == 2 and red.components.shape == (k, raw_dim)
          and red.mean.shape == (raw_dim,) and red.explained_variance.shape == (k,)
          and raw_dim == int(meta["encoder"].get("embedding_dim", -1)) and int(spec.get("n_components", -1)) == k
          and all(np.isfinite(a).all() for a in (red.mean, red.components, red.explained_variance))
          and (red.method != "whiten" or bool((red.explained_variance > 0).all())))
    if not ok:
        raise InputError(f"bundle {path}: the reduction does not fit the encoder (method {red.method!r}, "
                         f"components {tuple(red.components.shape)}, mean {tuple(red.mean.shape)}, "
                         f"embedding_dim {k}, raw_embedding_dim {raw_dim})")
    return red
