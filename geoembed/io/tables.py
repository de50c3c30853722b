"""Reading tables, alike for every stage: CSV, Parquet, GeoParquet, shapefile, GeoPackage (and GeoJSON,
FlatGeobuf), with the same errors. ``enrich`` streams them (:func:`open_table`), ``evaluate`` reads them
whole (:func:`read_frame`), ``inspect`` describes them (:func:`describe_table`).

* CSV (``.csv``, ``.txt``, compressed ``.gz/.bz2/.zst/.lz4``): every column is text, exactly as written
  (a code ``0007`` stays ``0007``, ``NA`` stays ``NA``, an empty field stays empty) unless
  ``infer_types`` asks for pyarrow's type inference. The columns a stage needs as numbers are parsed by
  that stage, with errors naming the row (:func:`numeric_column`; enrich: its coordinate hygiene).
* Parquet / GeoParquet: types as stored; the ``geo`` metadata is parsed on opening
  (:func:`geoembed.io.geocolumn.parquet_geo`).
* Vector files through GDAL (pyogrio, streamed as Arrow): a GeoPackage with several layers needs
  ``layer``; the geometry becomes a WKB column named ``geometry``.

Sources yield ``pyarrow.RecordBatch`` chunks, so memory stays flat whatever the file size.
:func:`projected_message` is the error for degrees that look like projected metres.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from geoembed.errors import InputError
from geoembed.io.enriched import CSV_SUFFIXES, PARQUET_SUFFIXES
from geoembed.io.geocolumn import GeoInfo, parquet_geo, vector_geo

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "VECTOR_SUFFIXES", "CsvSource", "CsvTypeRetry",
           "ParquetSource", "Source", "VectorSource", "check_input_file", "describe_table", "input_format",
           "numeric_column", "open_table", "projected_like", "projected_message", "read_frame"]

VECTOR_SUFFIXES = (".gpkg", ".shp", ".geojson", ".fgb")
FORMATS_TEXT = ("CSV (.csv, .csv.gz, ...), Parquet/GeoParquet (.parquet), shapefile (.shp), GeoPackage "
                "(.gpkg), GeoJSON (.geojson) or FlatGeobuf (.fgb)")


def input_format(path: str | os.PathLike) -> str:
    """'csv', 'parquet' or 'vector' from a file name; InputError naming the file for anything else."""
    name = Path(path).name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(VECTOR_SUFFIXES):
        return "vector"
    raise InputError(f"{path}: unknown table format; use {FORMATS_TEXT}")


def check_input_file(path: Path) -> None:
    """InputError unless ``path`` is an existing, readable file."""
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if not path.is_file():
        raise InputError(f"input {path} is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file {path} is not readable (permissions)")


class Source:
    """A table read chunk by chunk."""

    path: Path
    format: str
    schema: pa.Schema
    num_rows: int | None
    geo: GeoInfo | None
    layer: str | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release file handles (sources are also closed when garbage-collected)."""


class ParquetSource(Source):
    """A Parquet or GeoParquet file, read with ``ParquetFile.iter_batches``."""

    def __init__(self, path: str | os.PathLike, chunk_rows: int, columns: list[str] | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.format = "parquet"
        self.chunk_rows = chunk_rows
        self.columns = columns
        check_input_file(self.path)
        try:
            # pre_buffer=False: with read-ahead caching, pyarrow keeps every row group it has read
            # until the file is closed, so memory would grow with the file instead of staying flat.
            self._pf = pq.ParquetFile(self.path, pre_buffer=False)
            self.schema = self._pf.schema_arrow
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"cannot read Parquet file {self.path}: {err}") from None
        self.num_rows = self._pf.metadata.num_rows
        self.geo = parquet_geo(self.schema, str(self.path))

    def close(self) -> None:
        close = getattr(self._pf, "close", None)
        if close is not None:
            close()

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._pf.iter_batches(batch_size=self.chunk_rows, columns=self.columns,
                                             use_threads=True)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"cannot read Parquet file {self.path}: {err}") from None


class CsvTypeRetry(Exception):
    """Type inference from the first block failed later in the file: retry with this column as text."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


class CsvSource(Source):
    """A CSV file (optionally compressed), streamed with ``pyarrow.csv.open_csv``.

    Every column is read as text, values exactly as written; with ``infer_types``, the columns not in
    ``text_columns`` get pyarrow's inferred types (:class:`CsvTypeRetry` when the first block misled it).
    """

    def __init__(self, path: str | os.PathLike, chunk_rows: int, *, infer_types: bool = False,
                 text_columns: set[str] | frozenset[str] = frozenset()) -> None:
        import pyarrow.csv as pcsv

        self.path = Path(path)
        self.format = "csv"
        self.num_rows = None
        self.geo = None
        self.chunk_rows = chunk_rows
        check_input_file(self.path)
        self._block_size = self._estimate_block_size(chunk_rows)
        try:
            with pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=1 << 16)) as r:
                names = r.schema.names
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read CSV file {self.path}: {err}") from None
        self.names = names
        text = set(text_columns) & set(names) if infer_types else set(names)
        if infer_types:
            self._convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in text},
                                                strings_can_be_null=False)
        else:  # text as written: no value is read as null ("NA" and "" stay text)
            self._convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in text},
                                                strings_can_be_null=False, null_values=[])
        try:  # the schema as it will be read (one peek at the first block)
            with self._open() as r:
                self.schema = r.schema
        except (pa.ArrowException, OSError) as err:
            raise self._error(err) from None

    def _error(self, err: Exception) -> InputError:
        """The InputError for a pyarrow CSV failure (text that is not UTF-8 named by its column)."""
        m = re.search(r"In CSV column #(\d+)", str(err))
        if m and "UTF8" in str(err):
            return InputError(f"cannot read CSV file {self.path}: column '{self.names[int(m.group(1))]}' holds "
                              f"text that is not UTF-8; save the file as UTF-8")
        return InputError(f"cannot read CSV file {self.path}: {err}")

    def _estimate_block_size(self, chunk_rows: int) -> int:
        try:
            with pa.input_stream(str(self.path), compression="detect") as fh:
                head = fh.read(1 << 20)
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read CSV file {self.path}: {err}") from None
        lines = max(1, head.count(b"\n"))
        per_row = max(8, len(head) // lines)
        return int(min(max(per_row * chunk_rows, 1 << 16), 1 << 30))

    def _open(self):
        import pyarrow.csv as pcsv

        return pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=self._block_size),
                             convert_options=self._convert)

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            reader = self._open()
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"cannot read CSV file {self.path}: {err}") from None
        with reader:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as err:
                    m = re.search(r"In CSV column #(\d+)", str(err))
                    if m and "conversion error" in str(err) and "UTF8" not in str(err):
                        raise CsvTypeRetry(self.names[int(m.group(1))]) from None
                    raise self._error(err) from None
                except (pa.ArrowException, OSError) as err:
                    raise InputError(f"cannot read CSV file {self.path}: {err}") from None
                if batch.num_rows:
                    yield batch


class VectorSource(Source):
    """A vector layer read through GDAL (pyogrio's Arrow stream); the geometry is a WKB ``geometry`` column."""

    def __init__(self, path: str | os.PathLike, chunk_rows: int, layer: str | None = None) -> None:
        import pyogrio

        self.path = Path(path)
        self.format = "vector"
        self.chunk_rows = chunk_rows
        check_input_file(self.path)
        try:
            layers = [str(name) for name, _ in pyogrio.list_layers(self.path)]
        except Exception as err:  # noqa: BLE001 - GDAL raises several types
            raise InputError(f"cannot read {self.path}: {err}") from None
        if layer is None:
            if len(layers) > 1:
                raise InputError(f"{self.path} holds {len(layers)} layers {layers[:20]}; pass --layer NAME "
                                 f"(layer= in Python) to choose one")
            layer = layers[0] if layers else None
        elif layer not in layers:
            raise InputError(f"{self.path} has no layer {layer!r}; its layers are {layers[:20]}")
        self.layer = layer
        try:
            info = pyogrio.read_info(self.path, layer=layer)
            with pyogrio.raw.open_arrow(self.path, layer=layer, batch_size=chunk_rows, use_pyarrow=True) as (_, r):
                schema = r.schema
        except Exception as err:  # noqa: BLE001
            raise InputError(f"cannot read {self.path}: {err}") from None
        self.num_rows = int(info["features"]) if int(info.get("features", -1)) >= 0 else None
        self._geom_index = next((i for i, f in enumerate(schema)
                                 if (f.metadata or {}).get(b"ARROW:extension:name") == b"geoarrow.wkb"), None)
        self.geo = None
        if self._geom_index is not None:
            name = "geometry" if "geometry" not in schema.names else schema.names[self._geom_index]
            schema = schema.set(self._geom_index, pa.field(name, pa.binary()))
            gtype = info.get("geometry_type")
            self.geo = vector_geo(name, info.get("crs"), None if gtype in (None, "Unknown") else gtype,
                                  str(self.path))
        self.schema = schema

    def batches(self) -> Iterator[pa.RecordBatch]:
        import pyogrio.raw

        try:
            with pyogrio.raw.open_arrow(self.path, layer=self.layer, batch_size=self.chunk_rows,
                                        use_pyarrow=True) as (_, reader):
                for batch in reader:
                    if batch.num_rows:
                        cols = list(batch.columns)
                        if self._geom_index is not None:
                            cols[self._geom_index] = cols[self._geom_index].cast(pa.binary())
                        yield pa.RecordBatch.from_arrays(cols, schema=self.schema)
        except Exception as err:  # noqa: BLE001 - GDAL raises several types mid-stream
            raise InputError(f"cannot read {self.path}: {err}") from None


def open_table(path: str | os.PathLike, chunk_rows: int = 65_536, *, layer: str | None = None,
               infer_types: bool = False, text_columns: set[str] | frozenset[str] = frozenset(),
               columns: list[str] | None = None) -> Source:
    """Open a table of any supported format for streaming (see module docs). ``layer``: the layer of a
    multi-layer vector file; ``columns``: read only these (Parquet; other formats read every column)."""
    path = Path(path)
    fmt = input_format(path)
    if layer is not None and fmt != "vector":
        raise InputError(f"--layer applies to vector files (GeoPackage, ...), not to {path}")
    if fmt == "parquet":
        return ParquetSource(path, chunk_rows, columns)
    if fmt == "vector":
        return VectorSource(path, chunk_rows, layer)
    return CsvSource(path, chunk_rows, infer_types=infer_types, text_columns=text_columns)


def read_frame(path: str | os.PathLike, *, layer: str | None = None, infer_types: bool = False):
    """The whole table as a pandas DataFrame, or a GeoDataFrame (geometry decoded, with its CRS; None
    when unknown) when it has a geometry column. CSV columns are text unless ``infer_types``."""
    forced: set[str] = set()
    while True:
        source = open_table(path, layer=layer, infer_types=infer_types, text_columns=forced)
        try:
            table = pa.Table.from_batches(list(source.batches()), schema=source.schema)
            break
        except CsvTypeRetry as retry:  # inference misled by the first block: that column as text
            forced.add(retry.column)
        finally:
            source.close()
    geo = source.geo
    if geo is None:
        return table.to_pandas()
    import geopandas as gpd
    import shapely

    col = table.column(geo.column)
    if geo.encoding == "point":
        xy = col.combine_chunks()
        geoms = shapely.points(xy.field(0).to_numpy(zero_copy_only=False), xy.field(1).to_numpy(zero_copy_only=False))
        geoms[col.is_null().to_numpy(zero_copy_only=False)] = None
    else:
        wkb = col.to_numpy(zero_copy_only=False)
        geoms = shapely.from_wkb(wkb, on_invalid="ignore")
        bad = np.flatnonzero(shapely.is_missing(geoms) & (col.is_valid().to_numpy(zero_copy_only=False)))
        if len(bad):
            raise InputError(f"{path}: geometry column '{geo.column}' holds unreadable geometries in rows "
                             f"{bad[:10].tolist()} (0-based)")
    df = table.drop_columns([geo.column]).to_pandas()
    return gpd.GeoDataFrame(df, geometry=gpd.GeoSeries(geoms, index=df.index, crs=geo.crs), crs=geo.crs)


def describe_table(path: str | os.PathLike, layer: str | None = None, count_limit: int = 1 << 30) -> dict:
    """What a table holds: format, rows (a CSV over ``count_limit`` bytes is not counted), column types
    as a stage reads them, and its geometry (column, CRS, declared types)."""
    path = Path(path)
    source = open_table(path, layer=layer)
    try:
        rows = source.num_rows
        if rows is None and path.stat().st_size <= count_limit:
            rows = sum(b.num_rows for b in source.batches())
        info: dict = {"artefact": "table", "path": str(path), "format": source.format, "rows": rows,
                      "columns": {f.name: str(f.type) for f in source.schema}}
        if source.format == "csv":
            info["note"] = "CSV columns are read as text; a stage parses the columns it needs as numbers"
        if source.format == "vector":
            import pyogrio

            info["layer"] = source.layer
            info["layers"] = [str(n) for n, _ in pyogrio.list_layers(path)]
        if source.geo is not None:
            g = source.geo
            info["geometry"] = {"column": g.column, "encoding": g.encoding,
                                "crs": g.crs.to_string() if g.crs is not None else None,
                                "types": list(g.geometry_types)}
            if g.crs is None:
                info["geometry"]["problem"] = f"no CRS ({g.crs_missing})"
        return info
    finally:
        source.close()


# ------------------------------------------------------------------------------- values of named columns

_NULL_TEXT = {"", "na", "n/a", "nan", "null", "none", "-nan", "#n/a", "-"}


def numeric_column(values, column: str, what: str, origin: str) -> np.ndarray:
    """A column parsed to float64; InputError naming the first bad rows (0-based), their values and why
    (missing, not a number, infinite)."""
    import pandas as pd

    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_datetime64_any_dtype(s.dtype):
        raise InputError(f"{origin}: {what} column {column!r} has type {s.dtype}, not numbers")
    if pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        why = np.where(np.isnan(v), "missing", np.where(np.isinf(v), "infinite", ""))
    else:
        obj = s.to_numpy(dtype=object, na_value=None)
        null = pd.isna(obj)
        text = pd.Series(obj, dtype=object).where(null, pd.Series(obj, dtype=object).astype(str)).str.strip()
        null = null | text.str.lower().isin(_NULL_TEXT).to_numpy()
        v = pd.to_numeric(text.where(~null), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        why = np.where(null, "missing", np.where(np.isnan(v), "not a number", np.where(np.isinf(v), "infinite", "")))
    bad = np.flatnonzero(why != "")
    if len(bad):
        raw = s.to_numpy(dtype=object)
        rows = ", ".join(str(r) for r in bad[:5]) + (f" and {len(bad) - 5:,} more" if len(bad) > 5 else "")
        shown = "; ".join(f"row {r}: {raw[r]!r} ({why[r]})" for r in bad[:5])
        raise InputError(f"{origin}: {what} column {column!r} has missing or non-numeric values in rows "
                         f"{rows} (0-based): {shown}")
    return v


# ----------------------------------------------------------------------------- projected, not degrees

def projected_like(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where a (lon, lat) pair holds a magnitude no angle has (beyond 360): projected metres or feet."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(x) & np.isfinite(y) & ((np.abs(x) > 360.0) | (np.abs(y) > 360.0))


def projected_message(origin: str, x_label: str, y_label: str, n_like: int, n_finite: int, example,
                      how: str) -> str:
    """The error for a table whose degrees look like projected coordinates; ``how`` says how to pass a CRS."""
    ex = f" (e.g. {x_label}={example[0]!r}, {y_label}={example[1]!r})" if example is not None else ""
    return (f"{origin}: {n_like:,} of {n_finite:,} coordinates{ex} are far beyond degrees (|lon| <= 180, "
            f"|lat| <= 90): they look like projected coordinates (metres or feet, e.g. UTM or web Mercator), "
            f"not longitude/latitude. {how}")
