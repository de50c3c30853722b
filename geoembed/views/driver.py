"""The one build driver of every view kind: fingerprint, create-or-resume, pending chunks, Dask, finalise.

:func:`build_view_store` builds (or resumes) the store of one view for a table of locations:

1. the kind's :class:`~geoembed.views.base.View` resolves its inputs (arrays, metadata, input fingerprints);
2. the store's fingerprint is the settings, the inputs, :func:`locations_fingerprint` and the chunk size;
   an existing store with another fingerprint is an error unless ``overwrite`` (then it is rebuilt);
3. the chunks without a marker are computed, one Dask task each (contiguous row ranges: store row i is
   locations row i), each writing its rows and then its marker, so a killed build resumes where it
   stopped and a rerun of a complete store computes nothing;
4. the store is finalised (per-channel statistics, index.parquet, ``complete``).

Where tasks run: ``dask.scheduler`` (a distributed address, ``threads``, ``processes``, ``synchronous``),
else local threads; but a view whose chunk computation holds the GIL (``View.gil_bound``) builds
:data:`PROCESS_MIN_ROWS` pending rows or more in worker processes. Worker processes read the prepared
object once each from a scratch pickle in the view folder (removed afterwards, :func:`load_prepared`);
threads share one copy; a distributed cluster is sent the object itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoembed.config.build import DaskConfig, ViewConfig
from geoembed.errors import ConfigError
from geoembed.io.fingerprint import text_fingerprint
from geoembed.io.locations import validate_locations
from geoembed.io.viewstore import ViewStore
from geoembed.views.base import View
from geoembed.views.registry import view_kind

log = logging.getLogger(__name__)

__all__ = [
    "PROCESS_MIN_ROWS",
    "build_view_store",
    "load_prepared",
    "locations_fingerprint",
    "make_view",
    "save_prepared",
    "use_processes",
]

#: Local builds of a GIL-bound view with at least this many pending rows use worker processes (its
#: numpy glue holds the GIL, so threads barely overlap); smaller ones stay on threads (no start-up cost).
PROCESS_MIN_ROWS = 100_000


def make_view(cfg: ViewConfig) -> View:
    """The View of ``cfg``'s kind (looked up in the registry), built from ``cfg``."""
    cls = view_kind(cfg.kind).view_class
    if getattr(cls, "kind", None) != cfg.kind:
        raise ConfigError(f"view kind {cfg.kind!r} is registered with {cls.__name__}, whose kind is "
                          f"{getattr(cls, 'kind', None)!r}")
    return cls(cfg)


def locations_fingerprint(ids: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> str:
    """sha256 of the locations (ids as int64, lon and lat as float64, little-endian): part of every
    view store's fingerprint."""
    h = hashlib.sha256()
    for a in (np.asarray(ids).astype("<i8"), np.asarray(lon).astype("<f8"), np.asarray(lat).astype("<f8")):
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha256:" + h.hexdigest()


def store_fingerprint(view: View, inputs: dict, locations: str, chunk_rows: int) -> str:
    """The build fingerprint: the view's settings, its inputs, the locations and the chunk size."""
    clash = {"config", "locations", view.chunk_key} & set(inputs)
    if clash:
        raise ValueError(f"view kind {view.kind!r}: its inputs may not use the key(s) {sorted(clash)}")
    return text_fingerprint({"config": view.fingerprint_settings(), **inputs, "locations": locations,
                             view.chunk_key: int(chunk_rows)})


def use_processes(view: View, scheduler: str | None, num_workers: int | None, pending_rows: int) -> bool:
    """Whether a build runs in local worker processes (see the module docstring)."""
    from geoembed.runtime import scheduler_address

    address = scheduler_address(scheduler)
    if address == "processes":
        return True
    if not view.gil_bound or address not in (None, "threads"):
        return False  # synchronous, or a distributed cluster (which ships the prepared object itself)
    workers = num_workers or (os.cpu_count() or 1)
    return workers > 1 and pending_rows >= PROCESS_MIN_ROWS


@dataclass(frozen=True)
class _PreparedFile:
    """The prepared object of a build, saved for worker processes (see :func:`load_prepared`)."""

    path: str


_PREPARED: dict[str, Any] = {}
_PREPARED_LOCK = threading.Lock()


def save_prepared(prepared: Any, path: str | os.PathLike) -> Path:
    """Write ``prepared`` to ``path`` (a pickle, read back with :func:`load_prepared`) for worker processes.

    The file is a scratch copy for one run, written before any task starts (no fsync needed)."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump(prepared, f, protocol=pickle.HIGHEST_PROTOCOL)
    return Path(path)


def load_prepared(path: str | os.PathLike) -> Any:
    """The object saved at ``path``, read once per process (later calls share it)."""
    import pickle

    key = str(path)
    with _PREPARED_LOCK:
        prepared = _PREPARED.get(key)
        if prepared is None:
            with open(key, "rb") as f:
                prepared = pickle.load(f)  # noqa: S301 - our own scratch file of this run
            _PREPARED.clear()  # one prepared object per process at a time
            _PREPARED[key] = prepared
        return prepared


def _chunk_task(view: View, store: ViewStore, i: int, prepared: Any, lon: np.ndarray, lat: np.ndarray) -> int:
    """Compute and write chunk ``i`` of ``store``; returns its number of valid rows."""
    if isinstance(prepared, _PreparedFile):  # worker process: the prepared object comes from a file
        prepared = load_prepared(prepared.path)
    chunk = view.compute_chunk(prepared, lon, lat)
    store.write_chunk(i, chunk.arrays, chunk.valid_fraction, chunk.valid)
    return int(chunk.valid.sum())


def build_view_store(
    cfg: ViewConfig,
    locations: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    dask_cfg: DaskConfig,
    overwrite: bool = False,
) -> ViewStore:
    """Build (or resume) the store of view ``cfg`` for ``locations`` in ``out_dir``; see the module docstring.

    ``locations`` needs ``location_id``, ``lon`` and ``lat``; pass them in a spatial order for the best
    I/O. Raises InputError / ConfigError naming the file or setting on bad input.
    """
    import dask

    from geoembed.runtime import run_tasks

    validate_locations(locations, "locations")
    view = make_view(cfg)
    ids = locations["location_id"].to_numpy(dtype=np.int64)
    lon = locations["lon"].to_numpy(dtype=np.float64)
    lat = locations["lat"].to_numpy(dtype=np.float64)
    resolved = view.resolve(lon, lat)
    chunk_rows = view.chunk_rows(resolved, dask_cfg.chunk_size)
    fingerprint = store_fingerprint(view, resolved.inputs, locations_fingerprint(ids, lon, lat), chunk_rows)
    store = ViewStore.create_or_resume(
        out_dir, location_ids=ids, arrays=resolved.arrays, chunk_rows=chunk_rows, kind=view.kind,
        attrs=resolved.attrs, build_fingerprint=fingerprint, overwrite=overwrite,
    )
    pending = store.pending_chunks()
    rows = sum(b - a for a, b in map(store.chunk_bounds, pending))
    procs = use_processes(view, dask_cfg.scheduler, dask_cfg.num_workers, rows)
    log.info("%s view %s: %d of %d chunks to compute%s", view.kind, cfg.name, len(pending), store.n_chunks,
             " (worker processes)" if pending and procs else "")
    if pending:
        scratch = Path(out_dir) / f".prepared-{os.getpid()}.pkl"
        try:
            with view.running(resolved):
                prepared = view.prepare(resolved, lon, lat)
                if procs:  # each worker process reads the prepared object once from a file
                    shared = _PreparedFile(str(save_prepared(prepared, scratch)))
                else:
                    shared = dask.delayed(prepared, name=f"{view.kind}-{cfg.name}-prepared-{fingerprint[7:23]}",
                                          traverse=False)
                task = dask.delayed(_chunk_task, pure=False)
                tasks = []
                for i in pending:
                    a, b = store.chunk_bounds(i)
                    tasks.append(task(view, store, i, shared, lon[a:b], lat[a:b],
                                      dask_key_name=f"{view.kind}-{cfg.name}-chunk-{i}"))
                run_tasks(tasks, scheduler="processes" if procs else dask_cfg.scheduler,
                          num_workers=dask_cfg.num_workers, desc=f"{view.kind} view {cfg.name}")
        finally:
            scratch.unlink(missing_ok=True)
    return view.finalise(store.finalize())
