"""The Enricher: coordinate arrays -> embeddings (optionally reduced) and QA values, for one bundle.

:class:`Enricher` holds a loaded bundle (see :func:`load_bundle_cached`), its training footprint as a
support index and an optional :class:`~geoembed.io.reduction.Reduction`. For arrays of lon/lat with
hygiene codes (:mod:`geoembed.enrich.hygiene`) it counts invalid rows, footprint hits and
projected-looking values (for the whole-table verdicts of
:meth:`~geoembed.enrich.hygiene.HygieneReport.verdict`), embeds the valid rows on worker threads, flags rows whose
embedding is not finite (:meth:`Enricher.flag_non_finite`) and measures the distance to the footprint. It knows nothing of files: :mod:`geoembed.enrich.driver` streams
tables through it, and :class:`~geoembed.enrich.transformer.LocationEmbedder` calls it on in-memory
columns.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from geoembed.enrich import hygiene as hy
from geoembed.errors import GeoembedError, InputError
from geoembed.geo import SupportIndex
from geoembed.io.enriched import embedding_names
from geoembed.io.reduction import Reduction
from geoembed.io.tables import projected_like

DEFAULT_EMBED_BATCH = 16_384
ON_INVALID = ("error", "null")

__all__ = ["DEFAULT_EMBED_BATCH", "ON_INVALID", "Enricher", "default_workers", "embedding_names",
           "load_bundle_cached", "torch_threads"]


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
    from geoembed.io.bundle import check_bundle_path

    p = check_bundle_path(path)  # missing, a file, a folder without geoembed.json: an error saying so
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
        like = np.flatnonzero((codes == hy.OUT_OF_RANGE) & projected_like(lon, lat))
        if len(like):
            report.add_projected(len(like), (float(lon[like[0]]), float(lat[like[0]])))
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

    def embed_valid(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """``(n, d)`` float32 embeddings of coordinates that are all valid (blocking; never reduced)."""
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

    @staticmethod
    def flag_non_finite(emb: np.ndarray, codes: np.ndarray, report: hy.HygieneReport, row_offset: int,
                        lon_raw=None, lat_raw=None) -> np.ndarray:
        """Rows with valid coordinates whose embedding is NaN or infinite (weights that overflow there):
        their code becomes ``non_finite_embedding`` (in place), their embedding NaN, and ``report``
        counts them as invalid. Returns their indices (usually none)."""
        finite = np.isfinite(emb).all(axis=1)
        rows = np.flatnonzero(~finite & (codes == hy.OK))
        if len(rows):
            codes[rows] = hy.NON_FINITE_EMBEDDING
            emb[rows] = np.nan
            report.add_embedding_failures(rows, row_offset, lon_raw, lat_raw)
        return rows

    def support_km(self, lon: np.ndarray, lat: np.ndarray, valid: np.ndarray, inside: np.ndarray) -> np.ndarray:
        """Distance to the footprint in km (0 inside, NaN for invalid rows)."""
        if valid.all():
            return self.support.distance_km(lon, lat, inside)
        out = np.full(len(lon), np.nan)
        out[valid] = self.support.distance_km(lon[valid], lat[valid], inside[valid])
        return out
