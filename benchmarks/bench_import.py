"""Imported GeoCLIP against GeoCLIP's own LocationEncoder: same weights, same rows, one process.

    python benchmarks/bench_import.py                  # 8,192 rows, 3 interleaved rounds
    python benchmarks/bench_import.py --rows 16384 --rounds 5 --profile

Writes the imported bundle once (``geoembed import geoclip``, into benchmarks/out/), loads GeoCLIP's own
encoder from the installed wheel without transformers (:mod:`geoembed.testing.geoclip`) and times, in
turn and repeatedly so that the machine's load hits every variant alike:

* GeoCLIP's own ``LocationEncoder`` on the whole batch, torch at 2 threads (its default here) and at 1;
* the imported bundle through ``Bundle.embed`` (4,096-row blocks) at 2 torch threads and at 1;
* the imported bundle through the enrich path (``Enricher``, 2 worker threads of 1 torch thread each, as
  ``geoembed enrich`` and ``enrich_file`` run it);
* a bare chain of the same matrix products (3 x [512->1024->1024->1024->512] with bias) at 2 threads and 1:
  what dense layers of these shapes reach in the same conditions.

For each it prints rows/s and GFLOP/s of wall time (median and best of the rounds) and GFLOP/s per
CPU-second of the process (all its threads: what the work costs, whatever else runs on the machine), plus
the largest absolute difference between the imported and GeoCLIP's own embeddings over all rows, and
the machine's load average. ``--profile`` adds torch's operator profile of GeoCLIP's own forward pass.
FLOPs count the four matrix products of each branch: 18.87 MFLOP per row.
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
from variants import geoclip_and_enrich_runs, time_variants, torch_threads  # noqa: E402 - benchmarks/variants.py

OUT = ROOT / "benchmarks" / "out"
FLOP_PER_ROW = 3 * 2 * (512 * 1024 + 2 * 1024 * 1024 + 1024 * 512)


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-180, 180, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


def _dense_chain(n: int):
    g = torch.Generator().manual_seed(0)
    dims = [512, 1024, 1024, 1024, 512]
    layers = [[(torch.randn(dims[i + 1], dims[i], generator=g) * 0.03, torch.randn(dims[i + 1], generator=g))
               for i in range(4)] for _ in range(3)]
    h0 = torch.randn(n, 512, generator=g)

    def run():
        for branch in layers:
            h = h0
            for w, b in branch:
                h = torch.addmm(b, h, w.T)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="operator profile of GeoCLIP's own forward")
    args = parser.parse_args()

    from geoembed.importers.geoclip import import_geoclip
    from geoembed.io.bundle import load_bundle

    bundle_dir = OUT / "geoclip_bundle"
    if not (bundle_dir / "geoembed.json").is_file():
        import_geoclip(bundle_dir, overwrite=True)
    bundle = load_bundle(bundle_dir)
    lon, lat = _rows(args.rows, args.seed)
    dense = _dense_chain(args.rows)
    default_threads = torch.get_num_threads()
    with geoclip_and_enrich_runs(bundle, lon, lat) as (own_run, enrich_run):
        variants = {
            f"GeoCLIP own, torch {default_threads} threads": (default_threads, own_run),
            "GeoCLIP own, torch 1 thread": (1, own_run),
            f"imported, Bundle.embed, torch {default_threads} threads": (default_threads,
                                                                          lambda: bundle.embed(lon, lat)),
            "imported, Bundle.embed, torch 1 thread": (1, lambda: bundle.embed(lon, lat)),
            "imported, enrich path (2 workers x 1 thread)": (default_threads, enrich_run),
            f"dense chain same shapes, torch {default_threads} threads": (default_threads, dense),
            "dense chain same shapes, torch 1 thread": (1, dense),
        }
        load0 = os.getloadavg()
        wall, cpu, outs = time_variants(variants, args.rounds)
        load1 = os.getloadavg()

    n = args.rows
    print(f"{n:,} rows, {args.rounds} rounds, {torch.get_num_threads()} torch threads by default, "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"{'variant':52s} {'rows/s med':>10s} {'best':>8s} {'GFLOP/s med':>11s} {'best':>6s} {'GFLOP/cpu-s':>11s}")
    med = {}
    for name in variants:
        w, c = statistics.median(wall[name]), min(cpu[name])
        med[name] = n / w
        print(f"{name:52s} {n / w:10,.0f} {n / min(wall[name]):8,.0f} {FLOP_PER_ROW * n / w / 1e9:11.1f} "
              f"{FLOP_PER_ROW * n / min(wall[name]) / 1e9:6.1f} {FLOP_PER_ROW * n / c / 1e9:11.1f}")
    ref = outs[f"GeoCLIP own, torch {default_threads} threads"]
    for name in ("imported, Bundle.embed, torch 1 thread", "imported, enrich path (2 workers x 1 thread)"):
        print(f"max |imported - own| ({name}): {np.abs(outs[name] - ref).max():.3g}")
    base = med[f"GeoCLIP own, torch {default_threads} threads"]
    print(f"speed-up over GeoCLIP's own (median wall, its default threads): Bundle.embed "
          f"{med[f'imported, Bundle.embed, torch {default_threads} threads'] / base:.2f}x, enrich path "
          f"{med['imported, enrich path (2 workers x 1 thread)'] / base:.2f}x; 1 thread each: "
          f"{med['imported, Bundle.embed, torch 1 thread'] / med['GeoCLIP own, torch 1 thread']:.2f}x")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with torch_threads(1), profile(activities=[ProfilerActivity.CPU]) as prof:
            own_run()
        print("\nGeoCLIP's own forward, 1 thread, by operator:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    return 0


if __name__ == "__main__":
    sys.exit(main())
