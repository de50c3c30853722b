"""A tiny untrained model bundle over the Olinda kit, for tests and examples that need a real bundle."""

from __future__ import annotations

from pathlib import Path

import shapely

#: The Olinda Landsat scene's extent (lon -34.917..-34.826, lat -8.041..-7.950).
OLINDA_BOX = shapely.box(-34.917, -8.041, -34.826, -7.950)

#: A small local-multiscale + MLP coordinate encoder with a 4-dimensional embedding.
TINY_SPEC = {
    "encodings": [{"type": "local_multiscale", "center_lon": -34.87, "center_lat": -7.995,
                   "min_wavelength_m": 300.0, "max_wavelength_m": 20000.0, "n_scales": 4,
                   "n_directions": 2}],
    "network": {"type": "mlp", "hidden": [16]},
    "embedding_dim": 4,
}
TINY_EMB = [f"emb_{i}" for i in range(TINY_SPEC["embedding_dim"])]


def make_tiny_bundle(path: str | Path, seed: int = 0, out_of_support_km: float = 2.0) -> Path:
    """Save a freshly initialised TINY_SPEC encoder as a bundle at ``path`` (deterministic for ``seed``)."""
    import torch

    from geoembed.io.bundle import build_coordinate_encoder, save_bundle

    torch.manual_seed(seed)
    enc = build_coordinate_encoder(TINY_SPEC)
    return save_bundle(path, enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=out_of_support_km,
                       config={"test": True}, metrics={}, data_fingerprint="test")
