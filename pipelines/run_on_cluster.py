"""A whole geoembed run (build -> train -> enrich -> evaluate) with the build's Dask tasks on a cluster.

    python pipelines/run_on_cluster.py -c CONFIG --scheduler tcp://HOST:8786   # an existing cluster
    python pipelines/run_on_cluster.py -c CONFIG --local-cluster 2             # a LocalCluster, 2 workers

Same as ``geoembed run -c CONFIG --scheduler ADDR``, plus the option of starting a local distributed
cluster (one process per worker). Every build task opens its inputs by path, so workers need the config's
files at the same paths (a shared file system, or URLs GDAL reads); training and evaluation run in this
process. Each stage is skipped when up to date, so a killed run is resumed by running the same command.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--scheduler", help="distributed scheduler address (else config, env, local threads)")
    parser.add_argument("--local-cluster", type=int, metavar="N",
                        help="start a distributed LocalCluster with N single-threaded worker processes")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from geoembed.config import load_config
    from geoembed.errors import GeoembedError
    from geoembed.run import run_pipeline

    cluster = None
    try:
        cfg = load_config(args.config)
        if args.local_cluster:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=args.local_cluster, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            args.scheduler = cluster.scheduler_address
        if args.scheduler:
            cfg.dask.scheduler = args.scheduler
        results = run_pipeline(cfg, overwrite=args.overwrite)  # prints a header and a line per stage
    except GeoembedError as err:
        print(f"run_on_cluster: error: {err}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.close()
    done = [name for name, r in results.items() if not r.up_to_date]
    print(f"run_on_cluster: {len(results)} stages, {len(done)} run ({', '.join(done) or 'all up to date'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
