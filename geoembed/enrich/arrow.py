"""Arrow assembly: the enriched table's schema and, per chunk, its embedding and QA columns.

:func:`output_schema` is the input schema (coordinate columns parsed to float64 when a CSV becomes
Parquet) plus the embedding and QA columns, carrying the run's metadata (:mod:`geoembed.io.enriched`).
:func:`embedding_arrays` and :func:`qa_arrays` build a chunk's new columns straight from numpy buffers
(null where a row is invalid), without a pass through Python objects.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from geoembed.enrich import hygiene as hy
from geoembed.enrich.coordinates import Coordinates
from geoembed.errors import InputError
from geoembed.io.enriched import (
    INVALID_COL,
    OOS_COL,
    POINTS_COL,
    POLYGON_COLUMNS,
    QA_COLUMNS,
    SHARE_COL,
    SUPPORT_COL,
    schema_metadata,
)
from geoembed.io.geocolumn import geoparquet_metadata

__all__ = ["check_no_clash", "embedding_arrays", "output_schema", "polygon_arrays", "qa_arrays"]


def _validity(valid: np.ndarray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _float_array(values: np.ndarray, validity: pa.Buffer | None, null_count: int) -> pa.Array:
    values = np.ascontiguousarray(values)
    typ = pa.float32() if values.dtype == np.float32 else pa.float64()
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(values)],
                                 null_count=null_count if validity is not None else 0)


def qa_arrays(codes: np.ndarray, support_km: np.ndarray, threshold_km: float) -> list[pa.Array]:
    """The three QA columns for one chunk."""
    valid = codes == hy.OK
    validity = _validity(valid)
    nulls = int((~valid).sum())
    if nulls:
        invalid = pa.array(hy.reason_names(codes), type=pa.string())
    else:
        invalid = pa.nulls(len(codes), type=pa.string())
    support = _float_array(np.where(valid, support_km, 0.0).astype(np.float32), validity, nulls)
    oos = pa.array(support_km > threshold_km, mask=~valid if nulls else None, type=pa.bool_())
    return [invalid, support, oos]


def polygon_arrays(n_points: np.ndarray, share: np.ndarray, valid: np.ndarray) -> list[pa.Array]:
    """The polygon QA columns for one chunk: points used (int32) and the share out of support (float32)."""
    validity = _validity(valid)
    nulls = int((~valid).sum())
    pts = pa.Array.from_buffers(pa.int32(), len(valid), [validity, pa.py_buffer(np.ascontiguousarray(
        np.where(valid, n_points, 0).astype(np.int32)))], null_count=nulls if validity is not None else 0)
    return [pts, _float_array(np.where(valid, share, 0.0).astype(np.float32), validity, nulls)]


def embedding_arrays(emb: np.ndarray, valid: np.ndarray) -> list[pa.Array]:
    """One float32 Arrow array per embedding column (null on invalid rows)."""
    cols = np.ascontiguousarray(emb.T, dtype=np.float32)
    validity = _validity(valid)
    nulls = int((~valid).sum())
    if nulls:
        cols = np.where(valid[None, :], cols, np.float32(0.0))
    return [_float_array(c, validity, nulls) for c in cols]


def output_schema(in_schema: pa.Schema, coords: Coordinates, names: list[str], cast_coords: bool,
                  meta: dict, *, polygons: bool = False, geometry_as_wkt: bool = False,
                  rewrite_geo: bool = False) -> pa.Schema:
    """Input fields (coordinate columns parsed to float64 when ``cast_coords``; a WKB geometry as WKT text
    when ``geometry_as_wkt``, for CSV) + embeddings + QA (+ the polygon columns). ``rewrite_geo``: record
    the geometry's CRS as GeoParquet metadata (a vector input, or a CRS given by the user)."""
    geo = coords.geometry
    fields = []
    for f in in_schema:
        if cast_coords and geo is None and f.name in (coords.lon_col, coords.lat_col):
            f = pa.field(f.name, pa.float64())
        elif geometry_as_wkt and geo is not None and geo.encoding == "WKB" and f.name == geo.column:
            f = pa.field(f.name, pa.string())
        fields.append(f)
    fields += [pa.field(n, pa.float32()) for n in names]
    fields += [pa.field(INVALID_COL, pa.string()), pa.field(SUPPORT_COL, pa.float32()),
               pa.field(OOS_COL, pa.bool_())]
    if polygons:
        fields += [pa.field(POINTS_COL, pa.int32()), pa.field(SHARE_COL, pa.float32())]
    md = dict(in_schema.metadata or {})
    if rewrite_geo and geo is not None and geo.encoding == "WKB":
        md.update(geoparquet_metadata(geo.column, geo.crs, geo.geometry_types))
    md.update(schema_metadata(meta))
    return pa.schema(fields, metadata=md)


def check_no_clash(schema: pa.Schema, names: list[str], origin: str, polygons: bool = False) -> None:
    """InputError when the input already has an output column (a table enriched twice)."""
    clash = [n for n in [*names, *QA_COLUMNS, *(POLYGON_COLUMNS if polygons else ())] if n in schema.names]
    if clash:
        raise InputError(f"{origin}: the table already has column(s) {clash[:5]}"
                         f"{' ...' if len(clash) > 5 else ''}; was it enriched already? Drop or rename them.")
