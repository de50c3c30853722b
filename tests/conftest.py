"""Shared test fixtures: paths to the bundled real kits; no progress bars in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GEOEMBED_NO_PROGRESS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def olinda_dir() -> Path:
    return DATA / "olinda"


@pytest.fixture(scope="session")
def helsinki_pbf() -> Path:
    return DATA / "helsinki" / "Helsinki.osm.pbf"
