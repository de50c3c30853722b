"""``geoembed demo``: the whole pipeline on the bundled real Olinda kit.

sample -> build (Landsat + DEM chips) -> train -> enrich the 470 census-tract centroids -> evaluate
resident counts (Poisson, exposure = tract area) with coordinates against embeddings under
spatial-block cross-validation. The demo writes the tracts table and runs ``geoembed run`` on
``configs/demo.yaml``: every stage is resumable and skipped when up to date.
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


def write_tracts_table(path: str | Path) -> Path:
    """The tracts table (:func:`olinda_tracts`) as Parquet at ``path``, written atomically and only when
    its content changed (an unchanged table keeps the enriched one up to date)."""
    from geoembed.io.atomic import atomic_path

    path = Path(path)
    table = olinda_tracts()
    if path.is_file():
        try:
            if pd.read_parquet(path).equals(table):
                return path
        except (OSError, ValueError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return path


def run_demo(cfg: Config, overwrite: bool = False) -> dict:
    """The demo: write the tracts table (``enrich.input``), then ``geoembed run`` on ``cfg``
    (:func:`geoembed.run.run_pipeline`); prints each stage and the pooled table against the target.
    Returns the report and bundle paths and the pooled evaluation records."""
    from geoembed.run import run_pipeline

    cfg.require("locations", "views", "train", "enrich", "evaluate")
    t_all = time.perf_counter()
    write_tracts_table(cfg.enrich.input)
    results = run_pipeline(cfg, overwrite=overwrite, echo=lambda text: print(text, flush=True))
    pooled = results["evaluate"].outputs["pooled"]
    emb = pooled[pooled["features"] == "embeddings"]
    for _, r in emb.iterrows():
        ok = "meets" if r["deviance_ratio"] <= TARGET_RATIO else "misses"
        print(f"{r['model']} on embeddings: deviance ratio {r['deviance_ratio']:.3f} ({ok} the "
              f"<= {TARGET_RATIO} target)")
    for line in _seed_spread(cfg):
        print(line)
    report = results["evaluate"].outputs["report"]
    print(f"report: {report}  (report.md, evaluation.json, figures)")
    print(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return {"report": report, "bundle": results["train"].outputs["bundle"], "pooled": pooled.to_dict("records")}


def _seed_spread(cfg: Config) -> list[str]:
    """How many seeds back the printed figures (:mod:`geoembed.seeds`)."""
    from geoembed.seeds import seed_spread_lines

    return seed_spread_lines(cfg)


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

