"""Shared by the encoder benchmarks (bench_import.py, bench_distilled.py): named variants timed in turn, and the
GeoCLIP / enrich-path runs both compare."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` for a block."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_variants(variants: dict[str, tuple[int, Callable]], rounds: int, min_seconds: float = 0.0
                  ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, object]]:
    """Time each ``name: (torch threads, fn)`` in turn, ``rounds`` times, after one warm-up call each (TorchScript
    profiling runs, allocator, pools). A round repeats ``fn`` until ``min_seconds`` have passed (at least once).
    Returns wall and CPU seconds per call for each round, and each variant's last result."""
    for threads, fn in variants.values():
        with torch_threads(threads), torch.inference_mode():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    last: dict[str, object] = {}
    for _ in range(rounds):
        for name, (threads, fn) in variants.items():
            with torch_threads(threads), torch.inference_mode():
                calls, t, c = 0, time.perf_counter(), time.process_time()
                while True:
                    last[name] = fn()
                    calls += 1
                    if time.perf_counter() - t >= min_seconds:
                        break
                wall[name].append((time.perf_counter() - t) / calls)
                cpu[name].append((time.process_time() - c) / calls)
    return wall, cpu, last


@contextlib.contextmanager
def geoclip_and_enrich_runs(bundle, lon: np.ndarray, lat: np.ndarray) -> Iterator[tuple[Callable, Callable]]:
    """``(own_run, enrich_run)`` on ``lon``/``lat``: GeoCLIP's own location encoder (from the installed wheel),
    and ``bundle`` through the enrich path (``Enricher``, 2 workers of 1 torch thread each); the enricher is
    closed on exit."""
    from geoembed.enrich import Enricher
    from geoembed.testing.geoclip import geoclip_location_encoder

    own = geoclip_location_encoder()
    x = torch.tensor(np.stack([lat, lon], axis=1), dtype=torch.float32)  # GeoCLIP takes (lat, lon)
    valid = np.ones(len(lon), dtype=bool)
    enricher = Enricher(bundle, workers=2)

    def own_run():
        with torch.inference_mode():
            return own(x).numpy()

    def enrich_run():
        with torch_threads(1):
            return enricher.embed(lon, lat, valid)

    try:
        yield own_run, enrich_run
    finally:
        enricher.close()
