"""Embedding quality across seeds: the demo pipeline for several seeds, downstream and training-side figures.

For each seed the whole demo runs in its own folder (``<workdir>/seed<S>``; the seed changes the sampled
locations and the training): build, train, enrich the 470 Olinda tract centroids, evaluate resident
counts (Poisson, exposure = tract area) under the demo's 5-fold 1.5 km spatial blocks. Printed per seed and
as mean +- sd over seeds:

* held-out deviance ratio of GLM, GAM and LightGBM on the embeddings (and on coordinates, the baseline);
* training diagnostics of the bundle: best epoch, held-out top-1 / top-5 retrieval, chance top-1,
  held-out loss.

    python benchmarks/bench_quality.py [--seeds 0 1 2 3 4] [--jobs 2] [--workdir runs/quality]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("glm", "gam", "gbm")
DIAGNOSTICS = ("best_epoch", "val_top1", "val_top5", "chance_top1", "best_val_loss")


def _set(data: dict, dotted: str, value) -> None:
    node = data
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def seed_config(config: Path, seed: int, workdir: Path, overrides: list[str]):
    """The demo config for one seed, in its own folder, with ``KEY=VALUE`` overrides applied."""
    from geoembed.config import parse_config, read_yaml

    data = read_yaml(config.read_text())
    out = workdir / f"seed{seed}"
    data["seed"] = seed
    data["workdir"] = str(out)
    data["evaluate"]["table"] = str(out / "olinda_tracts_enriched.parquet")
    data["evaluate"]["output"] = str(out / "report")
    data["evaluate"]["figures"] = False
    for item in overrides:
        key, _, text = item.partition("=")
        _set(data, key, read_yaml(text))
    return parse_config(data, origin=f"{config} (seed {seed})", base=config.resolve().parent)


def run_seed(config: str, seed: int, workdir: str, overrides: list[str]) -> dict:
    """Run the demo for one seed; returns its figures."""
    import contextlib
    import io
    import logging

    from geoembed.demo import run_demo

    logging.getLogger("geoembed").setLevel(logging.WARNING)
    cfg = seed_config(Path(config), seed, Path(workdir), overrides)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = run_demo(cfg, overwrite=True)
    metrics = json.loads((Path(res["bundle"]) / "metrics.json").read_text())
    ratios = {(r["model"], r["features"]): r["deviance_ratio"] for r in res["pooled"]}
    return {"seed": seed, "seconds": time.perf_counter() - t, "ratios": ratios,
            "diagnostics": {k: metrics.get(k) for k in DIAGNOSTICS}}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def report(results: list[dict]) -> str:
    """The per-seed table and the mean +- sd line (markdown)."""
    head = ["seed"] + [f"{m} emb" for m in MODELS] + [f"{m} coords" for m in MODELS] + list(DIAGNOSTICS) + ["s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    for r in sorted(results, key=lambda r: r["seed"]):
        row = [str(r["seed"])]
        row += [fmt(r["ratios"].get((m, "embeddings"))) for m in MODELS]
        row += [fmt(r["ratios"].get((m, "coords"))) for m in MODELS]
        row += [fmt(r["diagnostics"].get(k)) for k in DIAGNOSTICS]
        row.append(f"{r['seconds']:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    agg = [f"mean +- sd ({len(results)} seeds)"]
    for feats in ("embeddings", "coords"):
        agg += [_mean_sd([r["ratios"][(m, feats)] for r in results if (m, feats) in r["ratios"]]) for m in MODELS]
    agg += [_mean_sd([float(r["diagnostics"][k]) for r in results if r["diagnostics"].get(k) is not None])
            for k in DIAGNOSTICS]
    agg.append("")
    lines.append("| " + " | ".join(agg) + " |")
    worst = {m: max(r["ratios"].get((m, "embeddings"), float("nan")) for r in results) for m in MODELS}
    lines.append("")
    lines.append("worst seed on embeddings: " + ", ".join(f"{m} {v:.3f}" for m, v in worst.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (training uses one thread each)")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "quality"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the per-seed figures to this JSON file")
    args = parser.parse_args(argv)
    for s in args.seeds:  # validate every seed's config before any work
        seed_config(Path(args.config), s, Path(args.workdir), args.overrides)
    t = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_seed, args.config, s, args.workdir, args.overrides) for s in args.seeds]
        results = []
        for f in futures:
            r = f.result()
            results.append(r)
            emb = ", ".join(f"{m} {r['ratios'].get((m, 'embeddings'), float('nan')):.3f}" for m in MODELS)
            print(f"seed {r['seed']}: {emb} [{r['seconds']:.0f} s]", flush=True)
    print(f"\nbench_quality: {args.config} {' '.join('--set ' + o for o in args.overrides)}")
    print(report(results))
    print(f"\n{len(results)} seeds in {time.perf_counter() - t:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{**r, "ratios": {f"{m}:{f}": v for (m, f), v in r["ratios"].items()}} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
