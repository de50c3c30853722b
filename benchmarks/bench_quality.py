"""Embedding quality across seeds: the demo pipeline for several seeds, downstream and training-side figures.

For each seed the whole demo runs in its own folder (``<workdir>/seed<S>``; the seed changes the sampled
locations and the training): build, train, enrich the 470 Olinda tract centroids, evaluate resident
counts (Poisson, exposure = tract area) under the demo's 5-fold 1.5 km spatial blocks. Printed per seed and
as mean +- sd over seeds:

* held-out deviance ratio of GLM, GAM and LightGBM on the embeddings (and on coordinates, the baseline);
  with ``--polygons N`` also on the tracts as polygons (each the mean embedding over N points sampled in it,
  ``evaluate.points_per_polygon``; the same folds);
* training diagnostics of the bundle: best epoch, held-out top-1 / top-5 retrieval, chance top-1,
  held-out loss;
* how much of the views' own signal the embeddings keep: ``view_r2``, the held-out R^2 (same folds) of a
  linear model predicting each tract's mean of every view band (6 Landsat bands + DEM, over the tract's
  pixels) from the tract's embedding, averaged over the bands; and the GLM deviance ratio of those tract
  means themselves (``views glm``), the level a perfect coordinate encoder of these views could approach.

    python benchmarks/bench_quality.py [--seeds 0 1 2 3 4] [--jobs 2] [--workdir runs/quality] [--polygons 32]
    python benchmarks/bench_quality.py --set train.jitter_m=200 --set train.epochs=16   # an experiment

``--set KEY=VALUE`` overrides a dotted key of the demo config (the value is read as YAML). Finished seeds are
reused on a rerun with the same settings (every stage is resumable and skips up-to-date work).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("glm", "gam", "gbm")
DIAGNOSTICS = ("best_epoch", "val_top1", "val_top5", "chance_top1", "best_val_loss", "view_r2", "views_glm")


def seed_config(config: Path, seed: int, workdir: Path, overrides: list[str]):
    """The demo config for one seed, in its own folder, with ``KEY=VALUE`` overrides applied."""
    from geoembed.config import apply_settings, parse_config, read_yaml

    data = read_yaml(config.read_text())
    out = Path(workdir).resolve() / f"seed{seed}"  # relative to the current folder, not to the config
    data["seed"] = seed
    data["workdir"] = str(out)
    data["enrich"]["input"] = str(out / "olinda_tracts.parquet")
    data["enrich"]["output"] = str(out / "olinda_tracts_enriched.parquet")
    data["evaluate"]["table"] = str(out / "olinda_tracts_enriched.parquet")
    data["evaluate"]["output"] = str(out / "report")
    data["evaluate"]["figures"] = False
    data = apply_settings(data, overrides)
    return parse_config(data, origin=f"{config} (seed {seed})", base=config.resolve().parent)


def tract_view_means(cfg) -> np.ndarray:
    """(tracts, bands) mean of every raster view's bands over each Olinda tract's pixels (all touched)."""
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    from geoembed.demo import OLINDA_TRACTS

    tracts = gpd.read_file(OLINDA_TRACTS)
    cols = []
    for view in cfg.views:
        for src in view.sources:
            with rasterio.open(src) as ds:
                shapes = ((g, i + 1) for i, g in enumerate(tracts.to_crs(ds.crs).geometry))
                label = rasterize(shapes, out_shape=(ds.height, ds.width), transform=ds.transform, fill=0,
                                  all_touched=True, dtype="int32").ravel()
                data = ds.read(masked=True).astype("float64")
            for band in data:
                ok = ~np.ma.getmaskarray(band).ravel() & (label > 0)
                sums = np.bincount(label[ok], weights=band.filled(0).ravel()[ok], minlength=len(tracts) + 1)
                counts = np.bincount(label[ok], minlength=len(tracts) + 1)
                cols.append(sums[1:] / np.maximum(counts[1:], 1))
    return np.column_stack(cols)


def view_signal(cfg, table, folds) -> dict:
    """Held-out R^2 of the tract view means from the embeddings, and the GLM ratio on the view means."""
    from sklearn.linear_model import LinearRegression, PoissonRegressor

    means = tract_view_means(cfg)
    emb = table[[c for c in table.columns if c.startswith("emb_")]].to_numpy(float)
    z = (means - means.mean(0)) / np.where(means.std(0) > 0, means.std(0), 1.0)
    pred = np.zeros_like(z)
    y = table[cfg.evaluate.target].to_numpy(float)
    expo = table[cfg.evaluate.exposure].to_numpy(float)
    dev_model, dev_null = 0.0, 0.0
    for f in np.unique(folds[folds >= 0]):
        tr, te = folds != f, folds == f
        pred[te] = LinearRegression().fit(emb[tr], z[tr]).predict(emb[te])
        # rate model on the view means: Poisson GLM of y / exposure weighted by exposure (log link)
        glm = PoissonRegressor(alpha=1e-4, max_iter=1000).fit(z[tr], y[tr] / expo[tr], sample_weight=expo[tr])
        mu = glm.predict(z[te]) * expo[te]
        mu0 = y[tr].sum() / expo[tr].sum() * expo[te]
        dev_model += _poisson_dev(y[te], mu)
        dev_null += _poisson_dev(y[te], mu0)
    r2 = 1.0 - ((z - pred) ** 2).sum(0) / ((z - z.mean(0)) ** 2).sum(0)
    return {"view_r2": float(np.mean(r2)), "views_glm": dev_model / dev_null}


def _poisson_dev(y, mu) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(y > 0, y * np.log(y / mu), 0.0)
    return float(2.0 * np.sum(t - (y - mu)))


def polygon_ratios(cfg, bundle: Path, points: int) -> dict:
    """Pooled deviance ratio of each model on the tracts as polygons: each tract's embedding is the mean over
    ``points`` points sampled in it, with the seed's bundle (the centroids' folds and models otherwise)."""
    from geoembed.demo import write_tract_polygons
    from geoembed.enrich import LocationEmbedder
    from geoembed.evaluate.core import run_evaluation
    from geoembed.evaluate.tables import read_table

    table = write_tract_polygons(Path(cfg.workdir) / "olinda_tract_polygons.parquet")
    ev = cfg.evaluate.model_copy(update={"features": ["embeddings"], "points_per_polygon": points,
                                         "table": str(table), "bundle": str(bundle)})
    data = read_table(table, ev.lon_col, ev.lat_col)
    records = run_evaluation(data, ev, embedder=LocationEmbedder(bundle=str(bundle))).records
    pooled = records[records["fold"].astype(str) == "pooled"]
    return {(r["model"], "polygons"): float(r["deviance_ratio"]) for r in pooled.to_dict("records")
            if r["features"] == "embeddings"}


def run_seed(config: str, seed: int, workdir: str, overrides: list[str], polygons: int | None = None) -> dict:
    """Run the demo for one seed; returns its figures (and the polygons' with ``polygons`` points each)."""
    import contextlib
    import io
    import logging

    from geoembed.demo import run_demo

    logging.getLogger("geoembed").setLevel(logging.WARNING)
    cfg = seed_config(Path(config), seed, Path(workdir), overrides)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = run_demo(cfg, overwrite=True)
    seconds = time.perf_counter() - t
    metrics = json.loads((Path(res["bundle"]) / "metrics.json").read_text())
    ratios = {(r["model"], r["features"]): r["deviance_ratio"] for r in res["pooled"]}
    from geoembed.evaluate.splits import assign_folds
    from geoembed.evaluate.tables import read_table

    ev = cfg.evaluate
    table = read_table(ev.table, ev.lon_col, ev.lat_col)
    folds, _ = assign_folds(table, ev.split, ev.lon_col, ev.lat_col)
    diag = {k: metrics.get(k) for k in DIAGNOSTICS}
    diag.update(view_signal(cfg, table, folds))
    if polygons:
        ratios.update(polygon_ratios(cfg, Path(res["bundle"]), polygons))
    return {"seed": seed, "seconds": seconds, "ratios": ratios, "diagnostics": diag}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def report(results: list[dict]) -> str:
    """The per-seed table and the mean +- sd line (markdown)."""
    feature_sets = ["embeddings", "coords"] + (["polygons"] if any((m, "polygons") in r["ratios"] for r in results
                                                                   for m in MODELS) else [])
    short = {"embeddings": "emb", "coords": "coords", "polygons": "poly"}
    head = ["seed"] + [f"{m} {short[f]}" for f in feature_sets for m in MODELS] + list(DIAGNOSTICS) + ["s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    for r in sorted(results, key=lambda r: r["seed"]):
        row = [str(r["seed"])]
        row += [fmt(r["ratios"].get((m, f))) for f in feature_sets for m in MODELS]
        row += [fmt(r["diagnostics"].get(k)) for k in DIAGNOSTICS]
        row.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    agg = [f"mean +- sd ({len(results)} seeds)"]
    for feats in feature_sets:
        agg += [_mean_sd([r["ratios"][(m, feats)] for r in results if (m, feats) in r["ratios"]]) for m in MODELS]
    agg += [_mean_sd([float(r["diagnostics"][k]) for r in results if r["diagnostics"].get(k) is not None])
            for k in DIAGNOSTICS]
    agg.append("")
    lines.append("| " + " | ".join(agg) + " |")
    lines.append("")
    for feats in (f for f in feature_sets if f != "coords"):
        worst = {m: max(r["ratios"].get((m, feats), float("nan")) for r in results) for m in MODELS}
        lines.append(f"worst seed on {feats}: " + ", ".join(f"{m} {v:.3f}" for m, v in worst.items()))
    return "\n".join(lines)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of points")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (training uses one thread each)")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the per-seed figures to this JSON file")
    parser.add_argument("--polygons", type=_positive, metavar="N",
                        help="also evaluate the tracts as polygons, each the mean over N sampled points")
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/quality_seeds.json: the figures the demo quotes for these settings")
    args = parser.parse_args(argv)
    for s in args.seeds:  # validate every seed's config before any work
        seed_config(Path(args.config), s, Path(args.workdir), args.overrides)
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_seed, args.config, s, args.workdir, args.overrides, args.polygons)
                   for s in args.seeds]
        results = []
        for f in futures:
            r = f.result()
            results.append(r)
            emb = ", ".join(f"{m} {r['ratios'].get((m, 'embeddings'), float('nan')):.3f}" for m in MODELS)
            print(f"seed {r['seed']}: {emb} [{r['seconds']:.0f} s]", flush=True)
    print(f"\nbench_quality: {args.config} {' '.join('--set ' + o for o in args.overrides)}")
    print(report(results))
    print(f"\n{len(results)} seeds in {time.perf_counter() - t:.0f} s wall")
    if args.record:
        from geoembed.seeds import RECORD, record_seeds, settings_key

        key = settings_key(seed_config(Path(args.config), args.seeds[0], Path(args.workdir), args.overrides))
        rows = [{"seed": r["seed"], "ratios": {m: r["ratios"][(m, "embeddings")] for m in MODELS
                                               if (m, "embeddings") in r["ratios"]}} for r in results]
        command = "python benchmarks/bench_quality.py " + " ".join(
            ["--seeds", *map(str, args.seeds)] + [f"--set {o}" for o in args.overrides])
        record_seeds(RECORD, key, Path(args.config).name, rows, command.strip())
        print(f"recorded in {RECORD}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{**r, "ratios": {f"{m}:{f}": v for (m, f), v in r["ratios"].items()}} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
