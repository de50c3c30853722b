"""``geoembed evaluate -c CONFIG``: cross-validate GLM/GAM/GBM on coordinates vs embeddings, write a report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed evaluate``."""
    from geoembed.config import add_settings_argument

    parser.add_argument("-c", "--config", required=True, help="YAML config with an 'evaluate:' section")
    add_settings_argument(parser)
    parser.add_argument("-o", "--output", default=None,
                        help="report folder (default: evaluate.output, else <workdir>/evaluation)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow-out-of-support", action="store_true",
                        help="go on when more than evaluate.max_out_of_support_share of the rows lie out of the "
                             "bundle's support (the report then starts with a warning)")


def report_dir(cfg, override: str | None = None) -> Path:
    """Where the report goes: the override, ``evaluate.output``, else ``<workdir>/evaluation``."""
    if override:
        return Path(override)
    if cfg.evaluate.output:
        return Path(cfg.evaluate.output)
    return cfg.workdir_path / "evaluation"


def run(args: argparse.Namespace) -> int:
    """Run the evaluation of ``args.config`` and print the pooled comparison table."""
    from geoembed.config import load_config
    from geoembed.errors import ConfigError
    from geoembed.evaluate.core import make_embedder, run_evaluation, summary_table
    from geoembed.evaluate.report import lift_table, markdown_table, write_report
    from geoembed.evaluate.tables import read_table

    cfg = load_config(args.config, settings=args.settings)
    cfg.require("evaluate")
    ev = cfg.evaluate
    if args.allow_out_of_support:
        ev.allow_out_of_support = True
    if not ev.table:
        raise ConfigError(f"{args.config}: evaluate.table is required (a CSV, Parquet or GeoParquet file)")
    table = read_table(ev.table, ev.lon_col, ev.lat_col)
    uses_emb = any(f in ("embeddings", "both") for f in ev.features)
    embedder = make_embedder(ev) if ev.bundle and uses_emb else None
    result = run_evaluation(table, ev, embedder=embedder, progress=not args.no_progress and sys.stderr.isatty())
    out = write_report(result, report_dir(cfg, args.output), cfg=ev, embedder=embedder,
                       figures=ev.figures and not args.no_figures)
    print(markdown_table(summary_table(result.records)))
    lift = lift_table(result.records, ev)
    if lift is not None:
        print("\nlift over covariates alone (pooled):")
        print(markdown_table(lift))
    print(f"\nreport written to {out} (evaluation.json, report.md, figures)")
    return 0
