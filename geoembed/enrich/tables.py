"""Streaming table IO for enrichment: CSV, Parquet and GeoParquet in; CSV or Parquet out.

Sources yield ``pyarrow.RecordBatch`` chunks so memory stays flat whatever the file size; sinks write
chunk by chunk into a temporary file that is renamed onto the target only when complete
(:func:`geoembed.io.atomic.atomic_path`).

CSV: read with ``pyarrow.csv.open_csv`` (streaming). For CSV output every column is read as text, so
values pass through unchanged (quoting may differ). For Parquet output column types are inferred
(as pandas would); the coordinate columns are parsed to float64.
GeoParquet: the ``geo`` metadata is parsed on opening (:func:`geoembed.enrich.coordinates.geo_info`);
the geometry column itself is kept unchanged, and so is the ``geo`` metadata.
:func:`open_source` opens a file by its name's format (:func:`geoembed.io.enriched.table_format`);
:func:`list_parts` lists a folder's Parquet parts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from geoembed.enrich.coordinates import GeoInfo, geo_info
from geoembed.errors import InputError
from geoembed.io.enriched import CSV_SUFFIXES, PARQUET_SUFFIXES, table_format

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "CsvSink", "CsvSource", "CsvTypeRetry", "ParquetSink",
           "ParquetSource", "Sink", "Source", "list_parts", "open_source", "table_format"]


class Source:
    """A table read chunk by chunk."""

    path: Path
    format: str
    schema: pa.Schema
    num_rows: int | None
    geo: GeoInfo | None

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
        _check_file(self.path)
        try:
            # pre_buffer=False: with read-ahead caching, pyarrow keeps every row group it has read
            # until the file is closed, so memory would grow with the file instead of staying flat.
            self._pf = pq.ParquetFile(self.path, pre_buffer=False)
            self.schema = self._pf.schema_arrow
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"cannot read Parquet file {self.path}: {err}") from None
        self.num_rows = self._pf.metadata.num_rows
        self.geo = geo_info(self.schema, str(self.path))

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

    ``text_columns`` are read as strings (``"*"``: every column); others are type-inferred.
    """

    def __init__(self, path: str | os.PathLike, chunk_rows: int, text_columns: set[str] | str = "*") -> None:
        import pyarrow.csv as pcsv

        self.path = Path(path)
        self.format = "csv"
        self.num_rows = None
        self.geo = None
        self.chunk_rows = chunk_rows
        _check_file(self.path)
        self._block_size = self._estimate_block_size(chunk_rows)
        try:
            with pcsv.open_csv(self.path, read_options=pcsv.ReadOptions(block_size=1 << 16)) as r:
                names = r.schema.names
        except (pa.ArrowException, OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read CSV file {self.path}: {err}") from None
        self.names = names
        text = set(names) if text_columns == "*" else set(text_columns) & set(names)
        self._convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in text},
                                            strings_can_be_null=False)
        # Schema as it will be read (one peek at the first block).
        try:
            with self._open() as r:
                self.schema = r.schema
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"cannot read CSV file {self.path}: {err}") from None

    def _estimate_block_size(self, chunk_rows: int) -> int:
        import pyarrow as pa_

        try:
            with pa_.input_stream(str(self.path), compression="detect") as fh:
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
                    if m and "conversion error" in str(err):
                        raise CsvTypeRetry(self.names[int(m.group(1))]) from None
                    raise InputError(f"cannot read CSV file {self.path}: {err}") from None
                except (pa.ArrowException, OSError) as err:
                    raise InputError(f"cannot read CSV file {self.path}: {err}") from None
                if batch.num_rows:
                    yield batch


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"input file {path} does not exist")
    if not path.is_file():
        raise InputError(f"input {path} is not a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"input file {path} is not readable (permissions)")


class Sink:
    """Writes batches to a temporary path; the caller renames it into place."""

    def write(self, batch: pa.RecordBatch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self, extra_metadata: dict[bytes, bytes] | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: text and categorical ones. Dictionary-encoding unique floats
    (embeddings, coordinates) costs ~10x the write time for nothing."""
    def wants(t: pa.DataType) -> bool:
        return (pa.types.is_dictionary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                or pa.types.is_binary(t) or pa.types.is_large_binary(t))

    return [f.name for f in schema if wants(f.type)]


class ParquetSink(Sink):
    """Parquet writer: one row group per chunk; ``extra_metadata`` is added to the footer on close."""

    def __init__(self, tmp: Path, schema: pa.Schema, compression: str = "snappy") -> None:
        import pyarrow.parquet as pq

        self._w = pq.ParquetWriter(tmp, schema, compression=compression,
                                   use_dictionary=_dictionary_columns(schema))

    def write(self, batch: pa.RecordBatch) -> None:
        self._w.write_batch(batch, row_group_size=batch.num_rows)

    def close(self, extra_metadata: dict[bytes, bytes] | None = None) -> None:
        if extra_metadata:
            self._w.add_key_value_metadata(extra_metadata)
        self._w.close()

    def abort(self) -> None:
        try:
            self._w.close()
        except Exception:  # noqa: BLE001 - the temporary file is discarded anyway
            pass


class CsvSink(Sink):
    """CSV writer (compressed when the target name ends in .gz/.bz2/.zst)."""

    def __init__(self, tmp: Path, schema: pa.Schema, target: Path) -> None:
        import pyarrow.csv as pcsv

        name = target.name.lower()
        comp = next((c for s, c in ((".gz", "gzip"), (".bz2", "bz2"), (".zst", "zstd"), (".lz4", "lz4"))
                     if name.endswith(s)), None)
        bad = [f"{f.name} ({f.type})" for f in schema
               if pa.types.is_nested(f.type) or pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if bad:
            raise InputError(f"cannot write column(s) {bad[:5]} to CSV {target}; write Parquet instead "
                             f"(.parquet output)")
        self._fh = pa.OSFile(str(tmp), "wb")
        self._stream = pa.CompressedOutputStream(self._fh, comp) if comp else self._fh
        try:
            self._w = pcsv.CSVWriter(self._stream, schema)
        except pa.ArrowException as err:
            self.abort()
            raise InputError(f"cannot write CSV {target}: {err}; write Parquet instead") from None

    def write(self, batch: pa.RecordBatch) -> None:
        self._w.write_batch(batch)

    def close(self, extra_metadata: dict[bytes, bytes] | None = None) -> None:
        self._w.close()
        if self._stream is not self._fh:
            self._stream.close()
        self._fh.close()

    def abort(self) -> None:
        for obj in (getattr(self, "_w", None), self._stream, self._fh):
            if obj is None:
                continue
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - the temporary file is discarded anyway
                pass


def open_source(path: Path, chunk_rows: int, out_format: str, text_columns: set[str]) -> Source:
    """Open a CSV or Parquet input. A CSV read for CSV output is all text (values pass through unchanged);
    for Parquet output only ``text_columns`` are read as text, the others type-inferred."""
    fmt = table_format(path)
    if fmt == "parquet":
        return ParquetSource(path, chunk_rows)
    return CsvSource(path, chunk_rows, text_columns="*" if out_format == "csv" else text_columns)


def list_parts(folder: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a folder (sorted by name); InputError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist")
    parts = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES) and not p.name.startswith((".", "_")))
    if not parts:
        raise InputError(f"input folder {folder} holds no .parquet parts")
    return parts
