"""Thin command line over the library: build | train | enrich | evaluate | run | demo | inspect | import.

Each subcommand lives in its stage's module as ``configure_parser(parser)`` and ``run(args) -> int``,
imported lazily so that ``geoembed --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from geoembed.errors import GeoembedError

COMMANDS: dict[str, tuple[str, str]] = {
    "build": ("geoembed.build", "sample locations and build raster/OSM views (Dask)"),
    "train": ("geoembed.train", "train the multi-view contrastive model and write a bundle"),
    "enrich": ("geoembed.enrich", "add embedding columns to a table with coordinates"),
    "evaluate": ("geoembed.evaluate.command", "compare GLM/GAM/GBM risk models on coordinates and embeddings"),
    "run": ("geoembed.run", "build, train, enrich and evaluate what a config names, each stage when not up to date"),
    "demo": ("geoembed.demo", "run the whole pipeline on the bundled Olinda kit"),
    "inspect": ("geoembed.inspect", "print what an artefact holds"),
    "import": ("geoembed.importers", "write a bundle from a GeoCLIP/SatCLIP encoder (or add a reduction to one)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="geoembed", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse the command name first, then let the stage module define its own arguments.
    known, rest = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if known.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    module = importlib.import_module(COMMANDS[known.command][0])
    cmd_parser = argparse.ArgumentParser(prog=f"geoembed {known.command}",
                                         description=COMMANDS[known.command][1])
    module.configure_parser(cmd_parser)
    args = cmd_parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except GeoembedError as err:
        print(f"geoembed {known.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"geoembed {known.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
