"""The geometry column of a table: which column, its encoding and CRS, and cheap facts about its values.

:class:`GeoInfo` describes the primary geometry of a GeoParquet file (its ``geo`` metadata,
:func:`parquet_geo`) or of a vector layer (shapefile, GeoPackage, ...; :func:`vector_geo`). Its CRS may be
unknown (a shapefile without ``.prj``, GeoParquet ``crs: null``): :meth:`GeoInfo.require_crs` is the
error naming the file, raised only when the geometry is used; a CRS given by the user
(:func:`with_crs`, ``--crs``) fills or replaces it. :func:`wkb_type_ids` reads the geometry type of
every WKB value from its header (numpy only, no geometry objects); :func:`geoparquet_metadata` is the
``geo`` entry an output needs to be GeoParquet.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from geoembed.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["GeoInfo", "POINT", "POLYGONAL", "geoparquet_metadata", "lonlat_transformer", "parquet_geo",
           "parse_crs", "vector_geo", "with_crs", "wkb_type_ids"]

#: WKB geometry type ids (ISO, without the Z/M thousands): point, and polygon / multipolygon.
POINT = 1
POLYGONAL = (3, 6)
_TYPE_NAMES = {"point": 1, "linestring": 2, "polygon": 3, "multipoint": 4, "multilinestring": 5,
               "multipolygon": 6, "geometrycollection": 7}


def parse_crs(spec, origin: str, what: str = "CRS"):
    """A pyproj CRS from anything pyproj reads (``EPSG:31985``, WKT, PROJJSON dict); InputError otherwise."""
    from pyproj import CRS

    try:
        return CRS.from_json_dict(spec) if isinstance(spec, dict) else CRS.from_user_input(spec)
    except Exception as err:  # noqa: BLE001 - pyproj raises several types
        raise InputError(f"{origin}: cannot understand the {what} {str(spec)[:80]!r}: {err}") from None


def lonlat_transformer(crs):
    """Transformer from ``crs`` to EPSG:4326 lon/lat (x = lon), or None when ``crs`` is lon/lat already."""
    from pyproj import CRS, Transformer

    if crs.equals(CRS.from_user_input("OGC:CRS84"), ignore_axis_order=True) or \
            crs.equals(CRS.from_epsg(4326), ignore_axis_order=True):
        return None
    return Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)


@dataclass
class GeoInfo:
    """The primary geometry column of a table."""

    column: str
    encoding: str  # "WKB" or "point" (GeoArrow struct of x, y)
    crs: object | None  # pyproj.CRS, or None when the file does not say
    transformer: object | None = None  # to EPSG:4326 lon/lat; None when already lon/lat (or no CRS)
    geometry_types: tuple[str, ...] = ()  # declared types ("Point", "Polygon", ...); empty: not declared
    origin: str = ""
    crs_missing: str = ""  # why the CRS is unknown, for the error
    given_crs: bool = field(default=False)  # the CRS comes from the user (--crs), not the file

    def describe(self) -> str:
        crs = self.crs.to_string() if self.crs is not None else "unknown CRS"
        return f"geometry column '{self.column}' ({self.encoding}, {crs})"

    def require_crs(self) -> None:
        """InputError naming the file when the geometry's CRS is unknown."""
        if self.crs is None:
            raise InputError(f"{self.origin}: geometry column '{self.column}' has no CRS ({self.crs_missing}); "
                             f"pass --crs EPSG:XXXX (crs= in Python) naming the CRS of its coordinates")

    def declared_kind(self) -> str | None:
        """'point' or 'polygon' when the declared types say so for every value, else None (look at values)."""
        names = {t.lower().replace(" z", "").replace(" m", "").strip() for t in self.geometry_types}
        if not names or "unknown" in names or "geometry" in names:
            return None
        if names <= {"point"}:
            return "point"
        if names <= {"polygon", "multipolygon"}:
            return "polygon"
        return None


def parquet_geo(schema: pa.Schema, origin: str) -> GeoInfo | None:
    """The GeoParquet ``geo`` metadata of a Parquet schema; None for a plain table."""
    md = schema.metadata or {}
    if b"geo" not in md:
        return None
    try:
        geo = json.loads(md[b"geo"])
        col = geo["primary_column"]
        spec = geo["columns"][col]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{origin}: malformed GeoParquet 'geo' metadata ({err})") from None
    if col not in schema.names:
        raise InputError(f"{origin}: GeoParquet primary column '{col}' is not in the table")
    encoding = str(spec.get("encoding", "WKB"))
    if encoding.upper() == "WKB":
        encoding = "WKB"
    elif encoding.lower() == "point":
        encoding = "point"
    else:
        raise InputError(f"{origin}: geometry column '{col}' has encoding {encoding!r}; geoembed reads WKB "
                         f"or GeoArrow 'point' geometries")
    types = tuple(str(t) for t in spec.get("geometry_types") or ())
    if "crs" in spec and spec["crs"] is None:  # GeoParquet: null means undefined (absent means CRS84)
        return GeoInfo(col, encoding, None, None, types, origin, "its GeoParquet metadata says crs: null")
    crs = parse_crs(spec.get("crs", "OGC:CRS84"), origin, f"CRS of geometry column '{col}'")
    return GeoInfo(col, encoding, crs, lonlat_transformer(crs), types, origin)


def vector_geo(column: str, crs_text: str | None, geometry_type: str | None, origin: str) -> GeoInfo:
    """The geometry of a vector layer read through GDAL (pyogrio): WKB, the layer's CRS and type."""
    types = () if not geometry_type else (str(geometry_type),)
    if not crs_text:
        why = "no .prj file beside it" if origin.lower().endswith(".shp") else "the layer declares none"
        return GeoInfo(column, "WKB", None, None, types, origin, why)
    crs = parse_crs(crs_text, origin, "layer CRS")
    return GeoInfo(column, "WKB", crs, lonlat_transformer(crs), types, origin)


def with_crs(geo: GeoInfo, spec, origin: str) -> GeoInfo:
    """``geo`` with the user's CRS (``--crs``): fills an unknown one, replaces (with a warning) another."""
    crs = parse_crs(spec, origin, "--crs")
    if geo.crs is not None and not geo.crs.equals(crs):
        log.warning("%s: --crs %s replaces the CRS the file declares (%s)", origin, crs.to_string(),
                    geo.crs.to_string())
    return replace(geo, crs=crs, transformer=lonlat_transformer(crs), crs_missing="", given_crs=True)


def wkb_type_ids(col) -> np.ndarray:
    """The WKB geometry type id (1 point ... 7 collection; ISO Z/M and EWKB flags removed) of every value
    of a binary column, read from the 5-byte headers; -1 where null or shorter than a header."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    n = len(col)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise InputError(f"a WKB geometry column has type {col.type}, not binary")
    bufs = col.buffers()
    off_dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_dtype, count=n + 1, offset=col.offset * np.dtype(off_dtype).itemsize)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    start = offsets[:-1].astype(np.int64)
    ok = (offsets[1:] - offsets[:-1]) >= 5
    if col.null_count:
        ok &= col.is_valid().to_numpy(zero_copy_only=False)
    s = start[ok]
    b = [data[s + k].astype(np.uint64) for k in range(1, 5)]
    little = data[s] == 1
    raw = np.where(little, b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24),
                   b[3] | (b[2] << 8) | (b[1] << 16) | (b[0] << 24))
    out[ok] = ((raw & np.uint64(0x0FFFFFFF)) % np.uint64(1000)).astype(np.int64)
    return out


def type_id(name: str) -> int:
    """The WKB id of a geometry type name (``Polygon`` -> 3)."""
    return _TYPE_NAMES.get(name.lower().split()[0], 0)


def geoparquet_metadata(column: str, crs, geometry_types: tuple[str, ...] = ()) -> dict[bytes, bytes]:
    """The schema entry that makes a table with WKB column ``column`` GeoParquet (1.1)."""
    valid = {"Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon",
             "GeometryCollection"}
    types = [t for t in geometry_types if t in valid or (t.endswith(" Z") and t[:-2] in valid)]
    spec: dict = {"encoding": "WKB", "geometry_types": types if len(types) == len(geometry_types) else []}
    spec["crs"] = crs.to_json_dict() if crs is not None else None
    return {b"geo": json.dumps({"version": "1.1.0", "primary_column": column, "columns": {column: spec}}).encode()}
