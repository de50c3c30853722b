"""Synthetic training worlds: locations and view stores in which every view is a known function of place.

A world is a workdir as ``geoembed build`` leaves it (``locations.parquet`` with ``block_id``, and one
complete view store per view under ``views/<name>/``), small enough to train on in seconds. Each channel
is a smooth field (six plane waves of 1-5 km wavelength) of metric coordinates, so a view tells where a
location is and held-out retrieval is learnable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoembed.io.locations import make_locations, write_locations
from geoembed.io.viewstore import ArraySpec, ViewStore

__all__ = ["LON0", "LAT0", "SyntheticView", "make_world", "smooth_field"]

LON0, LAT0 = -34.87, -7.99  # south-west corner (Olinda)
_M_PER_DEG = 111_320.0


def smooth_field(x: np.ndarray, y: np.ndarray, channel: int) -> np.ndarray:
    """A smooth deterministic field (wavelengths 1-5 km) of metric coordinates, one per channel."""
    rng = np.random.default_rng(100 + channel)
    x, y = np.broadcast_arrays(x, y)
    out = np.zeros(x.shape)
    for _ in range(6):
        wl = rng.uniform(1000, 5000)
        ang = rng.uniform(0, np.pi)
        ph = rng.uniform(0, 2 * np.pi)
        out += np.sin(2 * np.pi * (x * np.cos(ang) + y * np.sin(ang)) / wl + ph)
    return out


@dataclass(frozen=True)
class SyntheticView:
    """One synthetic view: ``channels`` fields (numbered from ``first_field``) sampled as ``(C, chip, chip)``
    chips of ``pixel_m`` pixels around each location, or as a ``(C,)`` vector at it when ``chip`` is None.
    A fraction ``invalid_frac`` of rows has no data (NaN, ``valid`` False)."""

    kind: str = "raster"
    channels: int = 3
    chip: int | None = 8
    pixel_m: float = 60.0
    first_field: int = 0
    invalid_frac: float = 0.0
    array: str = "chips"

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The view's array for locations at metric ``x``, ``y``."""
        fields = range(self.first_field, self.first_field + self.channels)
        if self.chip is None:
            return np.stack([smooth_field(x, y, c) for c in fields], 1)
        off = (np.arange(self.chip) - self.chip / 2 + 0.5) * self.pixel_m
        px = x[:, None, None] + off[None, None, :]
        py = y[:, None, None] + off[None, :, None]
        return np.stack([smooth_field(px, py, c) for c in fields], axis=1).astype(np.float32)


def make_world(workdir: str | os.PathLike, views: dict[str, SyntheticView], n: int = 1200,
               extent_m: float = 5000.0, seed: int = 0, block_m: float = 1000.0) -> Path:
    """Write ``n`` uniform locations in an ``extent_m`` square at (LON0, LAT0) with ``block_id`` from a
    ``block_m`` grid, and one view store per entry of ``views``; returns the workdir."""
    workdir = Path(workdir)
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, extent_m, n)
    y = rng.uniform(0, extent_m, n)
    lon = LON0 + x / (_M_PER_DEG * math.cos(math.radians(LAT0)))
    lat = LAT0 + y / _M_PER_DEG
    block = (np.floor(x / block_m) * 100 + np.floor(y / block_m)).astype(np.int64)
    workdir.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n) + 1000
    write_locations(make_locations(ids, lon, lat, block), workdir / "locations.parquet")
    u = rng.random(n)  # one draw: row i is invalid in every view whose invalid_frac exceeds u[i]
    for name, view in views.items():
        arr = view.sample(x, y)
        valid = u >= view.invalid_frac
        arr[~valid] = np.nan
        store = ViewStore.create_or_resume(
            workdir / "views" / name, location_ids=ids, arrays={view.array: ArraySpec(arr.shape[1:], "float32")},
            chunk_rows=512, kind=view.kind, attrs={}, build_fingerprint=f"synthetic-{name}-{seed}-{n}")
        for i in range(store.n_chunks):
            a, b = store.chunk_bounds(i)
            store.write_chunk(i, {view.array: arr[a:b]}, valid[a:b].astype(np.float32), valid[a:b])
        store.finalize()
    return workdir
