"""The demo's distilled bundle against GeoCLIP's own LocationEncoder: same rows, one process.

    python benchmarks/bench_distilled.py                       # 32,768 rows in the Olinda scene, 3 rounds
    python benchmarks/bench_distilled.py --bundle runs/demo_distilled/bundle --rows 65536 --rounds 5

The distilled bundle is the one ``geoembed demo`` trains (GeoCLIP as a teacher view + Landsat + DEM,
``configs/demo_distilled.yaml``); run the demo first. GeoCLIP's own encoder is loaded from the installed
wheel without transformers (:mod:`geoembed.testing.geoclip`). The rows are drawn uniformly in the Olinda
Landsat scene (the distilled bundle's support; GeoCLIP's cost does not depend on where the rows are).
Variants, timed in turn and repeatedly so that the machine's load hits each alike:

* GeoCLIP's own ``LocationEncoder`` on the whole batch, torch at its default threads (2 here) and at 1;
* the distilled bundle through ``Bundle.embed`` at the default threads and at 1;
* the distilled bundle through the enrich path (``Enricher``, 2 workers of 1 torch thread each, as
  ``geoembed enrich`` runs it).

A fast variant is repeated within a round until it has run 0.5 s, and its time per call is the mean of
those calls. Printed: rows/s (median and best round), rows per CPU-second of the process (all threads:
what the work costs, whatever else runs on the machine), the speed-ups over GeoCLIP's own encoder
(median wall at the default threads; per CPU-second), and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from variants import geoclip_and_enrich_runs, time_variants  # noqa: E402 - benchmarks/variants.py

DEFAULT_BUNDLE = ROOT / "runs" / "demo_distilled" / "bundle"
MIN_SECONDS = 0.5
TARGET = 100.0  # issue 11, item 8: at least 100x faster than GeoCLIP's own encoder


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from geoembed.testing.bundles import OLINDA_BOX

    x0, y0, x1, y1 = OLINDA_BOX.bounds
    rng = np.random.default_rng(seed)
    return rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="the distilled bundle (geoembed demo's)")
    parser.add_argument("--rows", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from geoembed.io.bundle import load_bundle

    if not (Path(args.bundle) / "geoembed.json").is_file():
        print(f"no bundle at {args.bundle}: run `geoembed demo` (or `make demo`) first", file=sys.stderr)
        return 2
    bundle = load_bundle(args.bundle)
    lon, lat = _rows(args.rows, args.seed)
    nt = torch.get_num_threads()
    own_name = f"GeoCLIP own, torch {nt} threads"
    dist_name = f"distilled, Bundle.embed, torch {nt} threads"
    with geoclip_and_enrich_runs(bundle, lon, lat) as (own_run, enrich_run):
        variants = {
            own_name: (nt, own_run),
            "GeoCLIP own, torch 1 thread": (1, own_run),
            dist_name: (nt, lambda: bundle.embed(lon, lat)),
            "distilled, Bundle.embed, torch 1 thread": (1, lambda: bundle.embed(lon, lat)),
            "distilled, enrich path (2 workers x 1 thread)": (nt, enrich_run),
        }
        load0 = os.getloadavg()
        wall, cpu, last = time_variants(variants, args.rounds, MIN_SECONDS)
        shapes = {name: np.asarray(res).shape for name, res in last.items()}
        load1 = os.getloadavg()

    n = args.rows
    print(f"{n:,} rows in the Olinda scene, {args.rounds} rounds, {nt} torch threads by default, "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"distilled bundle {args.bundle}: {bundle.embedding_dim}-d; GeoCLIP's own encoder: "
          f"{shapes[own_name][1]}-d")
    print(f"{'variant':48s} {'rows/s med':>12s} {'best':>12s} {'rows/cpu-s':>12s}")
    med, per_cpu = {}, {}
    for name in variants:
        med[name] = n / statistics.median(wall[name])
        per_cpu[name] = n / min(cpu[name]) if min(cpu[name]) > 0 else float("nan")
        print(f"{name:48s} {med[name]:12,.0f} {n / min(wall[name]):12,.0f} {per_cpu[name]:12,.0f}")
    base, base_cpu = med[own_name], per_cpu[own_name]
    for name in (dist_name, "distilled, Bundle.embed, torch 1 thread", "distilled, enrich path (2 workers x 1 thread)"):
        ratio = med[name] / base
        print(f"{name}: {ratio:,.0f}x GeoCLIP's own (median wall, its default threads), "
              f"{per_cpu[name] / base_cpu:,.0f}x per CPU-second; target >= {TARGET:.0f}x: "
              f"{'met' if ratio >= TARGET else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
