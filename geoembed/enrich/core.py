"""Enrichment core: coordinates -> hygiene -> support distance -> embeddings, chunk by chunk.

:class:`Enricher` holds a loaded bundle (and an optional reduction) and turns coordinate arrays into
embedding rows plus QA columns; :func:`enrich_file` streams a CSV/Parquet/GeoParquet file through it and
writes the same rows, in the same order, with every input column, plus

* ``emb_0 .. emb_{d-1}`` (float32; ``emb_pc_0 ..`` with a reduction), empty (null) for invalid rows,
* ``geoembed_invalid``: null for valid rows, else the reason (``missing``, ``non_numeric``, ...),
* ``geoembed_support_km``: distance to the training footprint in km (0 inside),
* ``geoembed_out_of_support``: ``geoembed_support_km > bundle.out_of_support_km``.

The output is written to a temporary file and renamed into place only when complete; the bundle's
fingerprint and path, the package version and the column names are stored in the Parquet key-value
metadata (key ``geoembed``; run totals under ``geoembed.summary``) or, for CSV, in ``OUT.meta.json``.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from geoembed.enrich import hygiene as hy
from geoembed.enrich.reduction import Reduction
from geoembed.enrich.tables import (
    CsvSink,
    CsvSource,
    CsvTypeRetry,
    ParquetSink,
    ParquetSource,
    Source,
    points_xy,
    table_format,
)
from geoembed.errors import GeoembedError, InputError
from geoembed.geo import SupportIndex
from geoembed.io.atomic import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

INVALID_COL = "geoembed_invalid"
SUPPORT_COL = "geoembed_support_km"
OOS_COL = "geoembed_out_of_support"
QA_COLUMNS = (INVALID_COL, SUPPORT_COL, OOS_COL)
META_KEY = b"geoembed"
SUMMARY_KEY = b"geoembed.summary"
DEFAULT_CHUNK_ROWS = 262_144
DEFAULT_EMBED_BATCH = 16_384


def default_workers() -> int:
    """Embedding threads: one per available core (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op thread count for a block (None: leave it), then restore it."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)
ON_INVALID = ("error", "null")


def embedding_names(dim: int) -> list[str]:
    """Stable embedding column names ``emb_0 .. emb_{dim-1}``."""
    return [f"emb_{i}" for i in range(dim)]


# --------------------------------------------------------------------------------------------- bundle

_BUNDLE_CACHE: dict[tuple, object] = {}
_BUNDLE_LOCK = threading.Lock()


def _bundle_key(p: Path) -> tuple:
    st = [(p.name, p.stat().st_mtime_ns, p.stat().st_size)]
    if p.is_dir():
        st += sorted((c.name, c.stat().st_mtime_ns, c.stat().st_size) for c in p.iterdir() if c.is_file())
    return (str(p.resolve()), tuple(st))


def load_bundle_cached(path: str | os.PathLike):
    """Load a model bundle once per process (keyed by path and file times), with clear errors."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model bundle {p} does not exist (write one with `geoembed train`)")
    key = _bundle_key(p)
    with _BUNDLE_LOCK:
        if key in _BUNDLE_CACHE:
            return _BUNDLE_CACHE[key]
        from geoembed.io.bundle import load_bundle

        try:
            bundle = load_bundle(p)
        except GeoembedError:
            raise
        except Exception as err:  # noqa: BLE001 - any loader failure is a bad bundle
            raise InputError(f"cannot load model bundle {p}: {type(err).__name__}: {err}") from None
        _BUNDLE_CACHE.clear()  # keep one bundle: they can be large
        _BUNDLE_CACHE[key] = bundle
        return bundle


def bundle_info(bundle) -> dict:
    """What the output metadata records about the bundle."""
    return {
        "path": str(Path(bundle.path).resolve()) if getattr(bundle, "path", None) else None,
        "fingerprint": bundle.fingerprint,
        "embedding_dim": int(bundle.embedding_dim),
        "out_of_support_km": float(bundle.out_of_support_km),
    }


# -------------------------------------------------------------------------------------------- enricher

class Enricher:
    """Turns coordinate arrays into embeddings and QA values for one bundle (and optional reduction)."""

    def __init__(self, bundle, *, on_invalid: str = "error", reduction: Reduction | None = None,
                 embed_batch: int = DEFAULT_EMBED_BATCH, workers: int | None = None) -> None:
        if on_invalid not in ON_INVALID:
            raise InputError(f"on_invalid must be one of {ON_INVALID}, got {on_invalid!r}")
        self.bundle = bundle
        self.on_invalid = on_invalid
        self.reduction = reduction
        if reduction is not None:
            reduction.check_bundle(bundle.fingerprint, int(bundle.embedding_dim))
        self.embed_batch = int(embed_batch)
        self.workers = max(1, int(workers if workers is not None else default_workers()))
        self._pool: ThreadPoolExecutor | None = None
        self.threshold_km = float(bundle.out_of_support_km)
        try:
            self.support = SupportIndex(bundle.footprint)
        except ValueError as err:
            raise InputError(f"model bundle {bundle.path}: {err}") from None

    @property
    def names(self) -> list[str]:
        if self.reduction is not None:
            return self.reduction.names
        return embedding_names(int(self.bundle.embedding_dim))

    def check(self, lon: np.ndarray, lat: np.ndarray, codes: np.ndarray, report: hy.HygieneReport,
              row_offset: int, lon_raw=None, lat_raw=None) -> np.ndarray:
        """Count one chunk's invalid rows and footprint hits into ``report``; returns ``inside``."""
        report.add(codes, row_offset, lon_raw, lat_raw)
        finite = (codes == hy.OK) | (codes == hy.OUT_OF_RANGE) | (codes == hy.NULL_ISLAND)
        if finite.all():
            inside = self.support.contains(lon, lat)
            swapped = self.support.contains(lat, lon)
        else:
            inside = np.zeros(len(codes), dtype=bool)
            swapped = np.zeros(len(codes), dtype=bool)
            inside[finite] = self.support.contains(lon[finite], lat[finite])
            swapped[finite] = self.support.contains(lat[finite], lon[finite])
        report.add_footprint(int(finite.sum()), int(inside.sum()), int(swapped.sum()))
        return inside

    def _embed_block(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """One encoder call (``Bundle.embed`` pads short calls, so chunking never changes a row's result)."""
        return self.bundle.embed(lon, lat, batch_size=max(self.embed_batch, len(lon)))

    def _start_valid(self, lon: np.ndarray, lat: np.ndarray) -> Callable[[], np.ndarray]:
        """Start embedding valid coordinates in blocks of ``embed_batch`` rows on the worker threads;
        returns a function that waits for and returns the ``(n, d)`` float32 result.

        Each thread runs torch with one intra-op thread (see :func:`torch_threads`): on few cores that
        beats torch's own intra-op parallelism, which collapses when the machine is shared.
        """
        # Writable float64 copies: torch warns about (and must not alias) read-only Arrow buffers.
        lon = np.require(lon, np.float64, ["C", "W"])
        lat = np.require(lat, np.float64, ["C", "W"])
        n = len(lon)
        b = self.embed_batch
        out = np.empty((n, int(self.bundle.embedding_dim)), dtype=np.float32)

        def job(i: int) -> None:
            out[i:i + b] = self._embed_block(lon[i:i + b], lat[i:i + b])

        starts = range(0, n, b)
        if self.workers == 1 or n <= b:
            for i in starts:
                job(i)
            return lambda: out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="geoembed-embed")
        futures = [self._pool.submit(job, i) for i in starts]

        def wait() -> np.ndarray:
            for fut in futures:
                fut.result()
            return out

        return wait

    def _embed_valid(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Embeddings of valid coordinates (blocking)."""
        return self._start_valid(lon, lat)()

    def close(self) -> None:
        """Stop the embedding threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def embed_start(self, lon: np.ndarray, lat: np.ndarray, valid: np.ndarray) -> Callable[[], np.ndarray]:
        """Start :meth:`embed` in the background (other work can overlap); call the result to wait."""
        if valid.all():
            wait = self._start_valid(lon, lat)
            return wait if self.reduction is None else (lambda: self.reduction.transform(wait()))
        idx = np.flatnonzero(valid)
        wait = self._start_valid(lon[idx], lat[idx])

        def finish() -> np.ndarray:
            out = np.full((len(lon), len(self.names)), np.nan, dtype=np.float32)
            if len(idx):
                emb = wait()
                out[idx] = emb if self.reduction is None else self.reduction.transform(emb)
            return out

        return finish

    def embed(self, lon: np.ndarray, lat: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(n, k) float32 embeddings (reduced when a reduction is set); NaN rows where not valid."""
        return self.embed_start(lon, lat, valid)()

    def support_km(self, lon: np.ndarray, lat: np.ndarray, valid: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Distance to the footprint in km (0 inside, NaN for invalid rows)."""
        if valid.all():
            return self.support.distance_km(lon, lat, inside)
        out = np.full(len(lon), np.nan)
        out[valid] = self.support.distance_km(lon[valid], lat[valid], inside[valid])
        return out


# ------------------------------------------------------------------------------------ arrow assembly

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


def embedding_arrays(emb: np.ndarray, valid: np.ndarray) -> list[pa.Array]:
    """One float32 Arrow array per embedding column (null on invalid rows)."""
    cols = np.ascontiguousarray(emb.T, dtype=np.float32)
    validity = _validity(valid)
    nulls = int((~valid).sum())
    if nulls:
        cols = np.where(valid[None, :], cols, np.float32(0.0))
    return [_float_array(c, validity, nulls) for c in cols]


# -------------------------------------------------------------------------------------- file driver

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


@dataclass
class Coordinates:
    """Where a table's coordinates come from: two named columns, or a GeoParquet point geometry."""

    lon_col: str | None = None
    lat_col: str | None = None
    geometry: object | None = None  # tables.GeoInfo

    def describe(self) -> dict:
        if self.geometry is not None:
            return {"geometry": self.geometry.column, "crs": self.geometry.crs.to_string()}
        return {"lon_col": self.lon_col, "lat_col": self.lat_col}

    @property
    def labels(self) -> tuple[str, str]:
        if self.geometry is not None:
            return (f"{self.geometry.column}.x", f"{self.geometry.column}.y")
        return (self.lon_col, self.lat_col)


_CANDIDATES = {"lon": ("lon", "lng", "long", "longitude", "x", "lon_deg"),
               "lat": ("lat", "latitude", "y", "lat_deg")}


def resolve_coordinates(schema: pa.Schema, origin: str, lon_col: str | None, lat_col: str | None,
                        geo) -> Coordinates:
    """Pick the coordinate source: explicit columns, else the GeoParquet geometry, else lon/lat."""
    if lon_col is None and lat_col is None and geo is not None:
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
    return Coordinates(lon_col=lon_col, lat_col=lat_col)


def batch_coordinates(batch: pa.RecordBatch, coords: Coordinates):
    """(lon, lat, codes, lon_raw, lat_raw) for one chunk, lon/lat in EPSG:4326 degrees."""
    if coords.geometry is not None:
        geo = coords.geometry
        x, y, not_point = points_xy(batch.column(batch.schema.get_field_index(geo.column)), geo)
        if geo.transformer is not None:
            ok = np.isfinite(x) & np.isfinite(y)
            lon = np.full(len(x), np.nan)
            lat = np.full(len(x), np.nan)
            if ok.any():
                lon[ok], lat[ok] = geo.transformer.transform(x[ok], y[ok])
        else:
            lon, lat = x, y
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
    codes = hy.classify(lon, lat, lon_codes, lat_codes)
    return lon, lat, codes, lon_raw, lat_raw


def _prefetch(it: Iterator, depth: int = 2) -> Iterator:
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


def _open_source(path: Path, chunk_rows: int, out_format: str, text_columns: set[str]) -> Source:
    fmt = table_format(path)
    if fmt == "parquet":
        return ParquetSource(path, chunk_rows)
    return CsvSource(path, chunk_rows, text_columns="*" if out_format == "csv" else text_columns)


def output_schema(in_schema: pa.Schema, coords: Coordinates, names: list[str], cast_coords: bool,
                  meta: dict) -> pa.Schema:
    """Input fields (coordinate columns parsed to float64 when ``cast_coords``) + embeddings + QA."""
    fields = []
    for f in in_schema:
        if cast_coords and coords.geometry is None and f.name in (coords.lon_col, coords.lat_col):
            f = pa.field(f.name, pa.float64())
        fields.append(f)
    fields += [pa.field(n, pa.float32()) for n in names]
    fields += [pa.field(INVALID_COL, pa.string()), pa.field(SUPPORT_COL, pa.float32()),
               pa.field(OOS_COL, pa.bool_())]
    md = dict(in_schema.metadata or {})
    md[META_KEY] = json.dumps(meta, default=str).encode()
    return pa.schema(fields, metadata=md)


def _check_no_clash(schema: pa.Schema, names: list[str], origin: str) -> None:
    clash = [n for n in list(names) + list(QA_COLUMNS) if n in schema.names]
    if clash:
        raise InputError(f"{origin}: the table already has column(s) {clash[:5]}"
                         f"{' ...' if len(clash) > 5 else ''}; was it enriched already? Drop or rename them.")


def _meta_path(output: Path) -> Path:
    return output.with_name(output.name + ".meta.json")


def enrich_file(bundle, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                lon_col: str | None = None, lat_col: str | None = None, on_invalid: str = "error",
                chunk_rows: int = DEFAULT_CHUNK_ROWS, reduction: Reduction | str | os.PathLike | None = None,
                embed_batch: int = DEFAULT_EMBED_BATCH, workers: int | None = None,
                extra_meta: dict | None = None, progress: bool = False) -> EnrichSummary:
    """Enrich one CSV/Parquet/GeoParquet file; see the module docstring. Returns the run's totals.

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
    import geoembed

    t0 = time.perf_counter()
    text_cols = set(forced_text) | {c for c in (lon_col or "lon", lat_col or "lat")}
    source = _open_source(input_path, chunk_rows, out_format, text_cols)
    origin = str(input_path)
    coords = resolve_coordinates(source.schema, origin, lon_col, lat_col, source.geo)
    names = enricher.names
    _check_no_clash(source.schema, names, origin)
    cast_coords = source.format == "csv" and out_format == "parquet"
    meta = {
        "geoembed_version": geoembed.__version__,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "bundle": bundle_info(enricher.bundle),
        "input": {"path": str(input_path.resolve()), "format": source.format, **coords.describe()},
        "coordinate_order": ["lon", "lat"],
        "on_invalid": enricher.on_invalid,
        "columns": {"embedding": names, "invalid": INVALID_COL, "support_km": SUPPORT_COL,
                    "out_of_support": OOS_COL},
        "reduction": (None if enricher.reduction is None else
                      {k: v for k, v in enricher.reduction.to_dict().items()
                       if k in ("method", "n_components", "bundle_fingerprint", "n_samples", "info")}),
        **extra_meta,
    }
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
            batches = _prefetch(source.batches())
            for batch in batches:
                n = batch.num_rows
                lon, lat, codes, lon_raw, lat_raw = batch_coordinates(batch, coords)
                inside = enricher.check(lon, lat, codes, report, offset, lon_raw, lat_raw)
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
                emb = finish()
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
            sink.close({SUMMARY_KEY: json.dumps(totals).encode()} if out_format == "parquet" else None)
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
            side = _meta_path(output_path)
            if side.exists():
                side.unlink()  # never leave an old sidecar next to a new CSV
    if out_format == "csv":
        atomic_write_json(_meta_path(output_path), {**meta, "summary": totals,
                                                    "output": {"path": str(output_path.resolve()),
                                                               "bytes": output_path.stat().st_size}})
    summary.seconds = time.perf_counter() - t0
    log.debug("%s", summary.line())
    return summary


def read_enrich_metadata(path: str | os.PathLike) -> dict:
    """The geoembed metadata of an enriched file (Parquet footer, or the CSV's ``.meta.json``)."""
    p = Path(path)
    if table_format(p) == "csv":
        side = _meta_path(p)
        if not side.is_file():
            raise InputError(f"{p} has no metadata sidecar {side.name}")
        return json.loads(side.read_text())
    import pyarrow.parquet as pq

    kv = pq.ParquetFile(p).metadata.metadata or {}
    if META_KEY not in kv:
        raise InputError(f"{p} has no geoembed metadata: not written by `geoembed enrich`")
    meta = json.loads(kv[META_KEY])
    if SUMMARY_KEY in kv:
        meta["summary"] = json.loads(kv[SUMMARY_KEY])
    return meta


__all__ = [
    "Coordinates", "EnrichSummary", "Enricher", "INVALID_COL", "OOS_COL", "SUPPORT_COL", "QA_COLUMNS",
    "embedding_names", "enrich_file", "load_bundle_cached", "read_enrich_metadata",
]


def fit_reduction_file(bundle, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                       n_components: int, method: str = "pca", lon_col: str | None = None,
                       lat_col: str | None = None, on_invalid: str = "error",
                       chunk_rows: int = DEFAULT_CHUNK_ROWS, workers: int | None = None) -> Reduction:
    """Fit a PCA/whitening reduction on the embeddings of a reference table (streamed) and save it.

    ``input_path`` is a CSV/Parquet/GeoParquet file or a folder of Parquet parts. Invalid rows are an
    error (``on_invalid="error"``) or skipped (``"null"``). Returns the saved :class:`Reduction`.
    """
    from geoembed.enrich.reduction import CovarianceAccumulator

    input_path = Path(input_path)
    if isinstance(bundle, str | os.PathLike):
        bundle = load_bundle_cached(bundle)
    files = list_parts(input_path) if input_path.is_dir() else [input_path]
    enricher = Enricher(bundle, on_invalid=on_invalid, workers=workers)
    acc = CovarianceAccumulator(int(bundle.embedding_dim))
    report = hy.HygieneReport()
    try:
        starts: list[int] = []  # first row of each file in the running row count

        def where(row: int) -> str:
            k = bisect.bisect_right(starts, row) - 1
            return f"{files[k].name} row {row - starts[k]}"

        with torch_threads(1 if enricher.workers > 1 else None):
            offset = 0
            for f in files:
                starts.append(offset)
                source = _open_source(f, chunk_rows, "parquet", {lon_col or "lon", lat_col or "lat"})
                coords = resolve_coordinates(source.schema, str(f), lon_col, lat_col, source.geo)
                try:
                    for batch in source.batches():
                        lon, lat, codes, lon_raw, lat_raw = batch_coordinates(batch, coords)
                        enricher.check(lon, lat, codes, report, offset, lon_raw, lat_raw)
                        offset += batch.num_rows
                        if report.looks_swapped():
                            raise InputError(report.swapped_message(str(input_path), *coords.labels))
                        if report.invalid and on_invalid == "error":
                            continue
                        valid = codes == hy.OK
                        if valid.any():
                            acc.add(enricher._embed_valid(lon[valid], lat[valid]))
                finally:
                    source.close()
            if report.invalid and on_invalid == "error":
                raise InputError(report.invalid_message(str(input_path), *coords.labels,
                                                        where=where if input_path.is_dir() else None))
    except CsvTypeRetry as retry:
        raise InputError(f"{input_path}: column '{retry.column}' changes type after the first block; "
                         f"convert the reference table to Parquet") from None
    finally:
        enricher.close()
    red = Reduction.from_covariance(acc, int(n_components), method, bundle_fingerprint=bundle.fingerprint,
                                    info={"source": str(input_path.resolve()), "rows": report.rows,
                                          "invalid_skipped": report.invalid,
                                          "bundle_path": bundle_info(bundle)["path"]})
    red.save(output_path)
    return red


def list_parts(folder: str | os.PathLike) -> list[Path]:
    """The Parquet parts of a folder (sorted by name); InputError when there are none."""
    from geoembed.enrich.tables import PARQUET_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"input folder {folder} does not exist")
    parts = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES) and not p.name.startswith((".", "_")))
    if not parts:
        raise InputError(f"input folder {folder} holds no .parquet parts")
    return parts
