"""The file driver: stream one CSV/Parquet/GeoParquet file through an :class:`Enricher` into an
enriched table (:mod:`geoembed.io.enriched`), chunk by chunk, in flat memory.

Per chunk: coordinates and hygiene codes (:mod:`geoembed.enrich.coordinates`), invalid-row and swapped
columns checks, the encoder on worker threads while this thread measures the support distance, rows
whose embedding is NaN/inf flagged invalid (``non_finite_embedding``, counted like bad coordinates), the new
columns (:mod:`geoembed.enrich.arrow`), and the write on a writer thread while the next chunk is read
ahead (:func:`prefetch`). Rows keep their order and every input column. The output is written to a
temporary file and renamed into place only when complete (:func:`geoembed.io.atomic.atomic_path`): a
failure or a kill leaves nothing that looks finished, and an earlier output untouched. With
``on_invalid="error"`` the whole input is still scanned so the error counts every bad row.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from geoembed.enrich import hygiene as hy
from geoembed.enrich.arrow import check_no_clash, embedding_arrays, output_schema, qa_arrays
from geoembed.enrich.coordinates import batch_coordinates, resolve_coordinates
from geoembed.enrich.enricher import DEFAULT_EMBED_BATCH, Enricher, load_bundle_cached, torch_threads
from geoembed.enrich.tables import CsvSink, CsvTypeRetry, ParquetSink, open_source, table_format
from geoembed.errors import InputError
from geoembed.io.atomic import atomic_path
from geoembed.io.enriched import remove_sidecar, summary_metadata, table_metadata, write_sidecar
from geoembed.io.reduction import Reduction

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 262_144

__all__ = ["DEFAULT_CHUNK_ROWS", "EnrichSummary", "enrich_file", "prefetch"]


@dataclass
class EnrichSummary:
    """Totals of one enrichment run (the CLI prints :meth:`line`)."""

    input: str
    output: str
    rows: int = 0
    invalid: int = 0
    by_reason: dict = field(default_factory=dict)
    out_of_support: int = 0
    max_support_km: float = 0.0
    out_of_support_km: float = 0.0
    seconds: float = 0.0
    parts: int = 1

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        return (f"enriched {self.rows:,} rows ({self.invalid:,} invalid, {self.out_of_support:,} out of "
                f"support > {self.out_of_support_km:g} km) in {self.seconds:.2f} s: "
                f"{self.rows_per_s:,.0f} rows/s -> {self.output}")

    def merge(self, other: EnrichSummary) -> None:
        self.rows += other.rows
        self.invalid += other.invalid
        for k, v in other.by_reason.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v
        self.out_of_support += other.out_of_support
        self.max_support_km = max(self.max_support_km, other.max_support_km)


def enrich_file(bundle, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                lon_col: str | None = None, lat_col: str | None = None, on_invalid: str = "error",
                chunk_rows: int = DEFAULT_CHUNK_ROWS, reduction: Reduction | str | os.PathLike | None = None,
                embed_batch: int = DEFAULT_EMBED_BATCH, workers: int | None = None,
                extra_meta: dict | None = None, progress: bool = False) -> EnrichSummary:
    """Enrich one CSV/Parquet/GeoParquet file into ``output_path`` (CSV or Parquet, by its name; the
    format is :mod:`geoembed.io.enriched`). Returns the run's totals.

    ``bundle`` is a loaded bundle or a bundle path. Raises InputError (nothing written, an existing
    output left untouched) for a bad input, invalid coordinates with ``on_invalid="error"``, or
    swapped coordinate columns.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if isinstance(bundle, str | os.PathLike):
        bundle = load_bundle_cached(bundle)
    if reduction is not None and not isinstance(reduction, Reduction):
        reduction = Reduction.load(reduction)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if input_path.resolve() == output_path.resolve():
        raise InputError(f"output {output_path} would overwrite the input; choose another path")
    out_format = table_format(output_path)
    enricher = Enricher(bundle, on_invalid=on_invalid, reduction=reduction, embed_batch=embed_batch,
                        workers=workers)
    forced_text: set[str] = set()
    try:
        with torch_threads(1 if enricher.workers > 1 else None):
            while True:
                try:
                    return _enrich_once(enricher, input_path, output_path, out_format, lon_col, lat_col,
                                        chunk_rows, forced_text, extra_meta or {}, progress)
                except CsvTypeRetry as retry:
                    if retry.column in forced_text:  # pragma: no cover - defensive
                        raise InputError(f"{input_path}: cannot read column '{retry.column}'") from None
                    log.info("%s: column '%s' changes type after the first block; reading it as text",
                             input_path, retry.column)
                    forced_text.add(retry.column)
    finally:
        enricher.close()


def _enrich_once(enricher: Enricher, input_path: Path, output_path: Path, out_format: str,
                 lon_col: str | None, lat_col: str | None, chunk_rows: int, forced_text: set[str],
                 extra_meta: dict, progress: bool) -> EnrichSummary:
    t0 = time.perf_counter()
    text_cols = set(forced_text) | {c for c in (lon_col or "lon", lat_col or "lat")}
    source = open_source(input_path, chunk_rows, out_format, text_cols)
    origin = str(input_path)
    coords = resolve_coordinates(source.schema, origin, lon_col, lat_col, source.geo)
    names = enricher.names
    check_no_clash(source.schema, names, origin)
    cast_coords = source.format == "csv" and out_format == "parquet"
    meta = table_metadata(
        bundle=enricher.bundle, input_path=input_path, input_format=source.format,
        coordinates=coords.describe(), on_invalid=enricher.on_invalid, embedding_columns=names,
        reduction=None if enricher.reduction is None else enricher.reduction.to_dict(), extra=extra_meta)
    schema = output_schema(source.schema, coords, names, cast_coords, meta)
    report = hy.HygieneReport()
    summary = EnrichSummary(input=origin, output=str(output_path),
                            out_of_support_km=enricher.threshold_km)
    labels = coords.labels
    failing = False
    bar = None
    if progress and source.num_rows:
        from tqdm.auto import tqdm

        bar = tqdm(total=source.num_rows, unit="row", unit_scale=True, desc="enrich", leave=False)

    with atomic_path(output_path, suffix=output_path.suffix) as tmp:
        sink = ParquetSink(tmp, schema) if out_format == "parquet" else CsvSink(tmp, schema, output_path)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoembed-enrich-writer")
        pending = None
        batches = None
        try:
            offset = 0
            batches = prefetch(source.batches())
            for batch in batches:
                n = batch.num_rows
                lon, lat, codes, lon_raw, lat_raw = batch_coordinates(batch, coords)
                start = offset
                inside = enricher.check(lon, lat, codes, report, start, lon_raw, lat_raw)
                if report.looks_swapped():
                    raise InputError(report.swapped_message(origin, *labels))
                offset += n
                if bar is not None:
                    bar.update(n)
                if enricher.on_invalid == "error" and report.invalid:
                    failing = True  # keep scanning to count every bad row, but write nothing more
                if failing:
                    continue
                valid = codes == hy.OK
                finish = enricher.embed_start(lon, lat, valid)  # the encoder runs on worker threads...
                dist = enricher.support_km(lon, lat, valid, inside)  # ...while this thread measures support
                emb = finish()
                if len(enricher.flag_non_finite(emb, codes, report, start, lon_raw, lat_raw)):
                    valid = codes == hy.OK  # rows the model gives NaN/inf for are invalid rows
                    if enricher.on_invalid == "error":
                        failing = True
                        continue
                vd = dist[valid]
                summary.out_of_support += int((vd > enricher.threshold_km).sum())
                if len(vd):
                    summary.max_support_km = max(summary.max_support_km, float(vd.max()))
                cols = list(batch.columns)
                if cast_coords:
                    i_lon = batch.schema.get_field_index(coords.lon_col)
                    i_lat = batch.schema.get_field_index(coords.lat_col)
                    keep = (codes != hy.MISSING) & (codes != hy.NON_NUMERIC)
                    cols[i_lon] = pa.array(lon, mask=~keep, type=pa.float64())
                    cols[i_lat] = pa.array(lat, mask=~keep, type=pa.float64())
                cols += embedding_arrays(emb, valid)
                cols += qa_arrays(codes, dist, enricher.threshold_km)
                out = pa.RecordBatch.from_arrays(cols, schema=schema)
                if pending is not None:
                    pending.result()
                pending = writer.submit(sink.write, out)
            if pending is not None:
                pending.result()
            if report.invalid and enricher.on_invalid == "error":
                raise InputError(report.invalid_message(origin, *labels))
            if source.num_rows is not None and offset != source.num_rows:
                raise InputError(f"{origin}: read {offset} rows but the file declares {source.num_rows}")
            summary.rows = report.rows
            summary.invalid = report.invalid
            summary.by_reason = dict(report.by_reason)
            summary.seconds = time.perf_counter() - t0
            totals = {"rows": summary.rows, "invalid": summary.invalid, "by_reason": summary.by_reason,
                      "out_of_support": summary.out_of_support, "max_support_km": summary.max_support_km,
                      "complete": True}
            sink.close(summary_metadata(totals) if out_format == "parquet" else None)
        except BaseException:
            if pending is not None:
                pending.cancel()
            writer.shutdown(wait=True)
            sink.abort()
            raise
        finally:
            if batches is not None:
                batches.close()
            source.close()
            writer.shutdown(wait=True)
            if bar is not None:
                bar.close()
        if out_format == "csv":
            remove_sidecar(output_path)  # never leave an old sidecar next to a new CSV
    if out_format == "csv":
        write_sidecar(output_path, meta, totals)
    summary.seconds = time.perf_counter() - t0
    log.debug("%s", summary.line())
    return summary


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run an iterator in a background thread, ``depth`` items ahead (IO overlaps compute)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def worker():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((None, done))
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            q.put((err, None))

    t = threading.Thread(target=worker, daemon=True, name="geoembed-enrich-reader")
    t.start()
    try:
        while True:
            err, item = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
