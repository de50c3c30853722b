"""The model bundle artefact: everything needed to embed coordinates, and nothing else.

Layout of ``bundle/`` (written atomically as one folder)::

    weights.safetensors   coordinate-encoder weights (no pickle)
    geoembed.json         schema_version, encoder spec, coordinate_order ["lon", "lat"], embedding_dim,
                          training footprint (GeoJSON, EPSG:4326), normalisation constants, data
                          fingerprint, package version, out_of_support_km
    config.yaml           the resolved run config
    metrics.json          training metrics (best epoch, held-out retrieval accuracy, ...)

:func:`load_bundle` rebuilds the coordinate encoder from the spec alone (no view data) and
:meth:`Bundle.embed` maps float64 lon/lat arrays to ``(N, d)`` float32 embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from geoembed.errors import InputError
from geoembed.io.atomic import atomic_path
from geoembed.nn.networks import CoordinateEncoder, build_coordinate_encoder
from geoembed.version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "build_coordinate_encoder",
    "load_bundle",
    "save_bundle",
    "save_untrained_bundle",
]

SCHEMA_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "geoembed.json"
CONFIG = "config.yaml"
METRICS = "metrics.json"
_MIN_ROWS = 64
_CHUNK = 4096  # rows per forward pass: keeps the (chunk, L^2) harmonics block in cache


def _normalisation(spec: dict) -> dict:
    """The data-dependent constants of the encodings (also inside ``spec``), listed for readers."""
    out: dict[str, Any] = {}
    for i, enc in enumerate(spec.get("encodings", [])):
        if enc.get("type") == "local_multiscale":
            out[f"encoding_{i}"] = {
                "projection": "azimuthal_equidistant (spherical, R=6371008.8 m)",
                "center_lon": enc["center_lon"],
                "center_lat": enc["center_lat"],
                "min_wavelength_m": enc["min_wavelength_m"],
                "max_wavelength_m": enc["max_wavelength_m"],
                "xy_scale_m": enc["max_wavelength_m"],
            }
        elif enc.get("type") == "spherical_harmonics":
            out[f"encoding_{i}"] = {"polar_angle": "90 - lat (degrees)", "azimuth": "lon (degrees)"}
    return out


def _weights_bytes(encoder: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    return save(state, metadata={"format": "pt"})


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
) -> Path:
    """Write a bundle folder atomically (a killed write leaves no half bundle) and return its path.

    ``footprint`` is a shapely geometry in EPSG:4326 (lon, lat) covering the training locations;
    ``config`` is the resolved run config as a plain dict.
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
    meta = {
        "schema_version": SCHEMA_VERSION,
        "encoder": spec,
        "coordinate_order": ["lon", "lat"],
        "crs": "EPSG:4326",
        "embedding_dim": int(spec["embedding_dim"]),
        "footprint": shapely.geometry.mapping(footprint),
        "normalisation": _normalisation(spec),
        "data_fingerprint": data_fingerprint,
        "package_version": __version__,
        "out_of_support_km": float(out_of_support_km),
    }
    weights = _weights_bytes(encoder)
    meta_text = json.dumps(meta, indent=2, default=float) + "\n"
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

    @property
    def embedding_dim(self) -> int:
        return int(self.meta["embedding_dim"])

    @property
    def out_of_support_km(self) -> float:
        return float(self.meta["out_of_support_km"])

    @property
    def footprint(self):
        """Training footprint as a shapely geometry in EPSG:4326."""
        import shapely.geometry

        return shapely.geometry.shape(self.meta["footprint"])

    def embed(self, lon: np.ndarray, lat: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """``(N, embedding_dim)`` float32 embeddings of named lon/lat arrays (degrees, EPSG:4326).

        Rows with non-finite coordinates get NaN embeddings. Work is done in float32 (or the spec's
        float64) under ``torch.inference_mode`` in cache-sized chunks.
        """
        lon = np.ascontiguousarray(lon, dtype=np.float64).reshape(-1)
        lat = np.ascontiguousarray(lat, dtype=np.float64).reshape(-1)
        if lon.shape != lat.shape:
            raise InputError(f"lon and lat have different lengths ({lon.size} vs {lat.size})")
        bad = ~(np.isfinite(lon) & np.isfinite(lat))
        if bad.any():
            lon, lat = np.where(bad, 0.0, lon), np.where(bad, 0.0, lat)
        out = np.empty((lon.size, self.embedding_dim), dtype=np.float32)
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
                out[i:j] = emb.float().numpy()[: j - i]
        if bad.any():
            out[bad] = np.nan
        return out

    def distance_to_footprint_km(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Distance (km) from each point to the training footprint: 0 inside, NaN for non-finite input
        (:class:`geoembed.geo.SupportIndex`, also across the antimeridian)."""
        from geoembed.geo import SupportIndex

        return SupportIndex(self.footprint).distance_km(lon, lat)


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a bundle folder: rebuild the encoder from ``geoembed.json`` and load its safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"bundle {path} does not exist (run `geoembed train` first?)")
    for name in (WEIGHTS, META):
        if not (path / name).is_file():
            raise InputError(f"bundle {path} is incomplete: {name} is missing")
    meta_bytes = (path / META).read_bytes()
    try:
        meta = json.loads(meta_bytes)
    except json.JSONDecodeError as err:
        raise InputError(f"{path / META} is not valid JSON: {err}") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path / META}: bundle schema {meta.get('schema_version')} is not {SCHEMA_VERSION}")
    if meta.get("coordinate_order") != ["lon", "lat"]:
        raise InputError(f"{path / META}: unsupported coordinate_order {meta.get('coordinate_order')}")
    for key in ("encoder", "embedding_dim", "footprint", "out_of_support_km"):
        if key not in meta:
            raise InputError(f"{path / META} lacks the key {key!r}")
    weight_bytes = (path / WEIGHTS).read_bytes()
    try:
        state = load(weight_bytes)
    except (SafetensorError, Exception) as err:  # noqa: BLE001 - any parse failure is a bad file
        raise InputError(f"{path / WEIGHTS} is not a valid safetensors file: {err}") from None
    try:
        encoder = build_coordinate_encoder(meta["encoder"])
        encoder.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"bundle {path}: weights do not match the encoder spec: {err}") from None
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    fingerprint = "sha256:" + hashlib.sha256(weight_bytes + meta_bytes).hexdigest()
    try:
        config = yaml.safe_load((path / CONFIG).read_text()) if (path / CONFIG).is_file() else {}
    except yaml.YAMLError as err:
        raise InputError(f"bundle {path}: {CONFIG} is not valid YAML: {err}") from None
    try:
        metrics = json.loads((path / METRICS).read_text()) if (path / METRICS).is_file() else {}
    except ValueError as err:
        raise InputError(f"bundle {path}: {METRICS} is not valid JSON: {err}") from None
    return Bundle(path=path, meta=meta, encoder=encoder, fingerprint=fingerprint, config=config or {},
                  metrics=metrics)
