"""Enrichment throughput and memory, end to end through the CLI (Parquet in, Parquet out).

    python benchmarks/bench_enrich.py                        # 2M and 10M rows, demo + paper encoders
    python benchmarks/bench_enrich.py --rows 1000000 --encoder demo
    python benchmarks/bench_enrich.py --profile              # where the time goes, per stage

For each table size it generates a Parquet policy table (id, lon, lat, exposure, region, start date,
premium; 90% of points inside the Olinda footprint, 10% up to ~20 km outside, so the support distance
is exercised), writes an untrained bundle with the chosen encoder, runs ``geoembed enrich`` as a
subprocess and prints rows/s and the peak resident memory of the process tree (psutil, children
included). Targets (issue 4): demo encoder >= 250,000 rows/s with peak memory < 2 GB at 10M rows; paper
encoder (harmonics L = 40 + SIREN 2 x 128) >= 100,000 rows/s.

Encoders: ``demo`` is the coordinate encoder of configs/demo.yaml's ``train`` section when it has one
(else a representative local multi-scale sinusoid encoding + MLP 2 x 128, d = 16); ``paper`` comes from
configs/paper.yaml when present, else spherical harmonics with 40 degrees + SIREN 2 x 128, d = 16.
Weights are random (speed does not depend on training). Files go to benchmarks/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OLINDA_TIF = ROOT / "data" / "olinda" / "L7_ETMs.tif"

REPRESENTATIVE_DEMO = {
    "encodings": [{"type": "local_multiscale", "center_lon": -34.8715, "center_lat": -7.9955,
                   "min_wavelength_m": 200.0, "max_wavelength_m": 20000.0, "n_scales": 16,
                   "n_directions": 3, "include_xy": True}],
    "network": {"type": "mlp", "hidden": [128, 128], "activation": "relu"},
    "embedding_dim": 16,
    "dtype": "float32",
}
REPRESENTATIVE_PAPER = {
    "encodings": [{"type": "spherical_harmonics", "degrees": 40}],
    "network": {"type": "siren", "hidden": [128, 128], "w0": 30.0, "w0_hidden": 1.0},
    "embedding_dim": 16,
    "dtype": "float32",
}


def footprint():
    """The Olinda Landsat footprint (EPSG:4326), or its bounding box if the kit is missing."""
    import shapely

    if OLINDA_TIF.is_file():
        from geoembed.io.rasters import raster_footprint

        return raster_footprint(OLINDA_TIF)
    return shapely.box(-34.917, -8.041, -34.826, -7.950)


def encoder_spec(kind: str, fp) -> tuple[dict, str]:
    """The encoder spec to benchmark and where it came from."""
    cfg_path = ROOT / "configs" / f"{kind}.yaml"
    if cfg_path.is_file():
        try:
            from geoembed.config import load_config
            from geoembed.train import coordinate_spec

            cfg = load_config(cfg_path)
            if cfg.train is not None:
                rng = np.random.default_rng(0)
                minx, miny, maxx, maxy = fp.bounds
                lon, lat = rng.uniform(minx, maxx, 1000), rng.uniform(miny, maxy, 1000)
                return coordinate_spec(cfg.train, lon, lat), f"{cfg_path.name} train section"
        except Exception as err:  # noqa: BLE001 - fall back to the representative spec, and say so
            print(f"  (could not take the encoder from {cfg_path.name}: {err}; using a representative one)")
    return (REPRESENTATIVE_DEMO if kind == "demo" else REPRESENTATIVE_PAPER), "representative spec"


def make_table(path: Path, rows: int, fp, seed: int = 0, block: int = 1_000_000) -> None:
    """Write a policy table of ``rows`` rows, block by block (generation memory stays small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = fp.bounds
    regions = pa.array(["north", "south", "east", "west", "centre"])
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, rows, block):
        n = min(block, rows - start)
        # 90% inside the footprint (rejection sampling in its box), 10% in a ~20 km margin around it
        lon = rng.uniform(minx, maxx, 2 * n)
        lat = rng.uniform(miny, maxy, 2 * n)
        ok = shapely.contains_xy(fp, lon, lat)
        lon, lat = lon[ok][:n], lat[ok][:n]
        while len(lon) < n:  # pragma: no cover - the footprint fills most of its box
            lon, lat = np.append(lon, lon[: n - len(lon)]), np.append(lat, lat[: n - len(lat)])
        out = rng.random(n) < 0.1
        lon[out] += rng.uniform(-0.2, 0.2, out.sum())
        lat[out] += rng.uniform(-0.2, 0.2, out.sum())
        t = pa.table({
            "policy_id": np.arange(start, start + n, dtype=np.int64),
            "lon": lon, "lat": lat,
            "exposure": rng.uniform(0.1, 1.0, n).astype(np.float32),
            "region": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 5, n), pa.int8()), regions),
            "start": pa.array(rng.integers(18000, 20000, n).astype(np.int32), pa.int32()).cast(pa.date32()),
            "premium": rng.lognormal(6.0, 0.5, n),
        })
        if writer is None:
            writer = pq.ParquetWriter(tmp, t.schema)
        writer.write_table(t, row_group_size=256 * 1024)
    writer.close()
    os.replace(tmp, path)


def run_cli(args: list[str]) -> tuple[float, float, str, float]:
    """Run ``geoembed <args>``; returns (seconds, peak RSS of the process tree in MiB, stdout, CPU seconds).

    CPU seconds (user + system of the child) give a load-independent view on a shared machine:
    rows / (CPU seconds / cores) is the rate the run would reach with the cores to itself.
    """
    import resource

    import psutil

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)

    cmd = [sys.executable, "-m", "geoembed.cli", *args]
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    break
                peak = max(peak, rss)
                time.sleep(0.02)
        except psutil.NoSuchProcess:
            pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    secs = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"geoembed enrich failed ({proc.returncode}):\n{err[-3000:]}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return secs, peak / 2**20, out.strip(), cpu


def profile(bundle_dir: Path, table: Path, chunk_rows: int, workers: int | None) -> None:
    """Time each stage on the first chunks of ``table`` in this process."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoembed.enrich import hygiene as hy
    from geoembed.enrich.arrow import embedding_arrays, output_schema, qa_arrays
    from geoembed.enrich.coordinates import Coordinates, batch_coordinates
    from geoembed.enrich.enricher import Enricher, load_bundle_cached, torch_threads

    enricher = Enricher(load_bundle_cached(bundle_dir), workers=workers)
    pf = pq.ParquetFile(table)
    coords = Coordinates(lon_col="lon", lat_col="lat")
    schema = output_schema(pf.schema_arrow, coords, enricher.names, False, {})
    times = dict.fromkeys(["parquet read", "coordinates + hygiene", "footprint + swap check",
                           "support distance", "encoder", "arrow assembly", "parquet write"], 0.0)
    rows = 0
    from geoembed.enrich.tables import _dictionary_columns

    sink = pa.BufferOutputStream()
    writer = pq.ParquetWriter(sink, schema, use_dictionary=_dictionary_columns(schema))  # as ParquetSink
    report = hy.HygieneReport()
    with torch_threads(1 if enricher.workers > 1 else None):
        it = pf.iter_batches(batch_size=chunk_rows)
        for _ in range(8):
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            times["parquet read"] += time.perf_counter() - t
            t = time.perf_counter()
            lon, lat, codes, lr, la = batch_coordinates(batch, coords)
            times["coordinates + hygiene"] += time.perf_counter() - t
            t = time.perf_counter()
            inside = enricher.check(lon, lat, codes, report, rows, lr, la)
            times["footprint + swap check"] += time.perf_counter() - t
            valid = codes == hy.OK
            t = time.perf_counter()
            dist = enricher.support_km(lon, lat, valid, inside)
            times["support distance"] += time.perf_counter() - t
            t = time.perf_counter()
            emb = enricher.embed(lon, lat, valid)
            times["encoder"] += time.perf_counter() - t
            t = time.perf_counter()
            cols = list(batch.columns) + embedding_arrays(emb, valid) + qa_arrays(codes, dist, 2.0)
            out = pa.RecordBatch.from_arrays(cols, schema=schema)
            times["arrow assembly"] += time.perf_counter() - t
            t = time.perf_counter()
            writer.write_batch(out)
            times["parquet write"] += time.perf_counter() - t
            rows += batch.num_rows
    writer.close()
    enricher.close()
    total = sum(times.values())
    print(f"  profile over {rows:,} rows (one thread per stage, no overlap; encoder on "
          f"{enricher.workers} threads):")
    for k, v in times.items():
        print(f"    {k:<24} {v:7.3f} s  {rows / v if v else float('inf'):>14,.0f} rows/s  {v / total:6.1%}")
    print(f"    {'sum':<24} {total:7.3f} s  {rows / total:>14,.0f} rows/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 10_000_000])
    parser.add_argument("--encoder", choices=("demo", "paper", "both"), default="both")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--chunk-rows", type=int, default=262_144)
    parser.add_argument("--workers", type=int, default=None, help="embedding threads (default: cores)")
    parser.add_argument("--profile", action="store_true", help="also time each stage in-process")
    parser.add_argument("--paper-rows", type=int, default=None,
                        help="cap the table size for the paper encoder (default: same sizes)")
    args = parser.parse_args(argv)

    import torch

    from geoembed.io.bundle import save_untrained_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    fp = footprint()
    kinds = ["demo", "paper"] if args.encoder == "both" else [args.encoder]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count()
    print(f"enrich benchmark: {cores} usable cores, torch {torch.__version__}, chunk {args.chunk_rows:,} rows")
    results = []
    for kind in kinds:
        spec, origin = encoder_spec(kind, fp)
        bundle_dir = args.out / f"bundle_{kind}"
        save_untrained_bundle(bundle_dir, spec, footprint=fp, out_of_support_km=2.0)
        enc = spec["encodings"]
        print(f"[{kind}] encoder from {origin}: {[e['type'] for e in enc]} + {spec['network']['type']} "
              f"{spec['network'].get('hidden')}, d = {spec['embedding_dim']}")
        sizes = args.rows if (kind == "demo" or args.paper_rows is None) else [min(r, args.paper_rows)
                                                                                for r in args.rows]
        for rows in sorted(set(sizes)):
            table = args.out / f"policies_{rows}.parquet"
            t = time.perf_counter()
            make_table(table, rows, fp)
            print(f"  table {table.name}: {table.stat().st_size / 2**20:,.0f} MiB "
                  f"(ready in {time.perf_counter() - t:.1f} s)")
            if args.profile:
                profile(bundle_dir, table, args.chunk_rows, args.workers)
            out = args.out / f"enriched_{kind}_{rows}.parquet"
            cli = ["enrich", "--bundle", str(bundle_dir), "--input", str(table), "--output", str(out),
                   "--chunk-rows", str(args.chunk_rows)]
            if args.workers:
                cli += ["--workers", str(args.workers)]
            secs, peak, line, cpu = run_cli(cli)
            rate = rows / secs
            print(f"  {line}")
            print(f"  => {kind:<5} {rows:>11,} rows: {secs:7.2f} s wall (process start included), "
                  f"{rate:>10,.0f} rows/s, peak RSS {peak:,.0f} MiB; CPU {cpu:.1f} s = "
                  f"{rows / cpu * cores:,.0f} rows/s on {cores} dedicated cores "
                  f"(load average now {os.getloadavg()[0]:.1f})")
            results.append((kind, rows, secs, rate, peak))
            out.unlink(missing_ok=True)
    print("\nsummary (kind, rows, seconds, rows/s, peak RSS MiB):")
    for kind, rows, secs, rate, peak in results:
        target = 250_000 if kind == "demo" else 100_000
        print(f"  {kind:<5} {rows:>11,} {secs:8.2f} {rate:>12,.0f} {peak:>9,.0f}   "
              f"target {target:,} rows/s: {'met' if rate >= target else 'NOT met'}"
              f"{'' if kind != 'demo' or rows < 10_000_000 else ('; < 2 GB: ' + ('met' if peak < 2048 else 'NOT met'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
