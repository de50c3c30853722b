"""Benchmark of the one-pass .osm.pbf reader: read + categorise a synthetic country-size extract.

The extract (geoembed.testing.osm_pbf.write_synthetic_pbf) has ``--n-objects`` OSM objects (default
10.2 million: 85% nodes, 14% ways, 0.4% relations) over a 200 x 200 km square: buildings, roads,
railways / fences / power lines, land-use and water polygons, multipolygon relations (1% broken),
bus routes and tagged points, a minority of them in catalogue categories. It is written once with
pyosmium and cached in ``--cache-dir`` (default ``$GEOEMBED_BENCH_CACHE`` or the system temp folder
``geoembed_bench/``); reruns reuse it.

The timed part runs in a fresh child process, so that its peak RSS is the reader's own: the
libosmium reader (``read_osm_features``, as the OSM view calls it) and the catalogue's categorisation
(``Catalogue.match``). Wall and CPU seconds (user + system of all its threads) and peak RSS are
printed, with the load average before and after (the box is shared). Targets: at most 120 s on
2 cores, at most 4 GB.

    .venv/bin/python benchmarks/bench_pbf.py                 # 10.2 M objects
    .venv/bin/python benchmarks/bench_pbf.py --reader gdal   # the GDAL fallback, for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENERATOR_VERSION = 1  # bump when write_synthetic_pbf changes what it writes


def _child(path: str, reader: str) -> None:
    """Read + categorise ``path``; print one JSON line of timings, counts and peak RSS."""
    import logging

    import numpy as np

    from geoembed.views.osm_catalogue import load_catalogue
    from geoembed.views.osm_read import read_osm_features

    logging.basicConfig(level=logging.INFO, format="  %(message)s", stream=sys.stderr)
    cat = load_catalogue()
    t0, c0 = time.perf_counter(), time.process_time()
    feats = read_osm_features(path, cat.keys, catalogue=cat, reader=reader)  # as build_osm_view reads
    t1, c1 = time.perf_counter(), time.process_time()
    member = cat.match(feats, feats["gtype"].to_numpy())
    t2, c2 = time.perf_counter(), time.process_time()
    used = member.any(1)
    print(json.dumps({
        "read_wall": t1 - t0, "read_cpu": c1 - c0, "cat_wall": t2 - t1, "cat_cpu": c2 - c1,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "features": len(feats), "categorised": int(used.sum()),
        "gtype": feats["gtype"].value_counts().to_dict(),
        "per_category": dict(zip(cat.names, member.sum(0).tolist(), strict=True)),
        "pairs": int(np.count_nonzero(member)),
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-objects", type=int, default=10_200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.environ.get("GEOEMBED_BENCH_CACHE")
                    or str(Path(tempfile.gettempdir()) / "geoembed_bench"))
    ap.add_argument("--reader", choices=["osmium", "gdal"], default="osmium")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.reader)
        return

    from geoembed.testing.osm_pbf import write_synthetic_pbf

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"synthetic_{args.n_objects}_s{args.seed}_v{GENERATOR_VERSION}.osm.pbf"
    counts_file = path.with_suffix(".json")
    if path.is_file() and counts_file.is_file():
        counts = json.loads(counts_file.read_text())
        print(f"cached extract {path}", flush=True)
    else:
        t = time.perf_counter()
        counts = write_synthetic_pbf(path, args.n_objects, seed=args.seed)
        counts_file.write_text(json.dumps(counts))
        print(f"generated {path} in {time.perf_counter() - t:.1f} s", flush=True)
    print(f"extract: {counts['total']:,} objects ({counts['nodes']:,} nodes, {counts['ways']:,} ways, "
          f"{counts['relations']:,} relations), {path.stat().st_size / 2**20:.0f} MiB", flush=True)

    load0 = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--reader", args.reader],
                          capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - t
    load1 = os.getloadavg()
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"reader process failed ({proc.returncode})")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"reader: {args.reader}; features read {r['features']:,} ({r['gtype']}), "
          f"{r['categorised']:,} in a category ({r['pairs']:,} feature-category pairs)")
    print(f"read: {r['read_wall']:.1f} s wall, {r['read_cpu']:.1f} s CPU; categorise: {r['cat_wall']:.1f} s wall, "
          f"{r['cat_cpu']:.1f} s CPU")
    print(f"**read + categorise: {r['read_wall'] + r['cat_wall']:.1f} s wall, "
          f"{r['read_cpu'] + r['cat_cpu']:.1f} s CPU** (child process in all, with imports: {wall:.1f} s wall, "
          f"{ru.ru_utime + ru.ru_stime:.1f} s CPU)")
    print(f"peak RSS of the reading process: {r['rss_mib']:,.0f} MiB")
    print(f"load average before / after: {load0[0]:.2f} / {load1[0]:.2f} (cores: {os.cpu_count()})", flush=True)


if __name__ == "__main__":
    main()
