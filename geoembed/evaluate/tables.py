"""The evaluation table: read (any format ``enrich`` reads; lon/lat from a geometry) and checked, with
errors naming the column and the rows at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.errors import InputError

__all__ = ["bad_rows", "check_numeric", "read_table", "validate_table"]


def read_table(path: str | Path, lon_col: str = "lon", lat_col: str = "lat") -> pd.DataFrame:
    """Read a table with :func:`geoembed.io.tables.read_frame` (CSV, Parquet, GeoParquet, shapefile,
    GeoPackage, GeoJSON, FlatGeobuf; the same formats and errors as ``enrich`` and ``inspect``). CSV
    columns are text: :func:`validate_table` parses the columns the config names, naming bad rows.

    For a table with a geometry, when ``lon_col`` / ``lat_col`` are not columns they are filled from the
    geometry in EPSG:4326 (points as they are, other shapes by their centroid computed in a local
    equal-area projection); the geometry column is dropped.
    """
    from geoembed.io.tables import read_frame

    p = Path(path)
    if not p.is_file():
        raise InputError(f"evaluate.table: {p} does not exist")
    try:
        table = read_frame(p)
    except InputError as err:
        raise InputError(f"evaluate.table: {err}") from None
    if hasattr(getattr(table, "geometry", None), "crs"):  # a GeoDataFrame (not a column named geometry)
        return with_lonlat(table, lon_col, lat_col)
    return table


def with_lonlat(gdf, lon_col: str, lat_col: str) -> pd.DataFrame:
    """A plain DataFrame with lon/lat columns taken from the geometry when missing."""
    df = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
    if lon_col in df.columns and lat_col in df.columns:
        return df
    if gdf.crs is None:
        raise InputError("evaluate.table: the geometry has no CRS; cannot derive lon/lat")
    geom = gdf.geometry
    if not (geom.geom_type == "Point").all():
        g4326 = geom.to_crs("EPSG:4326")
        b = g4326.total_bounds
        lon0, lat0 = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        laea = f"+proj=laea +lat_0={lat0:.6f} +lon_0={lon0:.6f} +ellps=WGS84 +units=m +no_defs"
        geom = geom.to_crs(laea).centroid
    pts = geom.to_crs("EPSG:4326")
    df[lon_col] = pts.x.to_numpy()
    df[lat_col] = pts.y.to_numpy()
    return df


def check_numeric(table: pd.DataFrame, col: str, what: str) -> np.ndarray:
    """The column as float64 (CSV text parsed); InputError naming the first bad rows and their values."""
    from geoembed.io.tables import numeric_column

    return numeric_column(table[col], col, what, "evaluate.table")


def bad_rows(table: pd.DataFrame, mask: np.ndarray) -> str:
    """The first offending row numbers (0-based positions in the table), for error messages."""
    bad = np.flatnonzero(mask)
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return ", ".join(str(r) for r in bad[:5]) + more + " (0-based)"


def validate_table(table: pd.DataFrame, cfg: EvaluateConfig, needs_coords: bool) -> None:
    """Check columns and values; InputError naming the column and rows at fault."""
    need = {"evaluate.target": [cfg.target], "evaluate.covariates": cfg.covariates,
            "evaluate.categorical": cfg.categorical}
    if cfg.exposure:
        need["evaluate.exposure"] = [cfg.exposure]
    if needs_coords:
        need["evaluate.lon_col/lat_col"] = [cfg.lon_col, cfg.lat_col]
    missing = {k: [c for c in cols if c not in table.columns] for k, cols in need.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        desc = "; ".join(f"{k}: {v}" for k, v in missing.items())
        raise InputError(f"the table lacks column(s) {desc} (it has {list(table.columns)[:20]})")
    if len(table) < 2:
        raise InputError(f"the table has {len(table)} row(s); need at least 2 per fold")
    y = check_numeric(table, cfg.target, "target")
    fam = cfg.family
    if fam in ("poisson", "tweedie") and (y < 0).any():
        raise InputError(f"target {cfg.target!r} must be >= 0 for family {fam!r}; "
                         f"negative in rows {bad_rows(table, y < 0)}")
    if fam == "gamma" and (y <= 0).any():
        raise InputError(f"target {cfg.target!r} must be > 0 for family 'gamma'; "
                         f"non-positive in rows {bad_rows(table, y <= 0)}")
    if fam == "binomial" and not np.isin(y, (0.0, 1.0)).all():
        raise InputError(f"target {cfg.target!r} must be 0 or 1 for family 'binomial'; "
                         f"other values in rows {bad_rows(table, ~np.isin(y, (0.0, 1.0)))}")
    if cfg.exposure:
        e = check_numeric(table, cfg.exposure, "exposure")
        if (e <= 0).any():
            raise InputError(f"exposure {cfg.exposure!r} must be > 0; non-positive in rows {bad_rows(table, e <= 0)}")
    for c in cfg.covariates:
        check_numeric(table, c, "covariate")
    for c in cfg.categorical:
        if table[c].isna().any():
            raise InputError(f"categorical column {c!r} has missing values in rows {bad_rows(table, table[c].isna().to_numpy())}")
    if needs_coords:
        lon = check_numeric(table, cfg.lon_col, "longitude")
        lat = check_numeric(table, cfg.lat_col, "latitude")
        bad = (np.abs(lon) > 180) | (np.abs(lat) > 90)
        _check_projected(lon, lat, cfg)
        if bad.any():
            raise InputError(f"coordinates out of range (lon in [-180, 180], lat in [-90, 90]; "
                             f"columns {cfg.lon_col!r}/{cfg.lat_col!r}) in rows {bad_rows(table, bad)}")


def _check_projected(lon: np.ndarray, lat: np.ndarray, cfg: EvaluateConfig) -> None:
    """InputError when most coordinates look like projected metres rather than degrees."""
    from geoembed.io.tables import projected_like, projected_message

    like = np.flatnonzero(projected_like(lon, lat))
    if len(like) and len(like) >= 0.5 * len(lon):
        how = ("Give the table its CRS: store it as GeoParquet or GeoPackage with a point geometry in that CRS "
               "(e.g. geopandas: gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df.x, df.y), "
               "crs='EPSG:XXXX').to_parquet(...)); evaluate then reads lon/lat from the geometry.")
        raise InputError(projected_message("evaluate.table", cfg.lon_col, cfg.lat_col, len(like), len(lon),
                                           (float(lon[like[0]]), float(lat[like[0]])), how))
