"""Shared test fixtures: paths to the bundled real kits; no progress bars in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GEOEMBED_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _private_fingerprint_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's fingerprint cache (~/.cache/geoembed)."""
    monkeypatch.setenv("GEOEMBED_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "geoembed-cache"))

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def olinda_dir() -> Path:
    return DATA / "olinda"


@pytest.fixture(scope="session")
def helsinki_pbf() -> Path:
    return DATA / "helsinki" / "Helsinki.osm.pbf"


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    """A tiny untrained bundle over the Olinda kit (geoembed.testing.bundles)."""
    from geoembed.testing.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "bundle", seed=0)


@pytest.fixture(scope="session")
def bundle(bundle_path):
    from geoembed.io.bundle import load_bundle

    return load_bundle(bundle_path)
