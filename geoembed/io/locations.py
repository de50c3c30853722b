"""The locations artefact: GeoParquet with ``location_id`` (unique int64), ``lon``/``lat`` (float64,
EPSG:4326 degrees), ``block_id`` (int64 spatial block for splits) and point geometry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from geoembed.errors import InputError
from geoembed.io.atomic import atomic_path

REQUIRED = ("location_id", "lon", "lat")
META_KEY = b"geoembed"
LOCATION_META_KEY_STR = "geoembed"


def make_locations(
    location_id: np.ndarray, lon: np.ndarray, lat: np.ndarray, block_id: np.ndarray | None = None
) -> gpd.GeoDataFrame:
    """Assemble a validated locations frame from arrays."""
    df = pd.DataFrame(
        {
            "location_id": np.asarray(location_id, dtype=np.int64),
            "lon": np.asarray(lon, dtype=np.float64),
            "lat": np.asarray(lat, dtype=np.float64),
        }
    )
    if block_id is not None:
        df["block_id"] = np.asarray(block_id, dtype=np.int64)
    gdf = gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df["lon"], df["lat"]), crs="EPSG:4326")
    validate_locations(gdf, "<in memory>")
    return gdf


def validate_locations(df: pd.DataFrame, origin: str | os.PathLike) -> None:
    """Raise InputError naming ``origin`` and the first offending rows if the contract is broken."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{origin}: locations table lacks column(s) {missing}")
    if len(df) == 0:
        raise InputError(f"{origin}: locations table is empty")
    ids = df["location_id"]
    if not pd.api.types.is_integer_dtype(ids):
        raise InputError(f"{origin}: location_id must be integer, got {ids.dtype}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"{origin}: location_id not unique, e.g. {dup.head(5).tolist()}")
    lon = df["lon"].to_numpy(dtype=float)
    lat = df["lat"].to_numpy(dtype=float)
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"{origin}: {int(bad.sum())} locations have invalid lon/lat, e.g. rows {rows}")


def write_locations(gdf: gpd.GeoDataFrame, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write locations as GeoParquet atomically, with ``meta`` stored in the file's metadata."""
    import io

    import pyarrow.parquet as pq

    validate_locations(gdf, path)
    path = Path(path)
    buf = io.BytesIO()
    gdf.to_parquet(buf, index=False)  # GeoParquet "geo" metadata
    table = pq.read_table(io.BytesIO(buf.getvalue()))
    md = dict(table.schema.metadata or {})
    md[META_KEY] = json.dumps(meta or {}, default=str).encode()
    table = table.replace_schema_metadata(md)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def read_locations_meta(path: str | os.PathLike) -> dict:
    """The geoembed metadata stored in a locations file (empty if none)."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    return json.loads(md[META_KEY]) if META_KEY in md else {}


def read_locations(path: str | os.PathLike) -> gpd.GeoDataFrame:
    """Read and validate a locations GeoParquet."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"locations file {p} does not exist (run `geoembed build` first?)")
    try:
        gdf = gpd.read_parquet(p)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(f"cannot read locations file {p}: {err}") from None
    validate_locations(gdf, p)
    return gdf
