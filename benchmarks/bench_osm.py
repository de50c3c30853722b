"""Benchmark of the OSM view: H3 hex tensor + radius aggregates (+ capped distances, timed separately)
for many locations over a synthetic city.

Features (geoembed.testing.osm.synthetic_features): by default 94% points (supermarkets, restaurants,
cafes, hotels, pharmacies, schools, post offices, fire stations, benches; half uniform, half in
Gaussian clusters), 3% lines (2-5 vertex roads/streams of 50-400 m) and 3% polygons (90% 10-40 m
buildings, the rest 100-600 m parks / residential land / water), uniform over a square city of
``--extent-m``; locations uniform over the same square. Work runs through
geoembed.runtime.run_tasks (local processes by default, as the build driver for large local runs; or
``--scheduler threads``) over chunks of ``--chunk-size`` locations, calling the same per-chunk function
as the OSM view's build (geoembed.views.driver.build_view_store).

    .venv/bin/python benchmarks/bench_osm.py --n-locations 1000000 --n-features 1000000
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _chunk(prep, x, y, lon, lat, parts) -> int:
    from geoembed.views.driver import load_prepared
    from geoembed.views.osm import compute_osm_chunk
    from geoembed.views.osm_geom import tune_malloc

    tune_malloc()  # as the OSM view's chunks
    if isinstance(prep, str):  # worker process: read the prepared features once from the file
        prep = load_prepared(prep)
    return int(compute_osm_chunk(prep, x, y, lon, lat, parts=parts)["valid"].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-locations", type=int, default=1_000_000)
    ap.add_argument("--n-features", type=int, default=1_000_000)
    ap.add_argument("--line-frac", type=float, default=0.03)
    ap.add_argument("--polygon-frac", type=float, default=0.03)
    ap.add_argument("--extent-m", type=float, default=20_000.0, help="side of the square city (m)")
    ap.add_argument("--radii", type=float, nargs="+", default=[250.0, 1000.0])
    ap.add_argument("--h3-resolution", type=int, default=9)
    ap.add_argument("--max-distance", type=float, default=5000.0)
    ap.add_argument("--chunk-size", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", choices=["processes", "threads"], default="processes",
                    help="local Dask scheduler (the build uses processes for large local OSM runs)")
    ap.add_argument("--no-distance", action="store_true", help="skip the distance timing")
    ap.add_argument("--order", choices=["random", "spatial"], default="random",
                    help="location order: random (every chunk spans the city: the worst case) or spatial "
                         "(Z-curve, as the locations stage writes them: chunks are compact)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import dask
    from pyproj import Transformer

    from geoembed.geo import utm_crs as metric_crs
    from geoembed.runtime import run_tasks
    from geoembed.testing.osm import synthetic_features
    from geoembed.views.driver import save_prepared
    from geoembed.views.osm import prepare_osm
    from geoembed.views.osm_catalogue import load_catalogue

    os.environ.setdefault("GEOEMBED_NO_PROGRESS", "1")
    centre = (24.94, 60.19)
    n_lines = int(args.n_features * args.line_frac)
    n_polys = int(args.n_features * args.polygon_frac)
    n_pts = args.n_features - n_lines - n_polys
    t = time.perf_counter()
    feats = synthetic_features(n_pts, n_lines, n_polys, centre=centre, extent_m=args.extent_m, seed=args.seed)
    tid = feats.geometry.geom_type.map({"Point": "point", "LineString": "line", "Polygon": "polygon"})
    feats["gtype"] = tid.to_numpy()
    t_gen = time.perf_counter() - t

    rng = np.random.default_rng(args.seed + 1)
    half = args.extent_m / 2
    lx = rng.uniform(-half, half, args.n_locations)
    ly = rng.uniform(-half, half, args.n_locations)
    lon = centre[0] + lx / (111_320 * np.cos(np.radians(centre[1])))
    lat = centre[1] + ly / 111_320
    if args.order == "spatial":
        from geoembed.geo import morton_order

        o = morton_order(lon, lat)
        lon, lat = lon[o], lat[o]
    crs = metric_crs(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)

    cat = load_catalogue()
    t = time.perf_counter()
    prep = prepare_osm(feats, cat, crs, h3_resolution=args.h3_resolution, radii_m=args.radii,
                       max_distance_m=args.max_distance)
    t_prep = time.perf_counter() - t
    print(f"features: {n_pts:,} points, {n_lines:,} lines, {n_polys:,} polygons over "
          f"{args.extent_m / 1000:.0f} x {args.extent_m / 1000:.0f} km (generated in {t_gen:.1f} s); "
          f"{args.n_locations:,} locations in {args.order} order; radii {args.radii} m; H3 res {args.h3_resolution}")
    print(f"primitives: {len(prep.counts.data):,} count points, "
          f"{len(prep.lengths.data):,} segments, {len(prep.areas.data):,} polygon edges "
          f"(grid cells: counts {prep.counts.cell:.1f} m, lines/polygons {prep.areas.cell:.1f} m "
          f"with reach {prep.areas.h:.1f} m)")
    print(f"prepare (categorise, project, index, H3 of features): {t_prep:.1f} s", flush=True)

    tmpdir = tempfile.TemporaryDirectory(prefix="bench_osm_")
    if args.scheduler == "processes":  # as the build driver: ship the prepared features once, as a file
        t = time.perf_counter()
        prep_d = str(save_prepared(prep, Path(tmpdir.name) / "prepared.pkl"))
        print(f"prepared features saved for worker processes in {time.perf_counter() - t:.1f} s", flush=True)
    else:
        prep_d = dask.delayed(prep, traverse=False)
    bounds = [(a, min(a + args.chunk_size, args.n_locations)) for a in range(0, args.n_locations, args.chunk_size)]

    def run(parts: tuple[str, ...]) -> tuple[float, float]:
        tasks = [dask.delayed(_chunk, pure=False)(prep_d, x[a:b], y[a:b], lon[a:b], lat[a:b], parts)
                 for a, b in bounds]
        t0, c0 = time.perf_counter(), _cpu_seconds()
        run_tasks(tasks, scheduler=args.scheduler, num_workers=args.workers, desc="chunks")
        return time.perf_counter() - t0, _cpu_seconds() - c0

    # wall time on `--workers` threads or processes, and CPU seconds of this process and its finished
    # worker processes (robust on a shared box; each run's process pool ends with the run). Worker
    # start-up (imports, reading the prepared features) counts in both.
    t_hex, c_hex = run(("hex",))
    t_rad, c_rad = run(("radius",))
    print(f"hex tensor: {t_hex:.1f} s wall, {c_hex:.1f} s CPU ({args.n_locations / t_hex:,.0f} loc/s)", flush=True)
    print(f"radius aggregates: {t_rad:.1f} s wall, {c_rad:.1f} s CPU ({args.n_locations / t_rad:,.0f} loc/s)", flush=True)
    print(f"hex + radius: {t_hex + t_rad:.1f} s wall, {c_hex + c_rad:.1f} s CPU on {args.workers} {args.scheduler}", flush=True)
    if not args.no_distance:
        t_dist, c_dist = run(("distance",))
        print(f"distances ({len(cat.names)} categories): {t_dist:.1f} s wall, {c_dist:.1f} s CPU "
              f"({args.n_locations / t_dist:,.0f} loc/s)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (machine cores: {os.cpu_count()})", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the driver: {rss:,.0f} MiB", flush=True)  # (a worker holds one prepared copy)
    tmpdir.cleanup()


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process plus its waited-for child processes."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


if __name__ == "__main__":
    main()
