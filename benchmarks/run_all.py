"""Run every benchmark at its default size, one after another, printing their figures.

    python benchmarks/run_all.py [--only raster osm pbf enrich train evaluate import]

Each benchmark is a standalone script in this folder; figures go to stdout (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "raster": ["bench_raster.py"],
    "osm": ["bench_osm.py"],
    "pbf": ["bench_pbf.py"],
    "enrich": ["bench_enrich.py"],
    "train": ["bench_train_cpu.py"],
    "evaluate": ["bench_evaluate.py"],
    "import": ["bench_import.py"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES))
    args = parser.parse_args()
    failed = []
    for name, cmd in BENCHES.items():
        if args.only and name not in args.only:
            continue
        print(f"\n=== {name}: python benchmarks/{' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
