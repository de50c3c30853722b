"""A synthetic motor/property policy table on the real Olinda kit: real places, real covariates, simulated claims.

Policies are placed at random points inside the 470 Olinda census tracts (``olinda1.shp``), a tract being
chosen with probability proportional to its resident count ``V014``. Each policy gets an exposure in
policy-years and a building age; its claim count is Poisson with mean ``exposure x frequency`` where the
log frequency depends on two *real* spatial covariates read at the policy's location:

* greenness: an NDVI-like band ratio ``(b4 - b3) / (b4 + b3)`` of the Landsat-7 scene ``L7_ETMs.tif``
  (bands 1, 2, 3, 4, 5, 7: band positions 3 and 4 are red and near infrared), averaged over a 3 x 3 pixel
  (~85 m) window; built-up, sealed ground floods and is burgled more, so greener places claim less;
* elevation from ``olinda_dem_utm25s.tif``: low-lying places claim more;

plus the building age (a non-spatial base covariate). The coordinates alone do not reveal the risk: it
comes from the imagery. The claims are simulated; the places and the covariates are real.

    from geoembed.testing.policies import make_policies
    policies = make_policies(n=5000, seed=0)     # lon, lat, exposure, building_age, claims, ...
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.errors import InputError

#: The real kit shipped with the repository.
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "olinda"
TRACTS = "olinda1.shp"
LANDSAT = "L7_ETMs.tif"
DEM = "olinda_dem_utm25s.tif"

#: Coefficients of the true log frequency (per standardised covariate; building age per decade).
TRUE_EFFECTS = {"greenness": -0.45, "elevation": -0.35, "building_age_decade": 0.08}
#: Means and standard deviations used to standardise the covariates (fixed, so the truth is a fixed
#: function of place and does not depend on the sample).
_STANDARDISE = {"greenness": (-0.05, 0.12), "elevation": (20.0, 20.0)}

__all__ = ["DEFAULT_DATA_DIR", "TRUE_EFFECTS", "kit_footprint", "make_policies", "sample_points_in_tracts",
           "spatial_covariates", "true_log_relativity"]


def _kit_file(data_dir: Path, name: str) -> Path:
    p = data_dir / name
    if not p.is_file():
        raise InputError(f"the Olinda kit file {p} is missing (data_dir={data_dir})")
    return p


def sample_points_in_tracts(n: int, seed: int = 0, data_dir: str | os.PathLike | None = None,
                            weight_col: str = "V014", within=None) -> pd.DataFrame:
    """``n`` random points inside the census tracts, tracts drawn with probability ~ ``weight_col``.

    ``within``: an optional shapely geometry (EPSG:4326); tracts are clipped to it first (tracts outside
    it get no points), e.g. the footprint of the rasters the points will be sampled from.

    Returns columns ``lon``, ``lat`` (EPSG:4326), ``tract`` (the tract code ``CD_GEOCODI``) and
    ``neighbourhood`` (``NM_BAIR``). Points are drawn uniformly in each tract's bounding box and kept when
    inside the polygon (vectorised rejection rounds).
    """
    import geopandas as gpd
    import shapely

    if n < 1:
        raise InputError(f"n must be at least 1, got {n}")
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    path = _kit_file(data_dir, TRACTS)
    tracts = gpd.read_file(path).to_crs("EPSG:4326")
    if weight_col not in tracts.columns:
        raise InputError(f"{path} has no column {weight_col!r} (columns: {list(tracts.columns)})")
    w = pd.to_numeric(tracts[weight_col], errors="coerce").fillna(0).clip(lower=0).to_numpy(float)
    geoms = tracts.geometry.to_numpy()
    if within is not None:
        full = shapely.area(geoms)
        geoms = shapely.intersection(geoms, within)
        # weight by the residents of the part kept (residents assumed evenly spread over the tract)
        w = w * np.where(full > 0, shapely.area(geoms) / np.where(full > 0, full, 1.0), 0.0)
    if w.sum() <= 0:
        raise InputError(f"{path}: column {weight_col!r} has no positive weights")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(tracts), size=n, p=w / w.sum())
    bounds = shapely.bounds(geoms)
    lon = np.full(n, np.nan)
    lat = np.full(n, np.nan)
    todo = np.arange(n)
    for _ in range(200):
        if todo.size == 0:
            break
        b = bounds[which[todo]]
        x = rng.uniform(b[:, 0], b[:, 2])
        y = rng.uniform(b[:, 1], b[:, 3])
        inside = shapely.contains_xy(geoms[which[todo]], x, y)
        lon[todo[inside]], lat[todo[inside]] = x[inside], y[inside]
        todo = todo[~inside]
    if todo.size:  # pragma: no cover - only for degenerate (sliver) polygons
        pts = shapely.point_on_surface(geoms[which[todo]])
        lon[todo], lat[todo] = shapely.get_x(pts), shapely.get_y(pts)
    return pd.DataFrame({"lon": lon, "lat": lat,
                         "tract": tracts["CD_GEOCODI"].astype(str).to_numpy()[which],
                         "neighbourhood": tracts["NM_BAIR"].astype(str).to_numpy()[which]})


def _sample_raster(path: Path, lon: np.ndarray, lat: np.ndarray, bands: list[int],
                   window: int = 1) -> np.ndarray:
    """``(len(bands), n)`` values at the points (nearest pixel; a ``window`` x ``window`` mean when > 1).

    Points outside the raster get NaN.
    """
    import rasterio
    from rasterio.warp import transform as warp_transform
    from scipy.ndimage import uniform_filter

    with rasterio.open(path) as src:
        xs, ys = warp_transform("EPSG:4326", src.crs, list(map(float, lon)), list(map(float, lat)))
        arr = src.read(bands).astype(np.float64)
        rows, cols = rasterio.transform.rowcol(src.transform, np.asarray(xs), np.asarray(ys))
        rows, cols = np.asarray(rows), np.asarray(cols)
        h, w = src.height, src.width
    if window > 1:
        arr = np.stack([uniform_filter(a, size=window, mode="nearest") for a in arr])
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    out = np.full((len(bands), len(lon)), np.nan)
    out[:, ok] = arr[:, rows[ok], cols[ok]]
    return out


def spatial_covariates(lon, lat, data_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """The real covariates at (lon, lat): ``greenness`` (Landsat (b4-b3)/(b4+b3), 3x3 mean) and
    ``elevation`` (DEM, metres). NaN outside the rasters."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    lon = np.asarray(lon, dtype=float).reshape(-1)
    lat = np.asarray(lat, dtype=float).reshape(-1)
    red, nir = _sample_raster(_kit_file(data_dir, LANDSAT), lon, lat, [3, 4], window=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        greenness = np.where(nir + red > 0, (nir - red) / (nir + red), 0.0)
    greenness = np.where(np.isfinite(red), greenness, np.nan)
    (elev,) = _sample_raster(_kit_file(data_dir, DEM), lon, lat, [1])
    return pd.DataFrame({"greenness": greenness, "elevation": elev})


def kit_footprint(data_dir: str | os.PathLike | None = None, margin_m: float = 60.0):
    """Where both rasters have data (EPSG:4326), shrunk by ``margin_m`` so 3x3 windows stay inside."""
    import shapely

    from geoembed.io.rasters import raster_footprint

    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    fp = shapely.intersection(raster_footprint(_kit_file(data_dir, LANDSAT)),
                              raster_footprint(_kit_file(data_dir, DEM)))
    return shapely.buffer(fp, -margin_m / 111_000.0)


def true_log_relativity(greenness, elevation) -> np.ndarray:
    """The simulated spatial part of the log claim frequency (0 at the reference covariates)."""
    (g0, gs), (e0, es) = _STANDARDISE["greenness"], _STANDARDISE["elevation"]
    z_g = (np.asarray(greenness, float) - g0) / gs
    z_e = np.clip((np.asarray(elevation, float) - e0) / es, -2.5, 2.5)
    return TRUE_EFFECTS["greenness"] * z_g + TRUE_EFFECTS["elevation"] * z_e


def make_policies(n: int = 5000, seed: int = 0, data_dir: str | os.PathLike | None = None,
                  base_frequency: float = 0.12) -> pd.DataFrame:
    """A seeded policy table on the Olinda kit with claims simulated on real spatial covariates.

    Columns: ``policy_id``, ``lon``, ``lat``, ``tract``, ``neighbourhood``, ``exposure`` (policy-years in
    (0, 1]), ``building_age`` (years), ``claims`` (simulated count); and the hidden truth, which a model
    must not use: ``greenness``, ``elevation``, ``true_frequency`` (claims per policy-year).
    Identical for the same ``n``, ``seed`` and kit.
    """
    if base_frequency <= 0:
        raise InputError(f"base_frequency must be > 0, got {base_frequency}")
    pts = sample_points_in_tracts(n, seed=seed, data_dir=data_dir, within=kit_footprint(data_dir))
    cov = spatial_covariates(pts["lon"], pts["lat"], data_dir=data_dir)
    missing = ~np.isfinite(cov.to_numpy()).all(axis=1)
    if missing.any():
        raise InputError(f"{int(missing.sum())} policy location(s) fall outside the kit's rasters "
                         f"(first rows {np.flatnonzero(missing)[:5].tolist()})")
    rng = np.random.default_rng([seed, 1])
    full_year = rng.random(n) < 0.6
    exposure = np.where(full_year, 1.0, np.round(rng.uniform(0.05, 1.0, n), 3))
    building_age = rng.integers(0, 61, n)
    log_freq = (np.log(base_frequency) + true_log_relativity(cov["greenness"], cov["elevation"])
                + TRUE_EFFECTS["building_age_decade"] * (building_age - 30) / 10.0)
    freq = np.exp(log_freq)
    claims = rng.poisson(exposure * freq)
    return pd.DataFrame({
        "policy_id": np.arange(1, n + 1, dtype=np.int64),
        "lon": pts["lon"].to_numpy(), "lat": pts["lat"].to_numpy(),
        "tract": pts["tract"].to_numpy(), "neighbourhood": pts["neighbourhood"].to_numpy(),
        "exposure": exposure, "building_age": building_age.astype(np.int64),
        "claims": claims.astype(np.int64),
        "greenness": cov["greenness"].to_numpy(), "elevation": cov["elevation"].to_numpy(),
        "true_frequency": freq,
    })
