"""Evaluation benchmark: the real Olinda tracts (coordinates only) and fit times on a larger simulated table.

    .venv/bin/python benchmarks/bench_evaluate.py [--n 20000]

Prints pooled held-out Poisson deviance ratios (vs the exposure-only model) under 5-fold spatial-block CV
for resident counts of the 470 Olinda tracts (exposure = tract area in km2, UTM 25S), to compare with the
reference 1.09 (GLM) / 0.85 (LightGBM) of shared/data/README.md, then seconds per fit on a simulated table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from geoembed.config.evaluate import EvaluateConfig
from geoembed.evaluate import run_evaluation, summary_table
from geoembed.evaluate.synthetic import make_risk_table

ROOT = Path(__file__).resolve().parents[1]


def olinda_table() -> pd.DataFrame:
    import geopandas as gpd

    g = gpd.read_file(ROOT / "data" / "olinda" / "olinda1.shp")
    utm = g.to_crs(31985)
    cent = utm.centroid.to_crs(4326)
    return pd.DataFrame({"lon": cent.x, "lat": cent.y, "residents": g["V014"].astype(float),
                         "area_km2": utm.area / 1e6})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000, help="rows of the simulated table")
    args = ap.parse_args()
    t = olinda_table()
    print(f"Olinda: {len(t)} tracts, {t.residents.sum():.0f} residents; coords only, 5-fold spatial blocks")
    splits = {"kmeans 20 blocks": {"block_method": "kmeans"},
              "grid 1000 m": {"block_method": "grid", "block_size_m": 1000},
              "h3 res 8": {"block_method": "h3", "h3_resolution": 8}}
    gbms = {"early stopping (inner 3-fold, blocked)": {}, "100 rounds, no early stopping":
            {"early_stopping": False, "num_boost_round": 100}}
    for sname, sp in splits.items():
        for gname, gb in gbms.items():
            cfg = EvaluateConfig(table="-", target="residents", exposure="area_km2", features=["coords"],
                                 models=["glm", "gam", "gbm"], split={"kind": "spatial_block", "n_folds": 5, **sp},
                                 gbm=gb)
            t0 = time.perf_counter()
            s = summary_table(run_evaluation(t, cfg).records).set_index("model")["deviance_ratio"]
            print(f"  {sname:17s} | GBM {gname:37s} | GLM {s['glm']:.3f}  GAM {s['gam']:.3f}  "
                  f"GBM {s['gbm']:.3f}  ({time.perf_counter() - t0:.1f} s)")

    sim = make_risk_table(n=args.n, rate=0.3, seed=0)
    print(f"\nsimulated Poisson table, {args.n} rows, 5 emb_ columns, 5-fold spatial blocks (grid 2 km):")
    for feats in (["coords"], ["embeddings"]):
        for model in ("glm", "gam", "gbm"):
            cfg = EvaluateConfig(table="-", target="y", exposure="exposure", covariates=["age"], categorical=["zone"],
                                 features=feats, models=[model], split={"kind": "spatial_block", "n_folds": 5})
            t0 = time.perf_counter()
            rec = run_evaluation(sim, cfg).records
            dt = time.perf_counter() - t0
            r = float(rec[rec["fold"] == "pooled"]["deviance_ratio"].iloc[0])
            print(f"  {model} on {feats[0]:10s}: deviance ratio {r:.3f}, {dt:.1f} s for 5 folds "
                  f"({dt / 5:.2f} s per fold of {int(0.8 * args.n)} training rows)")


if __name__ == "__main__":
    main()
