"""Enrich a folder of Parquet parts on Dask: one task per part, output parts with the same names.

Tasks write into a hidden staging folder ``.OUT.partial/`` beside the target, each part atomically
and with its own metadata; when every part is there, the whole-table verdicts (swapped columns,
projected coordinates given as degrees) are taken on the counts of all parts together, the temporaries of
killed tasks are swept out, a ``_geoembed.json`` summary is added and the staging folder is renamed to
``OUT``. A failed or killed run therefore leaves no ``OUT`` that looks complete (an older ``OUT`` stays
untouched), and rerunning the same command skips the parts already done (same bundle, same settings,
same input file size and time).

The scheduler is a distributed address (``--scheduler`` or env GEOEMBED_SCHEDULER, see
:func:`geoembed.runtime.scheduler_address`) or, by default, Dask's local threaded scheduler. Workers
must see the same file system paths (bundle, input and output).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from geoembed.enrich import hygiene as hy
from geoembed.enrich.driver import DEFAULT_CHUNK_ROWS, HOW_CRS, EnrichSummary, enrich_file
from geoembed.enrich.enricher import DEFAULT_EMBED_BATCH, default_workers, load_bundle_cached, torch_threads
from geoembed.enrich.polygons import DEFAULT_POINTS, WeightRaster
from geoembed.enrich.tables import list_parts
from geoembed.errors import InputError
from geoembed.io.atomic import check_output, remove_stale_temps
from geoembed.io.enriched import (
    SUMMARY_FILE,
    read_directory_summary,
    read_enrich_metadata,
    write_directory_summary,
)
from geoembed.io.fingerprint import text_fingerprint
from geoembed.io.reduction import Reduction

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_FILE", "enrich_directory", "enrich_part", "read_directory_summary"]


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def enrich_part(bundle_path: str, part: str, target: str, job: dict, settings: dict) -> dict:
    """Dask task: enrich one part into ``target`` (atomically); returns its totals as a dict."""
    try:  # on a distributed worker, one torch thread per task (the worker runs tasks in parallel)
        from distributed import get_worker

        get_worker()
        import torch

        torch.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    part_path = Path(part)
    s = enrich_file(bundle_path, part_path, target, workers=1, defer_verdict=True, check=False,
                    extra_meta={"job": job, "source": _source_stamp(part_path)}, **settings)
    return {"rows": s.rows, "invalid": s.invalid, "by_reason": s.by_reason,
            "out_of_support": s.out_of_support, "max_support_km": s.max_support_km, "repaired": s.repaired,
            "verdict_counts": s.verdict_counts, "kind": s.kind}


def _part_done(target: Path, part: Path, job: dict) -> dict | None:
    """Totals of an already finished part with the same job and source, else None."""
    if not target.is_file():
        return None
    try:
        meta = read_enrich_metadata(target)
    except Exception:  # noqa: BLE001 - an unreadable leftover is simply redone
        return None
    if meta.get("job") != job or meta.get("source") != _source_stamp(part):
        return None
    summary = meta.get("summary") or {}
    if not summary.get("complete") or "verdict_counts" not in summary:
        return None
    return {**summary, "kind": "polygon" if (meta.get("input") or {}).get("geometry_kind") == "polygon"
            else "point"}


def _replace_folder(staging: Path, output: Path) -> None:
    """Move the finished staging folder onto ``output`` (replacing an earlier enrich output)."""
    if output.exists():
        if not output.is_dir():
            raise InputError(f"output {output} exists and is not a folder")
        if any(output.iterdir()) and not (output / SUMMARY_FILE).is_file():
            raise InputError(f"output folder {output} exists and was not written by `geoembed enrich`; "
                             f"remove it or choose another output")
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output)


def enrich_directory(bundle_path: str | os.PathLike, input_dir: str | os.PathLike,
                     output_dir: str | os.PathLike, *, lon_col: str | None = None,
                     lat_col: str | None = None, on_invalid: str = "error",
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, reduction: str | os.PathLike | None = None,
                     embed_batch: int = DEFAULT_EMBED_BATCH, scheduler: str | None = None,
                     num_workers: int | None = None, crs=None, points_per_polygon: int = DEFAULT_POINTS,
                     polygon_seed: int = 0, weight_raster: str | os.PathLike | None = None) -> EnrichSummary:
    """Enrich every Parquet part of ``input_dir`` into ``output_dir`` with Dask (see module docs; the
    options are those of :func:`~geoembed.enrich.driver.enrich_file`)."""
    from geoembed.runtime import run_tasks, scheduler_address

    t0 = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    parts = list_parts(input_dir)
    if output_dir.resolve() == input_dir.resolve():
        raise InputError(f"output folder {output_dir} would overwrite the input parts")
    check_output(output_dir, what="output folder", folder=True)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / SUMMARY_FILE).is_file():
        raise InputError(f"output folder {output_dir} exists and was not written by `geoembed enrich`; "
                         f"remove it or choose another output")
    bundle = load_bundle_cached(bundle_path)  # fail early, before any task starts
    red = None
    if reduction is not None:
        red = Reduction.load(reduction)
        red.check_bundle(bundle.fingerprint, int(bundle.embedding_dim), origin=f"reduction {reduction}")
    weight = None
    if weight_raster is not None:
        w = WeightRaster(weight_raster)
        weight = {"path": str(Path(weight_raster).resolve()), "fingerprint": w.fingerprint()}
        w.close()
    job = {"bundle": bundle.fingerprint, "lon_col": lon_col, "lat_col": lat_col, "on_invalid": on_invalid,
           "reduction": None if red is None else text_fingerprint(red.to_dict()),
           "crs": None if crs is None else str(crs),
           "polygons": {"points_per_polygon": int(points_per_polygon), "seed": int(polygon_seed),
                        "weight_raster": weight}}
    settings = {"lon_col": lon_col, "lat_col": lat_col, "on_invalid": on_invalid, "chunk_rows": chunk_rows,
                "reduction": None if reduction is None else str(Path(reduction).resolve()),
                "embed_batch": embed_batch, "crs": crs, "points_per_polygon": points_per_polygon,
                "polygon_seed": polygon_seed,
                "weight_raster": None if weight_raster is None else str(Path(weight_raster).resolve())}
    staging = output_dir.with_name(f".{output_dir.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(staging)  # parts a killed run was writing
    summary = EnrichSummary(input=str(input_dir), output=str(output_dir), parts=len(parts),
                            out_of_support_km=float(bundle.out_of_support_km))
    report = hy.HygieneReport()
    import dask

    tasks, done = [], 0
    for part in parts:
        prev = _part_done(staging / part.name, part, job)
        if prev is not None:
            _add(summary, report, prev)
            done += 1
            continue
        tasks.append(dask.delayed(enrich_part, pure=False)(
            str(Path(bundle_path).resolve()), str(part.resolve()), str((staging / part.name).resolve()),
            job, settings, dask_key_name=f"enrich-part-{part.name}"))
    if done:
        log.info("%d of %d parts already enriched in %s; skipping them", done, len(parts), staging)
    address = scheduler_address(scheduler)
    local = address in (None, "threads", "processes", "synchronous")
    if local and num_workers is None:
        num_workers = default_workers()
    with torch_threads(1 if local else None):
        results = run_tasks(tasks, scheduler=address, num_workers=num_workers, desc="parts")
    for res in results:
        _add(summary, report, res)
    missing = [p.name for p in parts if not (staging / p.name).is_file()]
    if missing:  # pragma: no cover - a task that returned without writing is a bug
        raise InputError(f"parts {missing[:5]} were not written to {staging}")
    problem = report.verdict(str(input_dir), *(("geometry.x", "geometry.y") if lon_col is None and lat_col is None
                                               and summary.kind == "polygon" else (lon_col or "lon", lat_col or "lat")),
                             HOW_CRS)
    if problem is not None:
        raise InputError(problem)
    remove_stale_temps(staging, any_pid=True)  # every task has finished: nothing in there is being written
    summary.seconds = time.perf_counter() - t0
    write_directory_summary(staging, bundle=bundle, job=job, parts=[p.name for p in parts],
                            totals={"rows": summary.rows, "invalid": summary.invalid,
                                    "by_reason": summary.by_reason, "out_of_support": summary.out_of_support,
                                    "out_of_support_km": summary.out_of_support_km},
                            input_dir=input_dir)
    _replace_folder(staging, output_dir)
    summary.seconds = time.perf_counter() - t0
    log.debug("%s", summary.line())
    return summary


def _add(summary: EnrichSummary, report: hy.HygieneReport, res: dict) -> None:
    """Add one part's totals to the run's summary and its verdict counts to the whole-table report."""
    summary.merge(EnrichSummary(input="", output="", rows=res["rows"], invalid=res["invalid"],
                                by_reason=res.get("by_reason", {}), out_of_support=res["out_of_support"],
                                max_support_km=res.get("max_support_km", 0.0), repaired=res.get("repaired", 0)))
    if res.get("kind") == "polygon":
        summary.kind = "polygon"
    c = res.get("verdict_counts") or {}
    report.add_footprint(c.get("finite", 0), c.get("inside", 0), c.get("swapped_inside", 0))
    report.add_projected(c.get("projected", 0), None)
