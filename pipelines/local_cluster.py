"""Start a local Dask distributed cluster (worker processes) and print its scheduler address.

    python pipelines/local_cluster.py --workers 2 --threads 1
    GEOEMBED_SCHEDULER=<printed address> geoembed build -c configs/demo.yaml
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from distributed import LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--port", type=int, default=0, help="scheduler port (0: any free port)")
    args = parser.parse_args()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                           scheduler_port=args.port, dashboard_address=None)
    print(cluster.scheduler_address, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.close()


if __name__ == "__main__":
    main()
