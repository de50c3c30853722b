"""The file driver: stream one table (CSV, Parquet, GeoParquet, shapefile, GeoPackage, ...) through an
:class:`Enricher` into an enriched table (:mod:`geoembed.io.enriched`), chunk by chunk, in flat memory.

Before any work: the input exists and has a known format, the output is not a folder and its folder
exists and is writable (:func:`geoembed.io.atomic.check_output`, which also removes the temporaries of
an earlier killed run). Per chunk: coordinates and hygiene codes (:mod:`geoembed.enrich.coordinates`),
the encoder on worker threads while this thread measures the support distance, rows whose
embedding is NaN/inf flagged invalid (``non_finite_embedding``, counted like bad coordinates), the new columns
(:mod:`geoembed.enrich.arrow`), and the write on a writer thread while the next chunk is read ahead
(:func:`prefetch`). A table of polygons gets one embedding per polygon from points sampled in it
(:mod:`geoembed.enrich.polygons`). Rows keep their order and every input column. The output is written to
a temporary file and renamed into place only when complete (:func:`geoembed.io.atomic.atomic_path`): a
failure or a kill leaves nothing that looks finished, and an earlier output untouched.

The whole-table verdicts (swapped columns, projected coordinates given as degrees;
:meth:`~geoembed.enrich.hygiene.HygieneReport.verdict`) are taken once every chunk has been counted, so
they cannot depend on the chunk size or the row order; with ``on_invalid="error"`` the whole input is
scanned too, so the error counts every bad row.
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

import numpy as np
import pyarrow as pa

from geoembed.enrich import hygiene as hy
from geoembed.enrich.arrow import check_no_clash, embedding_arrays, output_schema, polygon_arrays, qa_arrays
from geoembed.enrich.coordinates import Coordinates, batch_coordinates, geometry_kind, resolve_coordinates
from geoembed.enrich.enricher import DEFAULT_EMBED_BATCH, Enricher, load_bundle_cached, torch_threads
from geoembed.enrich.polygons import DEFAULT_POINTS, PolygonSampler
from geoembed.enrich.tables import CsvSink, CsvTypeRetry, ParquetSink, open_source, table_format
from geoembed.errors import InputError
from geoembed.io.atomic import atomic_path, check_output
from geoembed.io.enriched import (
    remove_sidecar,
    sidecar_path,
    summary_metadata,
    table_metadata,
    write_sidecar,
)
from geoembed.io.reduction import Reduction
from geoembed.io.tables import check_input_file, input_format

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 262_144
#: How to pass a CRS, for the projected-coordinates error of the command and the Python API.
HOW_CRS = ("Pass --crs EPSG:XXXX (crs= in Python) naming the CRS of these columns, e.g. EPSG:31985 for "
           "SIRGAS 2000 / UTM zone 25S or EPSG:3857 for web Mercator; they are then converted to lon/lat.")

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
    kind: str = "point"
    repaired: int = 0
    verdict_counts: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def line(self) -> str:
        what = "polygons" if self.kind == "polygon" else "rows"
        fixed = f", {self.repaired:,} repaired" if self.repaired else ""
        return (f"enriched {self.rows:,} {what} ({self.invalid:,} invalid{fixed}, {self.out_of_support:,} out "
                f"of support > {self.out_of_support_km:g} km) in {self.seconds:.2f} s: "
                f"{self.rows_per_s:,.0f} {what}/s -> {self.output}")

    def merge(self, other: EnrichSummary) -> None:
        self.rows += other.rows
        self.invalid += other.invalid
        for k, v in other.by_reason.items():
            self.by_reason[k] = self.by_reason.get(k, 0) + v
        self.out_of_support += other.out_of_support
        self.max_support_km = max(self.max_support_km, other.max_support_km)
        self.repaired += other.repaired


@dataclass
class _Job:
    """What one file's enrichment is asked to do (the arguments of :func:`enrich_file`)."""

    input_path: Path
    output_path: Path
    out_format: str
    lon_col: str | None
    lat_col: str | None
    chunk_rows: int
    extra_meta: dict
    progress: bool
    infer_types: bool
    crs: object
    layer: str | None
    sampler: PolygonSampler | None
    defer_verdict: bool
    forced_text: set = field(default_factory=set)


def enrich_file(bundle, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                lon_col: str | None = None, lat_col: str | None = None, on_invalid: str = "error",
                chunk_rows: int = DEFAULT_CHUNK_ROWS, reduction: Reduction | str | os.PathLike | None = None,
                embed_batch: int = DEFAULT_EMBED_BATCH, workers: int | None = None,
                extra_meta: dict | None = None, progress: bool = False, infer_types: bool = False,
                crs=None, layer: str | None = None, points_per_polygon: int = DEFAULT_POINTS,
                polygon_seed: int = 0, weight_raster: str | os.PathLike | None = None,
                defer_verdict: bool = False, check: bool = True) -> EnrichSummary:
    """Enrich one table into ``output_path`` (CSV or Parquet, by its name; the format is
    :mod:`geoembed.io.enriched`). Returns the run's totals.

    ``bundle`` is a loaded bundle or a bundle path. CSV columns other than the coordinates keep their
    text unless ``infer_types``. ``crs``: the CRS of the x/y columns (or of a geometry without one).
    ``layer``: the layer of a multi-layer GeoPackage. A table whose geometry holds polygons gets one
    embedding per polygon: the mean over ``points_per_polygon`` points sampled uniformly in it
    (deterministic for ``polygon_seed``), weighted by the density raster ``weight_raster`` when given.
    Raises InputError (nothing written, an existing output left untouched) for a bad input or output,
    invalid rows with ``on_invalid="error"``, swapped coordinate columns or projected coordinates given
    as degrees (``defer_verdict``: leave those two verdicts to the caller, who sums
    ``summary.verdict_counts`` over the parts of one table). ``check=False``: the caller has checked the
    output folder (a folder of parts).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    check_input_file(input_path)
    input_format(input_path)
    out_format = table_format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise InputError(f"output {output_path} would overwrite the input; choose another path")
    if check:
        check_output(output_path)
        if out_format == "csv":
            check_output(sidecar_path(output_path), what="output sidecar")
    if isinstance(bundle, str | os.PathLike):
        bundle = load_bundle_cached(bundle)
    if reduction is not None and not isinstance(reduction, Reduction):
        reduction = Reduction.load(reduction)
    enricher = Enricher(bundle, on_invalid=on_invalid, reduction=reduction, embed_batch=embed_batch,
                        workers=workers)
    sampler = None
    try:
        sampler = PolygonSampler(points_per_polygon, polygon_seed, weight_raster)
        job = _Job(input_path, output_path, out_format, lon_col, lat_col, chunk_rows, extra_meta or {},
                   progress, infer_types, crs, layer, sampler, defer_verdict)
        with torch_threads(1 if enricher.workers > 1 else None):
            while True:
                try:
                    return _enrich_once(enricher, job)
                except CsvTypeRetry as retry:
                    if retry.column in job.forced_text:  # pragma: no cover - defensive
                        raise InputError(f"{input_path}: cannot read column '{retry.column}'") from None
                    log.info("%s: column '%s' changes type after the first block; reading it as text",
                             input_path, retry.column)
                    job.forced_text.add(retry.column)
    finally:
        enricher.close()
        if sampler is not None:
            sampler.close()


def _open(enricher: Enricher, job: _Job):
    """The source, its coordinates (kind decided on the whole table) and the output schema and metadata."""
    text_cols = set(job.forced_text) | {c for c in (job.lon_col or "lon", job.lat_col or "lat")}
    source = open_source(job.input_path, job.chunk_rows, layer=job.layer, infer_types=job.infer_types,
                         text_columns=text_cols)
    origin = str(job.input_path)
    try:
        coords = resolve_coordinates(source.schema, origin, job.lon_col, job.lat_col, source.geo, job.crs)
        if coords.geometry is not None:
            coords.kind = geometry_kind(coords.geometry, job.input_path, source.layer, job.chunk_rows)
        if coords.kind != "polygon" and job.sampler.weight is not None:
            raise InputError(f"{origin}: --weight-raster weighs points sampled in polygons, but this table's "
                             f"coordinates are points ({', '.join(coords.labels)})")
        check_no_clash(source.schema, enricher.names, origin, polygons=coords.kind == "polygon")
        described = coords.describe() | ({"layer": source.layer} if source.layer else {})
        extra = dict(job.extra_meta)
        if coords.kind == "polygon":
            extra["polygons"] = job.sampler.settings()
        meta = table_metadata(
            bundle=enricher.bundle, input_path=job.input_path, input_format=source.format, coordinates=described,
            on_invalid=enricher.on_invalid, embedding_columns=enricher.names,
            reduction=None if enricher.reduction is None else enricher.reduction.to_dict(), extra=extra)
        cast_coords = source.format == "csv" and job.out_format == "parquet"
        schema = output_schema(source.schema, coords, enricher.names, cast_coords, meta,
                               polygons=coords.kind == "polygon", geometry_as_wkt=job.out_format == "csv",
                               rewrite_geo=source.format == "vector" or (
                                   coords.geometry is not None and coords.geometry.given_crs))
    except BaseException:
        source.close()
        raise
    return source, coords, meta, schema, cast_coords


def _enrich_once(enricher: Enricher, job: _Job) -> EnrichSummary:
    t0 = time.perf_counter()
    source, coords, meta, schema, cast_coords = _open(enricher, job)
    origin, output_path, out_format = str(job.input_path), job.output_path, job.out_format
    polygons = coords.kind == "polygon"
    report = hy.HygieneReport(kind=coords.kind)
    summary = EnrichSummary(input=origin, output=str(output_path), out_of_support_km=enricher.threshold_km,
                            kind=coords.kind)
    labels = coords.labels
    failing = False
    bar = None
    if job.progress and source.num_rows:
        from tqdm.auto import tqdm

        bar = tqdm(total=source.num_rows, unit="row", unit_scale=True, desc="enrich", leave=False)

    with atomic_path(output_path, suffix=output_path.suffix, clean=False) as tmp:
        sink = ParquetSink(tmp, schema, text_input=source.format == "csv") if out_format == "parquet" \
            else CsvSink(tmp, schema, output_path)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geoembed-enrich-writer")
        pending = None
        batches = None
        try:
            offset = 0
            batches = prefetch(source.batches())
            for batch in batches:
                n = batch.num_rows
                if polygons:
                    new_cols, codes = _polygon_chunk(enricher, job.sampler, batch, coords, report, offset, failing,
                                                     summary)
                else:
                    new_cols, codes = _point_chunk(enricher, batch, coords, report, offset, failing, summary,
                                                   cast_coords)
                offset += n
                if bar is not None:
                    bar.update(n)
                if enricher.on_invalid == "error" and report.invalid:
                    failing = True  # keep scanning to count every bad row, but write nothing more
                if failing:
                    continue
                cols = _geometry_as_wkt(list(batch.columns), coords, schema) if out_format == "csv" \
                    else list(batch.columns)
                for i, col in new_cols.get("replace", {}).items():
                    cols[i] = col
                out = pa.RecordBatch.from_arrays(cols + new_cols["added"], schema=schema)
                if pending is not None:
                    pending.result()
                pending = writer.submit(sink.write, out)
            if pending is not None:
                pending.result()
            if not job.defer_verdict:
                problem = report.verdict(origin, *labels, HOW_CRS)
                if problem is not None:
                    raise InputError(problem)
            if report.invalid and enricher.on_invalid == "error":
                raise InputError(report.invalid_message(origin, *labels))
            if source.num_rows is not None and offset != source.num_rows:
                raise InputError(f"{origin}: read {offset} rows but the file declares {source.num_rows}")
            summary.rows = report.rows
            summary.invalid = report.invalid
            summary.by_reason = dict(report.by_reason)
            summary.verdict_counts = report.counts()
            summary.seconds = time.perf_counter() - t0
            totals = {"rows": summary.rows, "invalid": summary.invalid, "by_reason": summary.by_reason,
                      "out_of_support": summary.out_of_support, "max_support_km": summary.max_support_km,
                      **({"repaired": summary.repaired} if polygons else {}),
                      **({"verdict_counts": summary.verdict_counts} if job.defer_verdict else {}),
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
    if summary.repaired:
        log.warning("%s: %d self-intersecting polygon(s) repaired with make_valid before sampling", origin,
                    summary.repaired)
    summary.seconds = time.perf_counter() - t0
    log.debug("%s", summary.line())
    return summary


def _point_chunk(enricher: Enricher, batch: pa.RecordBatch, coords: Coordinates, report: hy.HygieneReport,
                 offset: int, failing: bool, summary: EnrichSummary, cast_coords: bool):
    """One chunk of points: counts into ``report``; unless ``failing``, the new columns."""
    lon, lat, codes, lon_raw, lat_raw = batch_coordinates(batch, coords)
    inside = enricher.check(lon, lat, codes, report, offset, lon_raw, lat_raw)
    if failing or (enricher.on_invalid == "error" and report.invalid):
        return {}, codes
    valid = codes == hy.OK
    finish = enricher.embed_start(lon, lat, valid)  # the encoder runs on worker threads...
    dist = enricher.support_km(lon, lat, valid, inside)  # ...while this thread measures support
    vd = dist[valid]
    prior_oos = summary.out_of_support
    summary.out_of_support += int((vd > enricher.threshold_km).sum())
    if len(vd):
        summary.max_support_km = max(summary.max_support_km, float(vd.max()))
    replace = {}
    if cast_coords:
        keep = (codes != hy.MISSING) & (codes != hy.NON_NUMERIC)
        raw_lon, raw_lat = (lon, lat) if coords.transformer is None else (
            hy.parse_numeric(lon_raw)[0], hy.parse_numeric(lat_raw)[0])
        replace[batch.schema.get_field_index(coords.lon_col)] = pa.array(raw_lon, mask=~keep, type=pa.float64())
        replace[batch.schema.get_field_index(coords.lat_col)] = pa.array(raw_lat, mask=~keep, type=pa.float64())
    emb = finish()
    if len(enricher.flag_non_finite(emb, codes, report, offset, lon_raw, lat_raw)):
        valid = codes == hy.OK  # rows the model gives NaN/inf for are invalid rows
        if enricher.on_invalid == "error":
            return {}, codes
        vd = dist[valid]
        summary.out_of_support = prior_oos + int((vd > enricher.threshold_km).sum())
    added = embedding_arrays(emb, valid) + qa_arrays(codes, dist, enricher.threshold_km)
    return {"added": added, "replace": replace}, codes


def _polygon_chunk(enricher: Enricher, sampler: PolygonSampler, batch: pa.RecordBatch, coords: Coordinates,
                   report: hy.HygieneReport, offset: int, failing: bool, summary: EnrichSummary):
    """One chunk of polygons (see :mod:`geoembed.enrich.polygons`)."""
    import shapely

    geo = coords.geometry
    col = batch.column(batch.schema.get_field_index(geo.column))
    null = col.is_null().to_numpy(zero_copy_only=False)
    geoms = shapely.from_wkb(col.to_numpy(zero_copy_only=False), on_invalid="ignore")
    if failing:  # only count: checks without sampling
        codes, details, _, _, res = sampler.prepare(geoms, geo.transformer, geo.crs.is_geographic, null)
    else:
        res = sampler.embed_geoms(enricher, geoms, geo.transformer, geo.crs.is_geographic, null)
        codes, details = res.codes, res.details
    report.add(codes, offset, details, None)
    report.add_footprint(res.readable, 0, 0)
    report.add_projected(res.projected, res.projected_example)
    summary.repaired += len(res.repaired)
    if res.repaired:
        log.info("%s: rows %s self-intersect; repaired with make_valid", geo.origin,
                 [offset + r for r in res.repaired[:10]])
    if failing or (enricher.on_invalid == "error" and report.invalid):
        return {}, codes
    valid = codes == hy.OK
    vd = res.support_km[valid]
    summary.out_of_support += int((vd > enricher.threshold_km).sum())
    if len(vd):
        summary.max_support_km = max(summary.max_support_km, float(vd.max()))
    added = (embedding_arrays(res.emb, valid) + qa_arrays(codes, res.support_km, enricher.threshold_km)
             + polygon_arrays(res.n_points, res.oos_share, valid))
    return {"added": added}, codes


def _geometry_as_wkt(cols: list, coords: Coordinates, schema: pa.Schema) -> list:
    """CSV output: a WKB geometry column as WKT text."""
    geo = coords.geometry
    if geo is None or geo.encoding != "WKB":
        return cols
    import shapely

    i = schema.get_field_index(geo.column)
    if i < 0 or not pa.types.is_string(schema.field(i).type):
        return cols
    col = cols[i]
    wkt = shapely.to_wkt(shapely.from_wkb(col.to_numpy(zero_copy_only=False), on_invalid="ignore"))
    cols[i] = pa.array(np.asarray(wkt, dtype=object), type=pa.string(), mask=col.is_null().to_numpy(zero_copy_only=False))
    return cols


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
