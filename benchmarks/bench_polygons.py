"""Polygon enrichment speed: 600 polygons x 1,000 points through a demo-sized local bundle (issue 11, item 5).

    python benchmarks/bench_polygons.py                       # 600 polygons, 1,000 points each
    python benchmarks/bench_polygons.py --polygons 2000 --points 500 --repeat 5

The polygons are Voronoi cells of random points over the Olinda Landsat footprint (tract-like shapes, 5 to
15 vertices, a few hundred metres across), written as GeoParquet. The bundle holds an untrained encoder with
the coordinate-encoder settings of configs/demo.yaml's ``train`` section (speed does not depend on
training). Printed, best of ``--repeat`` runs: the sampling alone (checks, projection, triangles, points),
``enrich_file`` in this process (the whole enrichment: read, sample, embed, average, support, write) and
the ``geoembed enrich`` command as a subprocess (that plus Python start-up and imports). Target: the
enrichment at most 5 s. Files go to benchmarks/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def demo_bundle(path: Path) -> Path:
    """An untrained bundle with configs/demo.yaml's coordinate encoder over the Olinda footprint."""
    import torch

    from geoembed.config import load_config
    from geoembed.io.bundle import build_coordinate_encoder, save_bundle
    from geoembed.testing.bundles import OLINDA_BOX
    from geoembed.train import coordinate_spec

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    rng = np.random.default_rng(0)
    minx, miny, maxx, maxy = OLINDA_BOX.bounds
    spec = coordinate_spec(cfg.train, rng.uniform(minx, maxx, 1000), rng.uniform(miny, maxy, 1000))
    torch.manual_seed(0)
    enc = build_coordinate_encoder(spec)
    return save_bundle(path, enc, enc.spec, footprint=OLINDA_BOX, out_of_support_km=2.0,
                       config={"benchmark": True}, metrics={}, data_fingerprint="bench")


def voronoi_tracts(n: int, seed: int = 0):
    """``n`` tract-like polygons: Voronoi cells of random points, clipped to the Olinda box."""
    import geopandas as gpd
    import shapely

    from geoembed.testing.bundles import OLINDA_BOX

    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = OLINDA_BOX.bounds
    pts = shapely.MultiPoint(np.column_stack([rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)]))
    cells = shapely.get_parts(shapely.voronoi_polygons(pts, extend_to=OLINDA_BOX))
    cells = shapely.intersection(cells, OLINDA_BOX)
    return gpd.GeoDataFrame({"tract": np.arange(len(cells)), "pop": rng.integers(50, 2000, len(cells))},
                            geometry=cells, crs="EPSG:4326")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--polygons", type=int, default=600)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from geoembed.enrich import enrich_file
    from geoembed.enrich.enricher import Enricher, load_bundle_cached
    from geoembed.enrich.polygons import PolygonSampler

    OUT.mkdir(parents=True, exist_ok=True)
    bundle_path = demo_bundle(OUT / "bench_polygons_bundle")
    g = voronoi_tracts(args.polygons)
    src = OUT / f"tracts_{args.polygons}.parquet"
    g.to_parquet(src)
    out = OUT / f"tracts_{args.polygons}_enriched.parquet"
    bundle = load_bundle_cached(bundle_path)
    import shapely

    verts = shapely.get_num_coordinates(g.geometry.values)
    print(f"{len(g)} polygons ({verts.min()}-{verts.max()} vertices, median "
          f"{np.median(shapely.area(g.to_crs('EPSG:31985').geometry.values)) / 1e6:.3f} km^2), "
          f"{args.points:,} points each = {len(g) * args.points:,} points; bundle: demo encoder "
          f"(d = {bundle.embedding_dim}), {os.cpu_count()} cores")

    sampler = PolygonSampler(args.points, seed=0)
    geoms = np.asarray(g.geometry.values, dtype=object)
    t_sample = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        codes, _, keys, ea, _ = sampler.prepare(geoms, None, True)
        sampler.sample(ea[codes == 0], keys[codes == 0])
        t_sample.append(time.perf_counter() - t0)
    enricher = Enricher(bundle)
    t_embed = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        sampler.embed_geoms(enricher, geoms, None, True)
        t_embed.append(time.perf_counter() - t0)
    enricher.close()
    t_file = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        s = enrich_file(bundle_path, src, out, points_per_polygon=args.points)
        t_file.append(time.perf_counter() - t0)
    assert s.rows == len(g) and s.invalid == 0
    env = {**os.environ, "GEOEMBED_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
    t_cli = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "geoembed.cli", "enrich", "--bundle", str(bundle_path), "--input",
                        str(src), "--output", str(out), "--points-per-polygon", str(args.points)],
                       check=True, capture_output=True, env=env)
        t_cli.append(time.perf_counter() - t0)
    n_pts = len(g) * args.points
    print(f"  sampling only (checks, projection, triangles, points): {min(t_sample):6.2f} s")
    print(f"  sample + embed + average + support (in memory):       {min(t_embed):6.2f} s "
          f"({n_pts / min(t_embed):,.0f} points/s)")
    print(f"  enrich_file (read, all of the above, write):           {min(t_file):6.2f} s  (target <= 5 s)")
    print(f"  geoembed enrich command (with start-up and imports):   {min(t_cli):6.2f} s")
    return 0 if min(t_file) <= 5.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
