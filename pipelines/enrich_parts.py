"""Dask pipeline: enrich a folder of Parquet parts (a table larger than one machine) part by part.

    python pipelines/enrich_parts.py --bundle runs/demo/bundle --input policies/ --output enriched/
    python pipelines/enrich_parts.py ... --scheduler tcp://10.0.0.5:8786     # an existing cluster
    GEOEMBED_SCHEDULER=tcp://10.0.0.5:8786 python pipelines/enrich_parts.py ...
    python pipelines/enrich_parts.py ... --local-cluster 4                    # a LocalCluster, 4 workers

One task per part (``geoembed.enrich.parts.enrich_part``); each writes its own output part atomically
into ``.OUT.partial/``, which becomes ``OUT`` only when every part is done, so a killed run leaves no
complete-looking output and a rerun skips the parts already written. Workers must see the bundle, input
and output paths (a shared file system). Same as ``geoembed enrich --input DIR``, plus the option of
starting a local distributed cluster (one process per worker, one torch thread per task).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="model bundle folder")
    parser.add_argument("--input", required=True, help="folder of .parquet parts")
    parser.add_argument("--output", required=True, help="output folder (parts with the same names)")
    parser.add_argument("--lon-col", default=None)
    parser.add_argument("--lat-col", default=None)
    parser.add_argument("--on-invalid", choices=("error", "null"), default="error")
    parser.add_argument("--chunk-rows", type=int, default=262_144)
    parser.add_argument("--reduction", default=None, help="reduction JSON (geoembed enrich fit-reduction)")
    parser.add_argument("--scheduler", default=None, help="distributed scheduler address (else env "
                                                          "GEOEMBED_SCHEDULER, else local threads)")
    parser.add_argument("--local-cluster", type=int, default=None, metavar="N",
                        help="start a distributed LocalCluster with N single-threaded worker processes")
    args = parser.parse_args(argv)

    from geoembed.enrich.parts import enrich_directory
    from geoembed.errors import GeoembedError

    cluster = None
    scheduler = args.scheduler
    try:
        if args.local_cluster:
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=args.local_cluster, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            scheduler = cluster.scheduler_address
        summary = enrich_directory(args.bundle, args.input, args.output, lon_col=args.lon_col,
                                   lat_col=args.lat_col, on_invalid=args.on_invalid,
                                   chunk_rows=args.chunk_rows, reduction=args.reduction, scheduler=scheduler)
    except GeoembedError as err:
        print(f"enrich_parts: error: {err}", file=sys.stderr)
        return 1
    finally:
        if cluster is not None:
            cluster.close()
    print(f"{summary.line()} ({summary.parts} parts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
