"""Sample locations and build every view of a config on Dask (local or distributed).

    python pipelines/build_views.py -c configs/demo.yaml [--scheduler tcp://HOST:8786] [--overwrite]
"""

from __future__ import annotations

import argparse
import logging
import sys

from geoembed.build import build, format_summary
from geoembed.config import load_config
from geoembed.errors import GeoembedError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--scheduler", help="distributed scheduler address (default: config, env, local)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.scheduler:
            cfg.dask.scheduler = args.scheduler
        print(format_summary(build(cfg, overwrite=args.overwrite)))
    except GeoembedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
