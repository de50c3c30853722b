"""Raster view throughput: chips for N locations vs reading the whole raster once.

    .venv/bin/python benchmarks/bench_raster.py                 # 10k x 10k x 3 uint8, 100k locations
    .venv/bin/python benchmarks/bench_raster.py --n 20000 --size 4000

Builds (once, cached in benchmarks/out/) a tiled, DEFLATE-compressed uint8 GeoTIFF in UTM 33N at
10 m, then prints:

* the I/O bound: reading every pixel once, strip by strip, on ``--workers`` threads (the best of
  four reads: GDAL's default block cache and a 32 MB one, twice each);
* chips for ``--n`` random locations (Hilbert-sorted, as the sampler writes them), chip 16, native
  resolution, default resampling (bilinear), through the chunk function ``extract_chips`` over the
  view's chunks on ``--workers`` threads, ``--rounds`` times in one process; each round starts cold
  (no decoded block kept, no open raster handle) and is timed next to its own I/O bound (same
  minute, same process), so that the ratio is not skewed by the box's speed drifting (10-30% from
  minute to minute on a shared 2-core VM). The first round also pays the process's one-off costs
  (first touch of the block store and chip buffers: page faults); later rounds are the steady state
  of a long build;
* ``build_view_store`` (a raster view) end to end with the local threaded scheduler (reads, sampling, zarr writes,
  stats, the sources' sha256) in a fresh process;
* the ratios to the I/O bound, and the peak RSS of a fresh process for ``--n-small`` and ``--n``
  locations (memory is bounded by the chunk size, not by N);
* the one-off cost per process of loading the compiled chip kernel (numba, cached on disk after
  the first compilation), timed before the runs and printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RES = 10.0
ORIGIN = (400_000.0, 6_000_000.0)


def raster_path(size: int) -> Path:
    return OUT / f"bench_{size}x{size}x3_uint8.tif"


def make_raster(size: int) -> Path:
    from geoembed.testing.rasters import large_uint8_raster

    path = raster_path(size)
    t = time.perf_counter()
    existed = path.exists()
    large_uint8_raster(path, size=size, bands=3, origin=ORIGIN, res=RES)
    if not existed:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
    return path


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def read_all(path: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds to read every pixel of every band once (512-row strips, ``workers`` threads)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        height, width = ds.height, ds.width

    def strip(y0: int) -> int:
        with rasterio.open(path) as ds:
            a = ds.read(window=Window(0, y0, width, min(512, height - y0)))
        return int(a[0, 0, 0])

    t, c = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(strip, range(0, height, 512)))
    return time.perf_counter() - t, cpu_seconds() - c


def locations(n: int, size: int, chip: int, seed: int = 0):
    import pyproj

    from geoembed.geo import hilbert_order as spatial_order
    from geoembed.io.locations import make_locations

    rng = np.random.default_rng(seed)
    m = chip  # keep chips inside the raster
    x = ORIGIN[0] + rng.uniform(m, size - m, n) * RES
    y = ORIGIN[1] - rng.uniform(m, size - m, n) * RES
    lon, lat = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    lon, lat = np.asarray(lon), np.asarray(lat)
    o = spatial_order(lon, lat)
    return make_locations(np.arange(n), lon[o], lat[o])


def child(args) -> dict:
    """One measurement in this (fresh) process: build, or the chunk function alone."""
    from geoembed.config.build import DaskConfig, RasterViewConfig
    from geoembed.views.driver import build_view_store
    from geoembed.views.raster import RasterSource, block_read_env, extract_chips, raster_chunk_rows

    path = raster_path(args.size)
    locs = locations(args.n, args.size, args.chip)
    cfg = RasterViewConfig(name="bench", sources=[str(path)], chip_size=args.chip, resolution_m=RES,
                           **({"resampling": args.resampling} if args.resampling else {}))
    dcfg = DaskConfig(scheduler="threads", num_workers=args.workers, chunk_size=args.chunk_size)
    import psutil

    res: dict = {"n": args.n, "rss_before_mb": psutil.Process().memory_info().rss / 2**20}
    # one-off per process: load the compiled chip kernel (numba; compiled on the first run ever)
    t = time.perf_counter()
    extract_chips([RasterSource(str(path))], locs["lon"].to_numpy()[:1], locs["lat"].to_numpy()[:1],
                  chip_size=args.chip, resolution_m=RES)
    res["warmup_s"] = time.perf_counter() - t
    from geoembed.io.tilecache import tile_cache

    tile_cache().clear()
    if args.mode == "build":
        out = OUT / f"view_{args.n}"
        shutil.rmtree(out, ignore_errors=True)
        t, c = time.perf_counter(), cpu_seconds()
        store = build_view_store(cfg, locs, out, dask_cfg=dcfg)
        res["seconds"], res["cpu"] = time.perf_counter() - t, cpu_seconds() - c
        res["valid"] = int(store.meta["n_valid"])
        shutil.rmtree(out, ignore_errors=True)
    else:
        from geoembed.views.raster import close_cached_datasets

        lon, lat = locs["lon"].to_numpy(), locs["lat"].to_numpy()
        src = [RasterSource(str(path))]
        rows = raster_chunk_rows(args.chunk_size, 3, args.chip)  # the build's chunks (64 MB cap on large chips)
        bounds = [(a, min(a + rows, args.n)) for a in range(0, args.n, rows)]

        def run(ab):
            chips, vf = extract_chips(src, lon[ab[0]:ab[1]], lat[ab[0]:ab[1]], chip_size=args.chip,
                                      resolution_m=RES, resampling=cfg.resampling)
            return int((vf == 1).sum())

        import rasterio

        res["rounds"] = []
        for _ in range(args.rounds):
            # the bound next to each round (same minute, same process): best of GDAL's default cache and 32 MB
            io = [read_all(path, args.workers)]
            with rasterio.Env(GDAL_CACHEMAX=32):
                io.append(read_all(path, args.workers))
            # every round starts cold: no decoded block kept, no open handle (and so no GDAL block cache)
            close_cached_datasets()
            tile_cache().clear()
            t, c = time.perf_counter(), cpu_seconds()
            with block_read_env(src), ThreadPoolExecutor(args.workers) as pool:  # as the raster view's build does
                res["valid"] = sum(pool.map(run, bounds))
            res["rounds"].append({"seconds": time.perf_counter() - t, "cpu": cpu_seconds() - c,
                                  "io": min(r[0] for r in io), "io_cpu": min(r[1] for r in io)})
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def spawn(args, n: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--n", str(n), "--size", str(args.size),
           "--chip", str(args.chip), "--workers", str(args.workers), "--chunk-size", str(args.chunk_size),
           "--rounds", str(args.rounds)]
    if args.resampling:
        cmd += ["--resampling", args.resampling]
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1"}
    if args.gdal_cachemax is not None:
        env["GDAL_CACHEMAX"] = str(args.gdal_cachemax)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="locations")
    p.add_argument("--n-small", type=int, default=10_000, help="locations for the memory comparison")
    p.add_argument("--size", type=int, default=10_000, help="raster width = height in pixels")
    p.add_argument("--chip", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=None, help="locations per task (default: the config default)")
    p.add_argument("--resampling", choices=["nearest", "bilinear"], default=None,
                   help="default: the config default (bilinear)")
    p.add_argument("--gdal-cachemax", type=int, default=None,
                   help="GDAL block cache (MB) in the runs (default: geoembed's choice, see block_read_env)")
    p.add_argument("--rounds", type=int, default=5,
                   help="extract_chips rounds in one process, each next to its own I/O bound (default 5)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["build", "extract"], default="build", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.chunk_size is None:
        from geoembed.config.build import DaskConfig

        args.chunk_size = DaskConfig().chunk_size
    OUT.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(child(args)))
        return
    path = make_raster(args.size)
    import rasterio

    # the bound is the fastest whole read: GDAL's default block cache and a small one, twice each
    runs = [read_all(path, args.workers) for _ in range(2)]
    with rasterio.Env(GDAL_CACHEMAX=32):
        runs += [read_all(path, args.workers) for _ in range(2)]
    io, io_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
    print(f"raster {args.size} x {args.size} x 3 uint8, tiled 512, deflate; {args.workers} threads; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"read whole raster once (I/O bound): {io:.2f} s wall, {io_cpu:.2f} s CPU")
    ext = spawn(args, args.n, "extract")
    build = spawn(args, args.n, "build")
    small = spawn(args, args.n_small, "build")
    px = args.n * args.chip * args.chip
    rs = args.resampling or "bilinear"
    rounds = ext["rounds"]
    ratio = [r["seconds"] / r["io"] for r in rounds]
    ratio_cpu = [r["cpu"] / r["io_cpu"] for r in rounds]
    from geoembed.views.raster import raster_chunk_rows

    print(f"extract_chips over all chunks, {args.n} locations (chip {args.chip}, {rs}, chunk "
          f"{raster_chunk_rows(args.chunk_size, 3, args.chip)}), "
          f"{len(rounds)} rounds in one process, each cold (no decoded block, no open handle) and next to its own "
          f"I/O bound:")
    for k, r in enumerate(rounds):
        print(f"  round {k + 1}: {r['seconds']:.2f} s wall / bound {r['io']:.2f} s = {ratio[k]:.2f} x; "
              f"{r['cpu']:.2f} s CPU / {r['io_cpu']:.2f} s = {ratio_cpu[k]:.2f} x "
              f"({px / r['seconds'] / 1e6:.1f} M chip px/s)")
    steady = ratio[1:] or ratio
    print(f"  extract_chips / I/O bound, wall: median {np.median(ratio):.2f} x over all rounds; after the first "
          f"round (steady state) median {np.median(steady):.2f} x, range {min(steady):.2f}-{max(steady):.2f} x; "
          f"first round in a fresh process {ratio[0]:.2f} x")
    print(f"raster view build end to end, {args.n} locations: {build['seconds']:.2f} s wall = "
          f"{build['seconds'] / io:.2f} x I/O bound; {build['cpu']:.2f} s CPU = {build['cpu'] / io_cpu:.2f} x; "
          f"valid {build['valid']}/{args.n}")
    print(f"one-off per process before either (kernel load, not in the figures above): "
          f"{ext['warmup_s']:.2f} s")
    print(f"peak RSS build (GDAL_CACHEMAX={args.gdal_cachemax or 'default'} MB): {small['peak_rss_mb']:.0f} MB for "
          f"{args.n_small} locations, {build['peak_rss_mb']:.0f} MB for {args.n} locations; "
          f"RSS before building {build['rss_before_mb']:.0f} MB; extract alone peak {ext['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
