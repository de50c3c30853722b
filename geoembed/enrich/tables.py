"""Streaming table IO for enrichment: any table in (:mod:`geoembed.io.tables`: CSV, Parquet, GeoParquet,
shapefile, GeoPackage, ...); CSV or Parquet out.

Sources yield ``pyarrow.RecordBatch`` chunks so memory stays flat whatever the file size; sinks write
chunk by chunk into a temporary file that is renamed onto the target only when complete
(:func:`geoembed.io.atomic.atomic_path`). CSV columns are read as text unless type inference is asked for
(values pass through unchanged); the coordinate columns are parsed by :mod:`geoembed.enrich.coordinates`.
:func:`open_source` opens a file by its name's format; :func:`list_parts` lists a folder's Parquet parts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from geoembed.errors import InputError
from geoembed.io.enriched import CSV_SUFFIXES, PARQUET_SUFFIXES, table_format
from geoembed.io.tables import CsvSource, CsvTypeRetry, ParquetSource, Source, VectorSource, open_table

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "CsvSink", "CsvSource", "CsvTypeRetry", "ParquetSink",
           "ParquetSource", "Sink", "Source", "VectorSource", "list_parts", "open_source", "table_format"]


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
    """Parquet writer: one row group per chunk; ``extra_metadata`` is added to the footer on close.

    ``text_input``: the text columns come from a CSV, whose columns are all text (ids, amounts, codes):
    those whose first chunk is mostly distinct values are not dictionary-encoded (hashing a million
    unique ids buys nothing); the choice is made on the first chunk, before the writer opens.
    """

    def __init__(self, tmp: Path, schema: pa.Schema, compression: str = "snappy", text_input: bool = False) -> None:
        self._tmp, self._schema, self._compression = tmp, schema, compression
        self._text_input = text_input
        self._w = None
        if not text_input:
            self._open(_dictionary_columns(schema))

    def _open(self, dictionary: list[str]) -> None:
        import pyarrow.parquet as pq

        self._w = pq.ParquetWriter(self._tmp, self._schema, compression=self._compression,
                                   use_dictionary=dictionary)

    def write(self, batch: pa.RecordBatch) -> None:
        if self._w is None:
            import pyarrow.compute as pc

            keep = [c for c in _dictionary_columns(self._schema)
                    if pc.count_distinct(batch.column(c)).as_py() <= 0.5 * max(1, batch.num_rows)]
            self._open(keep)
        self._w.write_batch(batch, row_group_size=batch.num_rows)

    def close(self, extra_metadata: dict[bytes, bytes] | None = None) -> None:
        if self._w is None:
            self._open(_dictionary_columns(self._schema))
        if extra_metadata:
            self._w.add_key_value_metadata(extra_metadata)
        self._w.close()

    def abort(self) -> None:
        try:
            if self._w is not None:
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


def open_source(path: Path, chunk_rows: int, *, layer: str | None = None, infer_types: bool = False,
                text_columns: set[str] | frozenset[str] = frozenset()) -> Source:
    """Open an input table (:func:`geoembed.io.tables.open_table`): CSV columns as text, or, with
    ``infer_types``, type-inferred except ``text_columns``."""
    return open_table(path, chunk_rows, layer=layer, infer_types=infer_types, text_columns=text_columns)


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
