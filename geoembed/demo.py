"""``geoembed demo``: the whole pipeline on the bundled real Olinda kit.

sample -> build (Landsat + DEM chips) -> train -> enrich the 470 census-tract centroids -> evaluate
resident counts (Poisson, exposure = tract area) with coordinates against embeddings under
spatial-block cross-validation. Every step is resumable; a rerun reuses finished artefacts.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from geoembed.config import Config, load_config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
OLINDA_TRACTS = ROOT / "data" / "olinda" / "olinda1.shp"
TARGET_RATIO = 0.60


def olinda_tracts(path: str | Path = OLINDA_TRACTS) -> pd.DataFrame:
    """The Olinda census tracts as a table: tract id, centroid lon/lat, residents, area (km²), type.

    Centroids and areas are computed in UTM 25S (metres), then the centroids are returned in EPSG:4326.
    """
    import geopandas as gpd

    from geoembed.locations import read_vector

    g = read_vector(path)
    metric = g.to_crs("EPSG:31985")
    cent = gpd.GeoSeries(metric.geometry.centroid, crs=metric.crs).to_crs("EPSG:4326")
    return pd.DataFrame({
        "tract_id": g["CD_GEOCODI"].astype(str).to_numpy(),
        "lon": cent.x.to_numpy(),
        "lat": cent.y.to_numpy(),
        "residents": g["V014"].astype(float).to_numpy(),
        "area_km2": (metric.geometry.area / 1e6).to_numpy(),
        "tipo": g["TIPO"].astype(str).to_numpy(),
        "bairro": g["NM_BAIR"].astype(str).to_numpy(),
    })


def _step(i: int, n: int, text: str) -> float:
    print(f"[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def run_demo(cfg: Config, overwrite: bool = False) -> dict:
    """Run every stage of the demo config; returns the pooled evaluation records and paths."""
    from geoembed.build import build, format_summary
    from geoembed.enrich import enrich_file
    from geoembed.evaluate.core import read_table, run_evaluation, summary_table
    from geoembed.evaluate.report import markdown_table, write_report
    from geoembed.train import train

    cfg.require("locations", "views", "train", "evaluate")
    workdir = cfg.workdir_path
    t_all = time.perf_counter()
    t = _step(1, 4, "build: sample locations, cut Landsat and DEM chips")
    print(format_summary(build(cfg, overwrite=overwrite)), flush=True)
    print(f"[build: {time.perf_counter() - t:.0f} s]", flush=True)
    t = _step(2, 4, "train: multi-view contrastive model (Landsat CNN + DEM CNN vs coordinate encoder)")
    bundle = Path(train(cfg, overwrite=overwrite)["bundle"])
    print(f"bundle: {bundle} [{time.perf_counter() - t:.0f} s]", flush=True)
    t = _step(3, 4, "enrich: embeddings for the 470 census-tract centroids")
    tracts_path = workdir / "olinda_tracts.parquet"
    olinda_tracts().to_parquet(tracts_path, index=False)
    enriched = Path(cfg.evaluate.table)
    summary = enrich_file(bundle, tracts_path, enriched)
    print(summary.line(), flush=True)
    t = _step(4, 4, "evaluate: residents ~ Poisson(exposure = area), spatial-block CV")
    ev = cfg.evaluate.model_copy(update={"bundle": str(bundle)})
    table = read_table(enriched, ev.lon_col, ev.lat_col)
    from geoembed.enrich import LocationEmbedder

    embedder = LocationEmbedder(bundle=str(bundle), lon_col=ev.lon_col, lat_col=ev.lat_col)
    result = run_evaluation(table, ev, embedder=embedder)
    out = ev.output or str(workdir / "report")
    report = write_report(result, out, cfg=ev, embedder=embedder, figures=ev.figures)
    pooled = summary_table(result.records)
    print(markdown_table(pooled))
    emb = pooled[pooled["features"] == "embeddings"]
    for _, r in emb.iterrows():
        ok = "meets" if r["deviance_ratio"] <= TARGET_RATIO else "misses"
        print(f"{r['model']} on embeddings: deviance ratio {r['deviance_ratio']:.3f} ({ok} the "
              f"<= {TARGET_RATIO} target)")
    print(f"report: {report}  (report.md, evaluation.json, figures)")
    print(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return {"report": str(report), "bundle": str(bundle), "pooled": pooled.to_dict("records")}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=str(DEMO_CONFIG), help="demo config (default configs/demo.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild artefacts made with other settings")


def run(args: argparse.Namespace) -> int:
    from geoembed.errors import ConfigError, InputError

    logging.getLogger("geoembed").setLevel(logging.WARNING)
    cfg = load_config(args.config)
    try:
        run_demo(cfg, overwrite=args.overwrite)
    except (InputError, ConfigError) as err:
        # The bundled demo's own scratch folder holds artefacts made with other settings (an older
        # version of geoembed or of configs/demo.yaml): rebuild them rather than stop the quick start.
        # A user's config keeps the error, so that nothing of theirs is replaced without --overwrite.
        own = Path(args.config).resolve() == DEMO_CONFIG.resolve()
        if args.overwrite or not own or "--overwrite" not in str(err):
            raise
        print(f"note: {err}\nnote: {cfg.workdir_path} is the demo's own scratch folder: rebuilding it", flush=True)
        run_demo(cfg, overwrite=True)
    return 0

