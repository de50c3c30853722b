"""``geoembed train -c CONFIG``: the command line of the train stage (arguments and the run)."""

from __future__ import annotations

import argparse

from geoembed.config import add_settings_argument, load_config
from geoembed.train.diagnostics import format_diagnostics
from geoembed.train.ensemble import members_note as _members
from geoembed.train.loop import train

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed train``."""
    parser.add_argument("-c", "--config", required=True, help="YAML config with a train section")
    add_settings_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="discard a checkpoint from a run with other settings and start again")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def run(args: argparse.Namespace) -> int:
    """``geoembed train -c CONFIG``: train and write ``<workdir>/bundle``."""
    cfg = load_config(args.config, settings=args.settings)
    cfg.require("train")
    summary = train(cfg, resume=not args.no_resume, overwrite=args.overwrite)
    if summary.get("stopped") == "up_to_date":
        print(f"bundle {summary['bundle']} is up to date with these settings and data: nothing to train")
        diag = summary["metrics"].get("diagnostics")
        if diag:  # what the run that wrote it concluded
            print(format_diagnostics(diag))
        return 0
    if "bundle" in summary:
        m = summary["metrics"]
        print(f"trained {summary['epochs_run']} epochs{_members(summary)} ({summary['stopped']}); best epoch {m['best_epoch']}: "
              f"val loss {m['best_val_loss']:.4f}, top-1 {m.get('val_top1') or float('nan'):.3f}, "
              f"top-5 {m.get('val_top5') or float('nan'):.3f} (chance {m.get('chance_top1') or float('nan'):.4f})")
        if m.get("diagnostics"):
            print(format_diagnostics(m["diagnostics"]))
        print(f"bundle: {summary['bundle']}")
    return 0
