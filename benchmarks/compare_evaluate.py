"""Held-out deviance ratios of the demo's evaluation on given enriched tables, on fixed folds, to compare two
versions of the model code (run once with each on PYTHONPATH; the script uses only APIs both have).

    PYTHONPATH=<checkout> .venv/bin/python benchmarks/compare_evaluate.py TABLE [TABLE ...] \
        --split-seeds 0 1 2 --out ratios.json

Each TABLE is an enriched tract table written by ``geoembed demo`` (``olinda_tracts_enriched.parquet``).
Blocks are 1.5 km cells of geoembed's local projection anchored at the tracts' south-west corner (the
evaluate blocks of the demo), computed here so that both versions see identical folds; every split seed
assigns them to 5 folds differently. Prints and writes pooled ratios per table x split seed x model x features.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import yaml

from geoembed.config.evaluate import EvaluateConfig
from geoembed.demo import DEMO_CONFIG
from geoembed.evaluate import read_table, run_evaluation, summary_table
from geoembed.geo import project_local


def blocks(lon: np.ndarray, lat: np.ndarray, size_m: float) -> np.ndarray:
    x, y = project_local(lon, lat)
    ix = np.floor((x - x.min()) / size_m).astype(np.int64)
    iy = np.floor((y - y.min()) / size_m).astype(np.int64)
    return ix * 1_000_000 + iy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ev = yaml.safe_load(DEMO_CONFIG.read_text())["evaluate"]
    size = float(ev["split"]["block_size_m"])
    out = {}
    for path in args.tables:
        t = read_table(path)
        t["block"] = blocks(t["lon"].to_numpy(float), t["lat"].to_numpy(float), size)
        for s in args.split_seeds:
            cfg = EvaluateConfig(table="-", target=ev["target"], exposure=ev["exposure"], family=ev["family"],
                                 link=ev["link"], features=ev["features"], models=ev["models"], seed=0,
                                 split={"kind": "spatial_block", "n_folds": ev["split"]["n_folds"],
                                        "block_method": "column", "block_column": "block", "seed": s})
            t0 = time.perf_counter()
            summ = summary_table(run_evaluation(t, cfg).records)
            for r in summ.itertuples():
                out[f"{path}|split{s}|{r.model}|{r.features}"] = round(float(r.deviance_ratio), 4)
            line = "  ".join(f"{r.model}:{r.features} {r.deviance_ratio:.3f}" for r in summ.itertuples())
            print(f"{path} split seed {s} ({time.perf_counter() - t0:.1f} s): {line}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
