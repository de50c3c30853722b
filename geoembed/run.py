"""``geoembed run -c CONFIG``: every stage the config has, in order, each skipped when up to date.

* **build** (``locations`` and ``views``): resumable chunk by chunk; finished stores are kept;
* **train** (``train``): a finished bundle of the same settings and data is kept, a checkpoint resumed;
* **enrich** (``enrich``): the table enriched with the run's bundle (or ``enrich.bundle``); kept while
  the output's metadata records the same bundle, input bytes and settings;
* **evaluate** (``evaluate``): cross-validated models and the report on ``evaluate.table`` (default: the
  enriched output) with the run's bundle; kept while ``<workdir>/run.json`` records the same table,
  bundle, settings and geoembed version for the report that is there.

Each stage prints a header ``[i/n] stage`` and one summary line; the evaluation also prints its pooled
table. The one call into :mod:`geoembed.evaluate` is :func:`evaluate_report` (and
:func:`stored_summary` to show a kept report), so that it is easy to re-point.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from geoembed.config import Config, add_settings_argument, load_config
from geoembed.errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from geoembed.config import EvaluateConfig

log = logging.getLogger(__name__)

__all__ = ["RUN_STATE", "StageResult", "configure_parser", "evaluate_report", "run", "run_pipeline", "stages",
           "stored_summary"]

RUN_STATE = "run.json"  # <workdir>/run.json: what the last evaluation of `geoembed run` was made from
BUNDLE_DIR = "bundle"
_RUN_KEY = "geoembed_run"  # the enriched table's metadata key for what `geoembed run` enriched


@dataclass
class StageResult:
    """One stage of a run: ``up_to_date`` when nothing was redone; ``line`` its summary line;
    ``outputs`` its artefacts (paths, and ``pooled``: the evaluation's pooled table)."""

    stage: str
    up_to_date: bool
    line: str
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)


def stages(cfg: Config) -> list[str]:
    """The stages ``cfg`` has sections for, in run order."""
    out = ["build"] if cfg.locations is not None and cfg.views else []
    return out + [s for s in ("train", "enrich", "evaluate") if getattr(cfg, s) is not None]


# --------------------------------------------------------------------------- the evaluation calls
def evaluate_report(ev: EvaluateConfig, table: Path, bundle: Path | None, out: Path) -> tuple[Path, pd.DataFrame]:
    """Cross-validate ``ev``'s models on ``table`` (embeddings from ``bundle`` where one is given),
    write the report folder ``out``; returns it and the pooled table (one row per model x features)."""
    from geoembed.enrich import LocationEmbedder
    from geoembed.evaluate.core import run_evaluation, summary_table
    from geoembed.evaluate.report import write_report
    from geoembed.evaluate.tables import read_table

    ev = ev.model_copy(update={"table": str(table), "bundle": None if bundle is None else str(bundle)})
    data = read_table(table, ev.lon_col, ev.lat_col)
    embedder = None if bundle is None else LocationEmbedder(bundle=str(bundle), lon_col=ev.lon_col,
                                                            lat_col=ev.lat_col)
    result = run_evaluation(data, ev, embedder=embedder)
    report = write_report(result, out, cfg=ev, embedder=embedder, figures=ev.figures)
    return Path(report), summary_table(result.records)


def stored_summary(report: Path) -> pd.DataFrame:
    """The pooled table of a report folder written by :func:`evaluate_report`."""
    import pandas as pd

    from geoembed.evaluate.core import summary_table

    return summary_table(pd.DataFrame(json.loads((report / "evaluation.json").read_text())))


# --------------------------------------------------------------------------- stages
def _build(cfg: Config, overwrite: bool, echo: Callable[[str], None]) -> StageResult:
    from geoembed.build import build, format_summary

    summary = build(cfg, overwrite=overwrite)
    views = summary["views"]
    computed = sum(v["computed_chunks"] for v in views.values())
    fresh = summary["locations"]["rebuilt"] or computed > 0
    if fresh:
        echo(format_summary(summary))
    what = (f"{summary['locations']['kept']} locations; "
            + ", ".join(f"{n} ({v['valid']} of {v['rows']} valid)" for n, v in views.items()))
    line = f"{computed} chunks computed: {what}" if fresh else f"up to date: {what}"
    return StageResult("build", not fresh, line, outputs={"workdir": summary["workdir"]})


def _train(cfg: Config, overwrite: bool, echo: Callable[[str], None]) -> StageResult:
    from geoembed.train import train

    summary = train(cfg, overwrite=overwrite)
    bundle = summary["bundle"]
    if summary.get("stopped") == "up_to_date":
        return StageResult("train", True, f"up to date: bundle {bundle}", outputs={"bundle": bundle})
    m = summary["metrics"]
    top5 = m.get("val_top5")
    diag = m.get("diagnostics")
    if diag:
        from geoembed.train.diagnostics import format_diagnostics

        echo(format_diagnostics(diag))
    from geoembed.train.ensemble import members_note as _members

    line = (f"{summary['epochs_run']} epochs{_members(summary)} ({summary['stopped']}), best epoch {m['best_epoch']}"
            + (f", val top-5 {top5:.3f}" if top5 is not None else "")
            + (f", verdict {diag['verdict']}" if diag else "") + f" -> {bundle}")
    return StageResult("train", False, line, outputs={"bundle": bundle})


def _run_bundle(cfg: Config, explicit: str | None, trained: str | None) -> Path | None:
    """The bundle a stage uses: its own setting, else the one the train stage wrote (or would write),
    else none."""
    if explicit:
        return Path(explicit)
    if trained:
        return Path(trained)
    return cfg.workdir_path / BUNDLE_DIR if cfg.train is not None else None


def enrich_output(cfg: Config) -> Path:
    """Where the enrich stage writes: ``enrich.output``, else ``<workdir>/enriched/<input name>``."""
    ec = cfg.enrich
    assert ec is not None
    return Path(ec.output) if ec.output else cfg.workdir_path / "enriched" / Path(ec.input).name


def _enrich(cfg: Config, bundle: Path, overwrite: bool) -> StageResult:
    from geoembed.enrich.driver import enrich_file
    from geoembed.enrich.enricher import load_bundle_cached
    from geoembed.io.enriched import read_enrich_metadata
    from geoembed.io.fingerprint import file_fingerprint, text_fingerprint

    ec = cfg.enrich
    src, out = Path(ec.input), enrich_output(cfg)
    if not src.is_file():
        raise InputError(f"enrich.input {src} does not exist (a CSV, Parquet or GeoParquet file)")
    meta = None
    if out.exists():
        try:
            meta = read_enrich_metadata(out)
        except (InputError, OSError, ValueError):
            if not overwrite:
                raise InputError(f"enrich.output {out} exists and is not a table written by geoembed; choose "
                                 "another enrich.output, remove it, or pass --overwrite") from None
    loaded = load_bundle_cached(bundle)
    job = text_fingerprint({"input": file_fingerprint(src), "lon_col": ec.lon_col, "lat_col": ec.lat_col,
                            "on_invalid": ec.on_invalid})
    if meta and meta.get("bundle", {}).get("fingerprint") == loaded.fingerprint and \
            meta.get(_RUN_KEY, {}).get("job") == job and "summary" in meta:
        rows = meta["summary"].get("rows")
        return StageResult("enrich", True, f"up to date: {rows:,} rows -> {out}", outputs={"table": str(out)})
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = enrich_file(loaded, src, out, lon_col=ec.lon_col, lat_col=ec.lat_col, on_invalid=ec.on_invalid,
                          extra_meta={_RUN_KEY: {"job": job}})
    return StageResult("enrich", False, summary.line(), outputs={"table": str(out)})


def _read_state(workdir: Path) -> dict:
    try:
        state = json.loads((workdir / RUN_STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _evaluate(cfg: Config, table: Path, bundle: Path | None, echo: Callable[[str], None]) -> StageResult:
    from geoembed.evaluate.report import markdown_table
    from geoembed.io.atomic import atomic_write_json
    from geoembed.io.fingerprint import file_fingerprint, text_fingerprint
    from geoembed.version import __version__

    ev = cfg.evaluate
    out = Path(ev.output) if ev.output else cfg.workdir_path / "evaluation"
    if not table.is_file():
        raise InputError(f"evaluate.table {table} does not exist")
    bundle_fp = None
    if bundle is not None:
        from geoembed.enrich.enricher import load_bundle_cached

        bundle_fp = load_bundle_cached(bundle).fingerprint
    sets = {}
    for name, es in ev.embedding_sets.items():  # named embedding sets from bundles: a changed one is stale
        if es.bundle is not None and name in ev.features:
            from geoembed.enrich.enricher import load_bundle_cached

            sets[name] = load_bundle_cached(es.bundle).fingerprint
    job = text_fingerprint({"evaluate": ev.model_dump(mode="json"), "table": file_fingerprint(table),
                            "bundle": bundle_fp, "report": str(out.resolve()), "version": __version__,
                            **({"embedding_sets": sets} if sets else {})})
    done = _read_state(cfg.workdir_path).get("evaluate", {})
    results = out / "evaluation.json"
    if done.get("job") == job and results.is_file() and done.get("results") == file_fingerprint(results):
        pooled = stored_summary(out)
        echo(markdown_table(pooled))
        return StageResult("evaluate", True, f"up to date: report {out}", outputs={"report": str(out),
                                                                                  "pooled": pooled})
    report, pooled = evaluate_report(ev, table, bundle, out)
    atomic_write_json(cfg.workdir_path / RUN_STATE, {
        **_read_state(cfg.workdir_path),
        "evaluate": {"job": job, "report": str(report), "results": file_fingerprint(report / "evaluation.json")}})
    echo(markdown_table(pooled))
    held = "report.md, evaluation.json" + (", figures" if ev.figures else "")
    return StageResult("evaluate", False, f"report -> {report} ({held})", outputs={"report": str(report),
                                                                                  "pooled": pooled})


_TITLES = {"build": "build: locations and views", "train": "train: the contrastive model and its bundle",
           "enrich": "enrich: embedding columns for a table", "evaluate": "evaluate: models and the report"}


def run_pipeline(cfg: Config, *, overwrite: bool = False, echo: Callable[[str], None] = print) -> dict[str, StageResult]:
    """Run every stage ``cfg`` has (:func:`stages`), each skipped when up to date; returns the stages'
    results by name. ``overwrite`` rebuilds the build and train artefacts made from other settings
    (and replaces an ``enrich.output`` that geoembed did not write) instead of stopping."""
    todo = stages(cfg)
    if not todo:
        raise ConfigError("the config has no stage to run: give locations and views (build), train, enrich or "
                          "evaluate")
    if "evaluate" in todo and not cfg.evaluate.table and cfg.enrich is None:
        raise ConfigError("evaluate.table is required (or an enrich section, whose output is evaluated)")
    if "enrich" in todo and not cfg.enrich.bundle and cfg.train is None:
        raise ConfigError("enrich needs a bundle: give enrich.bundle, or a train section (the run's bundle)")
    results: dict[str, StageResult] = {}
    cfg.workdir_path.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(todo, 1):
        echo(f"[{i}/{len(todo)}] {_TITLES[stage]}")
        t = time.perf_counter()
        trained = results["train"].outputs["bundle"] if "train" in results else None
        if stage == "build":
            res = _build(cfg, overwrite, echo)
        elif stage == "train":
            res = _train(cfg, overwrite, echo)
        elif stage == "enrich":
            res = _enrich(cfg, _run_bundle(cfg, cfg.enrich.bundle, trained), overwrite)
        else:
            table = Path(cfg.evaluate.table) if cfg.evaluate.table else enrich_output(cfg)
            explicit = cfg.evaluate.bundle or (cfg.enrich.bundle if cfg.enrich else None)
            res = _evaluate(cfg, table, _run_bundle(cfg, explicit, trained), echo)
        res.seconds = time.perf_counter() - t
        echo(f"{stage}: {res.line} [{res.seconds:.1f} s]")
        results[stage] = res
    return results


# --------------------------------------------------------------------------- command line
def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed run``."""
    parser.add_argument("-c", "--config", required=True,
                        help="YAML config: its locations/views, train, enrich and evaluate sections are run in order")
    add_settings_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild artefacts made from other settings instead of stopping")
    parser.add_argument("--scheduler", help="Dask distributed scheduler address for the build (overrides config/env)")


def run(args: argparse.Namespace) -> int:
    """``geoembed run -c CONFIG``."""
    cfg = load_config(args.config, settings=args.settings)
    if args.scheduler:
        cfg.dask.scheduler = args.scheduler
    t = time.perf_counter()
    results = run_pipeline(cfg, overwrite=args.overwrite)
    skipped = [s for s, r in results.items() if r.up_to_date]
    print(f"run finished in {time.perf_counter() - t:.0f} s"
          + (f"; up to date: {', '.join(skipped)}" if skipped else ""))
    return 0
