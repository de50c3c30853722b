"""Sampling locations in a region, coverage filtering, spatial blocks and spatial ordering.

All sampling is deterministic for a seed. Uniform sampling is uniform in area on the sphere
(latitude drawn through sin(lat)); weighted sampling follows a density raster (value x pixel area)
or a point layer (points drawn with replacement, jittered by a Gaussian of ``jitter_m`` metres).

A region raster is its valid-data area (:mod:`geoembed.views.raster.validarea`), not its rectangle:
points are drawn in its footprint and kept where a pixel holds data, so that with a raster framed by
no data every location lands on data. Coverage rasters filter the same way (a location must lie on
data of each): a location over no data would only give an empty chip. A raster without no data,
nodata value or mask is its whole footprint, as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from geoembed.config.build import LocationsConfig, RegionConfig, WeightConfig
from geoembed.errors import InputError
from geoembed.geo import (
    grid_blocks,
    local_crs,
    morton_order,
    split_at_antimeridian,
    to_local_metres,
    uniform_in_area,
    wrap_lon,
)
from geoembed.io.fingerprint import file_fingerprint
from geoembed.io.locations import make_locations
from geoembed.io.rasters import open_raster, raster_crs, raster_footprint
from geoembed.views.raster.validarea import RasterArea, RasterOptions, raster_area

log = logging.getLogger(__name__)

MAX_ROUNDS = 50
_DENSITY_MAX_PIXELS = 16_000_000


@dataclass
class SampleReport:
    """What sampling did: requested, drawn, excluded for lack of coverage, kept."""

    requested: int
    drawn: int = 0
    excluded_no_coverage: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"requested": self.requested, "drawn": self.drawn,
                "excluded_no_coverage": self.excluded_no_coverage, "kept": self.kept, "notes": self.notes}


def read_vector(path: str | os.PathLike) -> gpd.GeoDataFrame:
    """Read a vector file (any format GDAL reads, or GeoParquet) with clear errors."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"vector file {p} does not exist")
    try:
        gdf = gpd.read_parquet(p) if p.suffix.lower() in (".parquet", ".geoparquet") else gpd.read_file(p)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(f"cannot read vector file {p}: {err}") from None
    if len(gdf) == 0:
        raise InputError(f"vector file {p} has no features")
    if gdf.crs is None:
        raise InputError(f"vector file {p} has no CRS")
    return gdf.to_crs("EPSG:4326")


def region_options(region: RegionConfig, raster_options: dict[str, RasterOptions] | None = None) -> RasterOptions:
    """The CRS and nodata of a region raster: the region's own settings, else those the config gives
    the same file elsewhere (``raster_options``, e.g. a raster view's ``crs``/``nodata``)."""
    inherited = (raster_options or {}).get(region.raster or "", RasterOptions())
    return RasterOptions(region.crs if region.crs is not None else inherited.crs,
                         region.nodata if region.nodata is not None else inherited.nodata, inherited.origin)


def region_geometry(region: RegionConfig, raster_options: dict[str, RasterOptions] | None = None):
    """The region as a shapely geometry in EPSG:4326 (a raster's footprint: its rectangle; see
    :func:`~geoembed.views.raster.validarea.raster_area` for where it holds data)."""
    if region.bbox is not None:
        x0, y0, x1, y1 = region.bbox
        if x0 > x1:  # across the antimeridian: the parts on either side
            return split_at_antimeridian(shapely.box(x0, y0, x1 + 360.0, y1))
        return shapely.box(x0, y0, x1, y1)
    if region.polygon is not None:
        gdf = read_vector(region.polygon)
        geom = shapely.union_all(shapely.make_valid(gdf.geometry.values))
        if geom.is_empty or geom.area == 0:
            raise InputError(f"region polygon file {region.polygon} has no polygon area")
        return geom
    return raster_footprint(region.raster, crs=region_options(region, raster_options).crs)


def coverage_mask(lon: np.ndarray, lat: np.ndarray, footprints: list) -> np.ndarray:
    """True where a point lies inside every footprint (all views need data there): a shapely geometry,
    or a :class:`~geoembed.views.raster.validarea.RasterArea` (on a pixel with data)."""
    ok = np.ones(len(lon), dtype=bool)
    for fp in footprints:
        if isinstance(fp, RasterArea):
            sel = np.flatnonzero(ok)
            ok[sel] = fp.contains(np.asarray(lon)[sel], np.asarray(lat)[sel])
            continue
        shapely.prepare(fp)
        ok &= shapely.contains_xy(fp, lon, lat)
    return ok


# ---------------------------------------------------------------------------- samplers
def _density_sampler(path: str, geom, rng: np.random.Generator, crs: str | None = None):
    """Return a function n -> (lon, lat) drawing points proportionally to a density raster (``crs``:
    the config's override of its CRS)."""
    from rasterio.enums import Resampling

    with open_raster(path, crs=crs) as ds:
        scale = max(1.0, np.sqrt(ds.width * ds.height / _DENSITY_MAX_PIXELS))
        h, w = int(ds.height / scale), int(ds.width / scale)
        arr = ds.read(1, out_shape=(h, w), masked=True, resampling=Resampling.average).astype(np.float64)
        transform = ds.transform @ ds.transform.scale(ds.width / w, ds.height / h)
        crs = raster_crs(ds, crs, where="locations.weight.crs")
    vals = np.ma.filled(arr, 0.0)
    vals[~np.isfinite(vals)] = 0.0
    if (vals < 0).any():
        raise InputError(f"density raster {path} has negative values; weights must be >= 0")
    rows, cols = np.nonzero(vals > 0)
    if len(rows) == 0:
        raise InputError(f"density raster {path} has no positive values")
    weight = vals[rows, cols]
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    if crs.is_geographic:  # pixel area shrinks with cos(latitude)
        _, cy = transform @ (cols + 0.5, rows + 0.5)
        weight = weight * np.cos(np.radians(cy))
    p = weight / weight.sum()

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = rng.choice(len(p), size=n, p=p)
        x, y = transform @ (cols[k] + rng.uniform(0, 1, n), rows[k] + rng.uniform(0, 1, n))
        lon, lat = to_ll.transform(np.asarray(x), np.asarray(y))
        return wrap_lon(np.asarray(lon)), np.asarray(lat)

    return draw


def _points_sampler(weight: WeightConfig, rng: np.random.Generator):
    """Return a function n -> (lon, lat) drawing jittered copies of a point layer's points."""
    gdf = read_vector(weight.points)
    pts = gdf.geometry.representative_point()
    plon, plat = pts.x.to_numpy(), pts.y.to_numpy()
    crs = local_crs(plon, plat)
    px, py = to_local_metres(plon, plat, crs)
    back = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        k = rng.integers(0, len(px), n)
        x = px[k] + rng.normal(0, weight.jitter_m, n)
        y = py[k] + rng.normal(0, weight.jitter_m, n)
        lon, lat = back.transform(x, y)
        return wrap_lon(np.asarray(lon)), np.asarray(lat)

    return draw


def sample_points(cfg: LocationsConfig, footprints: list, seed: int,
                  raster_options: dict[str, RasterOptions] | None = None) -> tuple[np.ndarray, np.ndarray, SampleReport]:
    """Draw ``cfg.n`` points in the region (weighted if configured) that lie inside every footprint;
    a region raster's points lie on its pixels with data. ``raster_options``: the config's CRS and
    nodata overrides per raster file (a region or weight raster without its own take these)."""
    assert cfg.region is not None and cfg.n is not None
    rng = np.random.default_rng(seed)
    area = None
    if cfg.region.raster is not None:
        area = raster_area(cfg.region.raster, region_options(cfg.region, raster_options),
                           where="locations.region.raster")
        geom = area.footprint
    else:
        geom = region_geometry(cfg.region)
    accept = area.contains if area is not None and area.fraction < 1.0 else None
    report = SampleReport(requested=cfg.n)
    if cfg.weight is None:
        def draw(m: int):
            return uniform_in_area(geom, m, rng, accept, area.fraction if accept else 1.0,
                                   max_rounds=MAX_ROUNDS)
    elif cfg.weight.raster is not None:
        crs = cfg.weight.crs if cfg.weight.crs is not None else \
            (raster_options or {}).get(cfg.weight.raster, RasterOptions()).crs
        draw = _density_sampler(cfg.weight.raster, geom, rng, crs)
    else:
        draw = _points_sampler(cfg.weight, rng)
    shapely.prepare(geom)
    lons, lats = [], []
    kept = 0
    for _ in range(MAX_ROUNDS):
        need = cfg.n - kept
        lon, lat = draw(max(need, 256))
        in_region = shapely.contains_xy(geom, lon, lat)
        if accept is not None and cfg.weight is not None:  # (uniform draws are accepted already)
            sel = np.flatnonzero(in_region)
            in_region[sel] = accept(lon[sel], lat[sel])
        lon, lat = lon[in_region], lat[in_region]
        ok = coverage_mask(lon, lat, footprints)
        # Consider draws in order until ``need`` are kept, so the counts describe exactly those draws.
        upto = int(np.searchsorted(np.cumsum(ok), need)) + 1 if ok.sum() >= need else len(ok)
        ok = ok[:upto]
        report.drawn += upto
        report.excluded_no_coverage += int((~ok).sum())
        lons.append(lon[:upto][ok])
        lats.append(lat[:upto][ok])
        kept += int(ok.sum())
        if kept >= cfg.n:
            break
    report.kept = kept
    if kept == 0:
        raise InputError("no sampled location lies inside the region and the coverage of every raster view: "
                         "check that the region overlaps the rasters")
    if kept < cfg.n:
        report.notes.append(f"only {kept} of {cfg.n} locations could be placed inside the coverage")
    return np.concatenate(lons), np.concatenate(lats), report


def read_points_table(cfg: LocationsConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A user's own point table: (location_id, lon, lat). Errors name the file and the bad rows."""
    p = Path(cfg.points)
    if not p.exists():
        raise InputError(f"points file {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix in (".parquet", ".geoparquet"):
            import pyarrow.parquet as pq

            md = pq.read_schema(p).metadata or {}
            df = gpd.read_parquet(p) if b"geo" in md else pd.read_parquet(p)
        else:
            df = gpd.read_file(p)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot read points file {p}: {err}") from None
    if len(df) == 0:
        raise InputError(f"points file {p} has no rows")
    if cfg.lon_col in df.columns and cfg.lat_col in df.columns:
        lon = pd.to_numeric(df[cfg.lon_col], errors="coerce").to_numpy(float)
        lat = pd.to_numeric(df[cfg.lat_col], errors="coerce").to_numpy(float)
    elif isinstance(df, gpd.GeoDataFrame) and df.geometry is not None:
        if df.crs is None:
            raise InputError(f"points file {p} has geometry but no CRS")
        g = df.geometry.to_crs("EPSG:4326")
        if not (g.geom_type == "Point").all():
            g = g.representative_point()
        lon, lat = g.x.to_numpy(), g.y.to_numpy()
    else:
        raise InputError(f"points file {p} has neither columns {cfg.lon_col!r}/{cfg.lat_col!r} nor point geometry")
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90))
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"points file {p}: {int(bad.sum())} rows have missing or out-of-range "
                         f"{cfg.lon_col}/{cfg.lat_col}, e.g. rows {rows}")
    if cfg.id_col is not None:
        if cfg.id_col not in df.columns:
            raise InputError(f"points file {p} has no id column {cfg.id_col!r}")
        ids = df[cfg.id_col]
        if not pd.api.types.is_integer_dtype(ids):
            raise InputError(f"points file {p}: id column {cfg.id_col!r} must be integer, got {ids.dtype}")
        if ids.duplicated().any():
            raise InputError(f"points file {p}: id column {cfg.id_col!r} has duplicates, "
                             f"e.g. {ids[ids.duplicated()].head(3).tolist()}")
        ids = ids.to_numpy(np.int64)
    else:
        ids = np.arange(len(df), dtype=np.int64)
    return ids, lon, lat


# ---------------------------------------------------------------------------- blocks and order
def make_location_table(cfg: LocationsConfig, footprints: list, seed: int,
                        raster_options: dict[str, RasterOptions] | None = None) -> tuple[gpd.GeoDataFrame, dict]:
    """Sample (or read) locations, drop those without coverage (``footprints``: geometries or
    :class:`~geoembed.views.raster.validarea.RasterArea`), add blocks, order along a Z-curve.
    ``raster_options``: the config's CRS and nodata overrides per raster file (see :func:`sample_points`)."""
    if cfg.points is not None:
        ids, lon, lat = read_points_table(cfg)
        ok = coverage_mask(lon, lat, footprints)
        report = SampleReport(requested=len(ids), drawn=len(ids), excluded_no_coverage=int((~ok).sum()),
                              kept=int(ok.sum()))
        if not ok.any():
            raise InputError(f"none of the {len(ids)} points in {cfg.points} lies inside the raster coverage")
        ids, lon, lat = ids[ok], lon[ok], lat[ok]
        source = {"points": cfg.points, "fingerprint": file_fingerprint(cfg.points)}
    else:
        lon, lat, report = sample_points(cfg, footprints, seed, raster_options)
        ids = None
        source = {"region": cfg.region.model_dump(), "weight": cfg.weight.model_dump() if cfg.weight else None}
    order = morton_order(lon, lat)
    lon, lat = lon[order], lat[order]
    ids = np.arange(len(lon), dtype=np.int64) if ids is None else ids[order]
    blocks = grid_blocks(lon, lat, cfg.block_size_m)
    gdf = make_locations(ids, lon, lat, blocks)
    if report.excluded_no_coverage:
        log.info("excluded %d locations outside raster coverage", report.excluded_no_coverage)
    meta = {"sampling": report.as_dict(), "seed": seed, "source": source, "block_size_m": cfg.block_size_m,
            "n_blocks": int(len(np.unique(blocks)))}
    return gdf, meta
