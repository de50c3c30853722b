"""The View interface: what one view kind must say and compute; :mod:`geoembed.views.driver` does the rest.

A view turns each location (``lon``, ``lat`` in degrees) into one row of named arrays. A kind implements

* :meth:`View.resolve`: check and fingerprint its inputs (cheap: no heavy reads) and declare the arrays
  it writes (:class:`~geoembed.io.viewstore.ArraySpec`: per-row shape and dtype) and their metadata;
* :meth:`View.prepare`: load what the chunks share (features, indexes ...), as a picklable object; only
  called when chunks remain to compute;
* :meth:`View.compute_chunk`: a pure function of the prepared object and one chunk of locations,
  returning the arrays and the per-row validity (:class:`Chunk`).

The driver owns the rest: the store's fingerprint (settings + inputs + one hash of the locations),
create-or-resume, the pending chunks, the Dask tasks and the finalisation. See the README section
"Adding a view kind".
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from geoembed.config.build import ViewConfig
from geoembed.io.viewstore import ArraySpec, ViewStore

__all__ = ["Chunk", "Resolved", "View"]


@dataclass
class Resolved:
    """What a view knows before computing anything.

    ``arrays``: the arrays it writes (name -> per-row shape and dtype); ``attrs``: JSON metadata stored
    with the view (sources, CRS, band or feature names ...); ``inputs``: JSON fingerprints of its inputs
    (files, catalogues, a version), part of the store's fingerprint; ``context``: anything
    :meth:`View.prepare` and :meth:`View.compute_chunk` need from this step (resolved sources ...).
    """

    arrays: dict[str, ArraySpec]
    attrs: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    context: Any = None


@dataclass
class Chunk:
    """One chunk's result: ``arrays`` (name -> ``(n, *shape)``), ``valid`` ``(n,)`` bool and
    ``valid_fraction`` ``(n,)`` (default: ``valid`` as 0/1). Rows without data hold NaN, never 0."""

    arrays: dict[str, np.ndarray]
    valid: np.ndarray
    valid_fraction: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.valid = np.asarray(self.valid, dtype=bool)
        if self.valid_fraction is None:
            self.valid_fraction = self.valid.astype(np.float32)


class View(ABC):
    """One view kind's computation, built from its validated settings (``self.cfg``).

    Class attributes: ``kind`` (the registry key and the store's ``kind``), ``config_model`` (the
    :class:`~geoembed.config.build.ViewConfig` subclass of its settings), ``gil_bound`` (the chunk
    computation holds the GIL, so large local builds run in worker processes), ``chunk_key`` (the key of
    the chunk size in the fingerprint). Instances are pickled into Dask tasks: keep them small.
    """

    kind: ClassVar[str]
    config_model: ClassVar[type[ViewConfig]]
    gil_bound: ClassVar[bool] = False
    chunk_key: ClassVar[str] = "chunk_rows"

    def __init__(self, cfg: ViewConfig):
        if not isinstance(cfg, self.config_model):
            raise TypeError(f"{type(self).__name__} needs a {self.config_model.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    @abstractmethod
    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        """Check the inputs (InputError / ConfigError naming the file or setting) and describe the
        store; ``lon``/``lat`` are all the locations (for a projection, say). No heavy reads here."""

    def fingerprint_settings(self) -> dict:
        """The settings that enter the store's fingerprint: all of them (default), less those that
        cannot change a result (timeouts, retries), so that changing them resumes a partial store."""
        return self.cfg.model_dump(mode="json")

    def chunk_rows(self, resolved: Resolved, chunk_size: int) -> int:
        """Rows per chunk (and per Dask task); default the configured ``dask.chunk_size``."""
        return int(chunk_size)

    def prepare(self, resolved: Resolved, lon: np.ndarray, lat: np.ndarray) -> Any:
        """What every chunk needs, built once per build that has chunks to compute (default:
        ``resolved.context``). Must pickle (worker processes, distributed clusters)."""
        return resolved.context

    @abstractmethod
    def compute_chunk(self, prepared: Any, lon: np.ndarray, lat: np.ndarray) -> Chunk:
        """The arrays and validity of one chunk of locations: a pure function of its arguments."""

    @contextlib.contextmanager
    def running(self, resolved: Resolved) -> Iterator[None]:
        """Context around the Dask tasks of one build (process-wide settings, caches to release)."""
        yield

    def finalise(self, store: ViewStore) -> ViewStore:
        """Called once the store is complete (its per-channel statistics written); default: nothing."""
        return store
