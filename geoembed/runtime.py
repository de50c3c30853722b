"""Running Dask task graphs: the local threaded scheduler by default, or a distributed scheduler
whose address comes from the config (``dask.scheduler``) or the environment (GEOEMBED_SCHEDULER).

Tasks are ``dask.delayed`` objects that write their own output and return something small, so a
killed run loses at most the tasks in flight.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

ENV_SCHEDULER = "GEOEMBED_SCHEDULER"


def progress_enabled() -> bool:
    """Progress bars are on in a terminal, off in CI or when GEOEMBED_NO_PROGRESS is set."""
    if os.environ.get("GEOEMBED_NO_PROGRESS") or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def progress_bar(total: int, desc: str):
    """A tqdm bar (disabled when progress is off)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not progress_enabled(), leave=False)


def scheduler_address(configured: str | None) -> str | None:
    """The distributed scheduler to use: config first, then the environment, else None (local)."""
    return configured or os.environ.get(ENV_SCHEDULER) or None


def run_tasks(
    tasks: Sequence[Any], *, scheduler: str | None = None, num_workers: int | None = None, desc: str = "tasks"
) -> list[Any]:
    """Compute ``dask.delayed`` tasks with a progress bar; returns their results in order.

    ``scheduler`` is a distributed address, or one of the local schedulers ``threads`` (default),
    ``processes`` or ``synchronous``.
    """
    import dask

    if not tasks:
        return []
    address = scheduler_address(scheduler)
    local = "threads"
    if address in ("threads", "processes", "synchronous"):
        local, address = address, None
    bar = progress_bar(len(tasks), desc)
    try:
        if address:
            from distributed import Client, as_completed

            log.info("running %d %s on distributed scheduler %s", len(tasks), desc, address)
            with Client(address) as client:
                futures = client.compute(list(tasks))
                order = {f.key: i for i, f in enumerate(futures)}
                results: list[Any] = [None] * len(futures)
                for fut in as_completed(futures):
                    results[order[fut.key]] = fut.result()
                    bar.update(1)
                return results
        from dask.callbacks import Callback

        keys = {t.key for t in tasks}

        class _Bar(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    bar.update(1)

        with _Bar():
            return list(dask.compute(*tasks, scheduler=local, num_workers=num_workers))
    finally:
        bar.close()
