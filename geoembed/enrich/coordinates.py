"""Coordinates of a table: which columns (or which geometry) hold them, and their values per chunk.

* :func:`resolve_coordinates` picks the source once per table: explicit ``lon_col``/``lat_col``, else the
  table's primary geometry (GeoParquet, shapefile, GeoPackage, ...), else columns ``lon``/``lat``; a
  missing column is an error that suggests likely candidates. ``crs`` (``--crs``) names the CRS of x/y
  columns in projected units, or fills (replaces) the CRS of a geometry.
* :func:`geometry_kind`: whether a geometry column holds points or polygons (declared types, else one
  look at every value's WKB header). Polygons are enriched by :mod:`geoembed.enrich.polygons`.
* :func:`batch_coordinates` gives one chunk's lon/lat in EPSG:4326 degrees with a hygiene reason code per
  row (:mod:`geoembed.enrich.hygiene`) and the raw values for error messages.

Point geometries (WKB or GeoArrow point encoding, any CRS) give lon/lat in EPSG:4326; little-endian 2D WKB
points are decoded with numpy directly (no geometry objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from geoembed.enrich import hygiene as hy
from geoembed.errors import InputError
from geoembed.io.geocolumn import GeoInfo, lonlat_transformer, parse_crs, with_crs, wkb_type_ids
from geoembed.io.geocolumn import parquet_geo as geo_info

__all__ = ["Coordinates", "GeoInfo", "batch_coordinates", "geo_info", "geometry_kind", "points_xy",
           "resolve_coordinates"]


def points_xy(col, geo: GeoInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (in the column's CRS) of a geometry column; third result: True where not a single point.

    Null or empty geometries give NaN (missing). Little-endian 2D WKB points are decoded with numpy
    directly (no geometry objects); anything else goes through shapely.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    if geo.encoding == "point":
        if not pa.types.is_struct(col.type):
            raise InputError(f"geometry column '{geo.column}' is declared as GeoArrow points but has type "
                             f"{col.type}")
        x = col.field(0).to_numpy(zero_copy_only=False).astype(np.float64)
        y = col.field(1).to_numpy(zero_copy_only=False).astype(np.float64)
        if col.null_count:
            null = col.is_null().to_numpy(zero_copy_only=False)
            x[null] = np.nan
            y[null] = np.nan
        return x, y, np.zeros(n, dtype=bool)
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise InputError(f"geometry column '{geo.column}' is declared as WKB but has type {col.type}")
    fast = _wkb_points_fast(col)
    if fast is not None:
        return fast
    import shapely

    geoms = shapely.from_wkb(col.to_numpy(zero_copy_only=False), on_invalid="ignore")
    type_id = shapely.get_type_id(geoms)
    is_point = type_id == 0
    empty = shapely.is_empty(geoms) | (type_id < 0)
    x = np.full(n, np.nan)
    y = np.full(n, np.nan)
    ok = is_point & ~empty
    x[ok] = shapely.get_x(geoms[ok])
    y[ok] = shapely.get_y(geoms[ok])
    return x, y, ~is_point & ~empty


def _wkb_points_fast(col) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Decode a binary array of 21-byte little-endian 2D WKB points without shapely (None if not that)."""
    if col.null_count or len(col) == 0 or col.offset:
        return None
    bufs = col.buffers()
    offset_dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=offset_dtype, count=len(col) + 1)
    if offsets[0] != 0 or not np.all(np.diff(offsets) == 21):
        return None
    raw = np.frombuffer(bufs[2], dtype=np.uint8, count=21 * len(col)).reshape(-1, 21)
    if not (np.all(raw[:, 0] == 1) and np.all(raw[:, 1:5].view("<u4")[:, 0] == 1)):
        return None
    xy = raw[:, 5:21].copy().view("<f8")
    return xy[:, 0].copy(), xy[:, 1].copy(), np.zeros(len(col), dtype=bool)


@dataclass
class Coordinates:
    """Where a table's coordinates come from: two named columns (in degrees, or in ``crs``), or a geometry."""

    lon_col: str | None = None
    lat_col: str | None = None
    geometry: GeoInfo | None = None
    crs: object | None = None  # pyproj CRS of the two columns when given (--crs)
    transformer: object | None = None  # the columns' CRS -> EPSG:4326 lon/lat
    kind: str = "point"  # "point", or "polygon" for a geometry of polygons

    def describe(self) -> dict:
        if self.geometry is not None:
            out = {"geometry": self.geometry.column, "crs": self.geometry.crs.to_string()}
            if self.kind != "point":
                out["geometry_kind"] = self.kind
            return out
        out = {"lon_col": self.lon_col, "lat_col": self.lat_col}
        if self.crs is not None:
            out["crs"] = self.crs.to_string()
        return out

    @property
    def labels(self) -> tuple[str, str]:
        if self.geometry is not None:
            return (f"{self.geometry.column}.x", f"{self.geometry.column}.y")
        return (self.lon_col, self.lat_col)

    @property
    def degrees(self) -> bool:
        """Whether the raw values are meant to be degrees (no projection involved)."""
        if self.geometry is not None:
            return self.geometry.transformer is None
        return self.transformer is None


_CANDIDATES = {"lon": ("lon", "lng", "long", "longitude", "x", "lon_deg"),
               "lat": ("lat", "latitude", "y", "lat_deg")}


def resolve_coordinates(schema: pa.Schema, origin: str, lon_col: str | None, lat_col: str | None,
                        geo: GeoInfo | None, crs=None) -> Coordinates:
    """Pick the coordinate source: explicit columns, else the table's geometry, else lon/lat.

    ``crs``: the CRS of the columns' values (any pyproj input), or of the geometry (filling an unknown
    one). A geometry without a known CRS is an error naming the file.
    """
    if lon_col is None and lat_col is None and geo is not None:
        if crs is not None:
            geo = with_crs(geo, crs, origin)
        geo.require_crs()
        return Coordinates(geometry=geo)
    lon_col = lon_col or "lon"
    lat_col = lat_col or "lat"
    if lon_col == lat_col:
        raise InputError(f"--lon-col and --lat-col are both '{lon_col}'")
    missing = [c for c in (lon_col, lat_col) if c not in schema.names]
    if missing:
        lower = {n.lower(): n for n in schema.names}
        hints = [lower[c] for key in ("lon", "lat") for c in _CANDIDATES[key] if c in lower]
        hint = f"; candidates: {hints} (pass --lon-col/--lat-col)" if hints else \
            "; pass --lon-col/--lat-col to name the longitude and latitude columns"
        raise InputError(f"{origin}: coordinate column(s) {missing} not found; the table has columns "
                         f"{schema.names[:30]}{' ...' if len(schema.names) > 30 else ''}{hint}")
    dup = [n for n in (lon_col, lat_col) if schema.names.count(n) > 1]
    if dup:
        raise InputError(f"{origin}: column name(s) {dup} appear more than once")
    if crs is None:
        return Coordinates(lon_col=lon_col, lat_col=lat_col)
    c = parse_crs(crs, origin, "--crs")
    return Coordinates(lon_col=lon_col, lat_col=lat_col, crs=c, transformer=lonlat_transformer(c))


def geometry_kind(geo: GeoInfo, path: str | Path, layer: str | None = None, chunk_rows: int = 262_144) -> str:
    """'polygon' when any geometry of the column is a (multi)polygon, else 'point'. The declared types
    decide when they can; otherwise every value's WKB header is read (the geometry column only), so the
    answer is the whole table's, whatever the chunk size."""
    declared = geo.declared_kind()
    if declared is not None:
        return declared
    if geo.encoding == "point":
        return "point"
    from geoembed.io.tables import open_table

    source = open_table(path, chunk_rows, layer=layer, columns=[geo.column])
    try:
        for batch in source.batches():
            ids = wkb_type_ids(batch.column(batch.schema.get_field_index(geo.column)))
            if np.isin(ids, (3, 6)).any():
                return "polygon"
    finally:
        source.close()
    return "point"


def _transform(transformer, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite x/y through ``transformer`` (NaN elsewhere; inf where the CRS cannot place a point)."""
    ok = np.isfinite(x) & np.isfinite(y)
    lon = np.full(len(x), np.nan)
    lat = np.full(len(x), np.nan)
    if ok.any():
        lon[ok], lat[ok] = transformer.transform(x[ok], y[ok])
    return lon, lat


def batch_coordinates(batch: pa.RecordBatch, coords: Coordinates
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, object]:
    """(lon, lat, codes, lon_raw, lat_raw) for one chunk, lon/lat in EPSG:4326 degrees."""
    if coords.geometry is not None:
        geo = coords.geometry
        x, y, not_point = points_xy(batch.column(batch.schema.get_field_index(geo.column)), geo)
        lon, lat = (x, y) if geo.transformer is None else _transform(geo.transformer, x, y)
        codes = hy.classify(lon, lat, hy._float_codes(lon), hy._float_codes(lat))
        # A projected point that does not transform (outside the CRS's area) comes back inf.
        codes[(codes == hy.INFINITE) & np.isfinite(x) & np.isfinite(y)] = hy.OUT_OF_RANGE
        codes[not_point] = hy.NOT_POINT
        return lon, lat, codes, x, y
    lon_raw = batch.column(batch.schema.get_field_index(coords.lon_col))
    lat_raw = batch.column(batch.schema.get_field_index(coords.lat_col))
    try:
        lon, lon_codes = hy.parse_numeric(lon_raw)
        lat, lat_codes = hy.parse_numeric(lat_raw)
    except InputError as err:
        raise InputError(f"{err} (columns '{coords.lon_col}', '{coords.lat_col}')") from None
    if coords.transformer is not None:
        x, y = lon, lat
        lon, lat = _transform(coords.transformer, x, y)
        codes = hy.classify(lon, lat, lon_codes, lat_codes)
        codes[(codes == hy.OK) & ~(np.isfinite(lon) & np.isfinite(lat))] = hy.OUT_OF_RANGE
        return lon, lat, codes, lon_raw, lat_raw
    codes = hy.classify(lon, lat, lon_codes, lat_codes)
    return lon, lat, codes, lon_raw, lat_raw
