"""``geoembed demo``: the whole pipeline on the bundled real Olinda kit, then GeoCLIP and a distilled model.

1. ``configs/demo.yaml`` (``geoembed run``): sample -> build (Landsat + DEM chips) -> train the local model
   -> enrich the 470 census-tract centroids -> evaluate resident counts (Poisson, exposure = tract area)
   with coordinates against embeddings under spatial-block cross-validation.
2. ``configs/demo_distilled.yaml``: GeoCLIP's pretrained location encoder imported from the installed
   wheel with :data:`GEOCLIP_COMPONENTS` principal components fitted on the Olinda tracts
   (:func:`import_geoclip_step`); then ``geoembed run`` on that config: the same locations and views plus
   GeoCLIP as a teacher ``embedding`` view -> train the distilled model -> evaluate the tracts as
   polygons (each the mean over points sampled in it) with coordinates, GeoCLIP, the local model and the
   distilled model (``evaluate.embedding_sets``), GLM / GAM / GBM on the same folds.
3. The comparison table and what it shows, worded from the numbers (:func:`comparison_reading`),
   printed and written to ``<workdir of step 2>/comparison.md``.

Offline, one command; every step is resumable and skipped when up to date.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from geoembed.config import Config, add_settings_argument, load_config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DISTILLED_CONFIG = ROOT / "configs" / "demo_distilled.yaml"
OLINDA_TRACTS = ROOT / "data" / "olinda" / "olinda1.shp"
TARGET_RATIO = 0.60
GEOCLIP_COMPONENTS = 8  #: PCA components of GeoCLIP's 512-d embedding kept in the imported bundle
GEOCLIP_REFERENCE_N = 4096  #: reference points, uniform in the tracts' area, that the PCA is fitted on
#: The feature sets of the comparison (``evaluate.features`` of configs/demo_distilled.yaml).
COMPARED = ("coords", "geoclip", "local", "distilled")
DEMO_STATE = "demo.json"  # <workdir of step 2>/demo.json: what the imported GeoCLIP bundle was made from
#: A mean change of the deviance ratio smaller than this is "little" in the comparison's wording.
SMALL_CHANGE = 0.02


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


def olinda_tract_polygons(path: str | Path = OLINDA_TRACTS):
    """The tracts as polygons (a GeoDataFrame in the file's CRS) with the columns of :func:`olinda_tracts`
    (lon/lat: the same centroids, so that the spatial folds are the same as for the centroid table)."""
    import geopandas as gpd

    from geoembed.locations import read_vector

    g = read_vector(path)
    return gpd.GeoDataFrame(olinda_tracts(path), geometry=g.geometry.to_numpy(), crs=g.crs)


def write_tract_polygons(path: str | Path) -> Path:
    """The tract polygons (:func:`olinda_tract_polygons`) as GeoParquet at ``path``, written atomically and
    only when its bytes change (an unchanged file keeps its time stamp)."""
    import io

    from geoembed.io.atomic import atomic_path

    path = Path(path)
    buf = io.BytesIO()
    olinda_tract_polygons().to_parquet(buf, index=False)
    data = buf.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".parquet") as tmp:
        tmp.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------- GeoCLIP import
def teacher_bundle(cfg: Config) -> Path:
    """Where the distilled config wants the imported GeoCLIP bundle: its one ``embedding`` view's ``bundle``."""
    from geoembed.errors import ConfigError

    found = [v.bundle for v in cfg.views if v.kind == "embedding" and getattr(v, "bundle", None)]
    if len(found) != 1:
        raise ConfigError(f"the distilled demo config needs exactly one embedding view with a bundle (the "
                          f"GeoCLIP teacher), found {len(found)}")
    return Path(found[0])


def import_geoclip_step(output: Path, state_dir: Path, reference: str | Path = OLINDA_TRACTS,
                        components: int = GEOCLIP_COMPONENTS, n: int = GEOCLIP_REFERENCE_N) -> tuple[bool, str]:
    """Import GeoCLIP from the installed wheel into ``output`` with ``components`` PCA components fitted on
    ``n`` points in the ``reference`` polygons, unless ``state_dir/demo.json`` records the same request for
    the bundle that is there. Returns (up to date, summary line)."""
    from geoembed.enrich.enricher import load_bundle_cached
    from geoembed.errors import InputError
    from geoembed.importers.geoclip import find_wheel_weights, import_geoclip
    from geoembed.importers.reduce import ReductionRequest
    from geoembed.io.atomic import atomic_write_json
    from geoembed.io.fingerprint import file_fingerprint, text_fingerprint
    from geoembed.version import __version__

    weights = find_wheel_weights()[0]
    job = text_fingerprint({"weights": file_fingerprint(weights), "reference": file_fingerprint(reference),
                            "components": components, "n": n, "version": __version__})
    state_file = state_dir / DEMO_STATE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    done = state.get("geoclip", {}) if isinstance(state, dict) else {}
    try:
        fresh = done.get("job") == job and load_bundle_cached(output).fingerprint == done.get("bundle")
    except InputError:
        fresh = False
    if not fresh:
        req = ReductionRequest(n_components=components, polygon=str(reference), n=n, seed=0)
        import_geoclip(output, reduction=req, overwrite=True)  # the demo's own scratch bundle
    bundle = load_bundle_cached(output)
    if not fresh:
        atomic_write_json(state_file, {**(state if isinstance(state, dict) else {}),
                                       "geoclip": {"job": job, "bundle": bundle.fingerprint}})
    red = bundle.reduction
    share = red.explained_variance.sum() / float(red.info["total_variance"])
    what = (f"GeoCLIP {bundle.raw_embedding_dim}-d -> {bundle.embedding_dim} components ({share:.1%} of its "
            f"variance over the tracts) -> {output}")
    return fresh, ("up to date: " if fresh else "imported ") + what


# --------------------------------------------------------------------------------------- the comparison
def comparison_table(pooled: pd.DataFrame, features: tuple[str, ...] = COMPARED) -> pd.DataFrame:
    """Pooled deviance ratios, one row per model, one column per feature set (in ``features`` order)."""
    wide = pooled.pivot(index="model", columns="features", values="deviance_ratio")
    order = [m for m in ("glm", "gam", "gbm") if m in wide.index] + [m for m in wide.index
                                                                     if m not in ("glm", "gam", "gbm")]
    return wide.loc[order, [f for f in features if f in wide.columns]].rename_axis(columns=None)


def _pairs(table: pd.DataFrame, a: str, b: str) -> str:
    return ", ".join(f"{m.upper()} {table.at[m, a]:.3f} -> {table.at[m, b]:.3f}" for m in table.index)


def _split(table: pd.DataFrame, base: str, other: str) -> tuple[list[str], list[str]]:
    """(models where ``other`` beats ``base`` by more than SMALL_CHANGE, models where it is worse by more)."""
    diff = table[other] - table[base]
    return ([m.upper() for m in table.index if diff[m] < -SMALL_CHANGE],
            [m.upper() for m in table.index if diff[m] > SMALL_CHANGE])


def comparison_reading(table: pd.DataFrame, facts: dict) -> list[str]:
    """What the comparison shows, worded from its numbers (lower deviance ratio is better; a change under
    :data:`SMALL_CHANGE` counts as none): GeoCLIP against coordinates and the local model, the distilled
    model against the local one, the best set per model. ``facts``: GeoCLIP's ``components``,
    ``finest_wavelength_km`` and ``resolution_km``, the median tract's side ``tract_km``, and ``epochs``
    (``local``, ``distilled``: epochs each model trained)."""
    n = len(table)
    scale = (f"its finest random-Fourier wavelength is about {facts['finest_wavelength_km']:.0f} km (effective "
             f"resolution about {facts['resolution_km']:.0f} km, its model card), the median tract about "
             f"{facts['tract_km']:.1f} km across")
    out = [f"GeoCLIP ({facts['components']} components) against coordinates: {_pairs(table, 'coords', 'geoclip')}; "
           f"the local model: {_pairs(table, 'coords', 'local')}."]
    better, worse = _split(table, "coords", "geoclip")
    if not better:
        out.append(f"At the scale of one city GeoCLIP adds nothing beyond coordinates (no model better by "
                   f"{SMALL_CHANGE} or more{'; worse for ' + ', '.join(worse) if worse else ''}): {scale}.")
    elif worse:
        out.append(f"GeoCLIP is mixed at the scale of one city: better than coordinates for {', '.join(better)}, "
                   f"worse for {', '.join(worse)}; {scale}.")
    else:
        out.append(f"GeoCLIP improves on coordinates for {', '.join(better)}, although {scale}.")
    local_better, local_worse = _split(table, "geoclip", "local")
    if local_better and not local_worse:
        who = "every model" if len(local_better) == n else ", ".join(local_better)
        out.append(f"The local model, trained on this city's Landsat and DEM, is better than GeoCLIP for {who} "
                   f"(mean {table['local'].mean():.3f} against {table['geoclip'].mean():.3f}). GeoCLIP's value is "
                   "where there are no local views (countries, regions without imagery), which this demo does "
                   "not measure.")
    better, worse = _split(table, "local", "distilled")
    parts = ([f"better for {', '.join(better)}"] if better else []) + ([f"worse for {', '.join(worse)}"]
                                                                       if worse else [])
    ep = facts["epochs"]
    out.append(f"Distilled (GeoCLIP teacher + Landsat + DEM, {ep['distilled']} epochs) against the local model "
               f"(Landsat + DEM, {ep['local']} epochs): {_pairs(table, 'local', 'distilled')}; the distilled model "
               f"is {' and '.join(parts) if parts else f'within {SMALL_CHANGE} of it for every model'}.")
    best = table.idxmin(axis=1)
    out.append("Best per model: " + ", ".join(f"{m.upper()} {best[m]} ({table.at[m, best[m]]:.3f})"
                                               for m in table.index) + ".")
    return out


def _geoclip_facts(bundle_path: Path) -> dict:
    from geoembed.enrich.enricher import load_bundle_cached
    from geoembed.importers.geoclip import finest_wavelength_km

    b = load_bundle_cached(bundle_path)
    return {"components": b.embedding_dim, "resolution_km": float(b.card["effective_resolution_km"]),
            "finest_wavelength_km": min(finest_wavelength_km(br.rff) for br in b.encoder.network.branches)}


def _epochs(bundle: str | Path) -> int | str:
    """Epochs a trained bundle ran (its metrics.json), or ``?``."""
    try:
        return int(json.loads((Path(bundle) / "metrics.json").read_text())["epochs_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def run_distilled(cfg: Config, local_bundle: str | Path | None = None, overwrite: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """Steps 2 and 3 of the demo on ``cfg`` (configs/demo_distilled.yaml): import GeoCLIP, write the tract
    polygons (``evaluate.table``), ``geoembed run``, then the comparison. ``local_bundle``: the bundle of
    step 1, checked against the config's ``local`` embedding set. Returns the comparison and paths."""
    from geoembed.errors import ConfigError
    from geoembed.evaluate.core import split_label
    from geoembed.evaluate.report import markdown_table
    from geoembed.io.atomic import atomic_write_text
    from geoembed.run import run_pipeline

    cfg.require("locations", "views", "train", "evaluate")
    ev = cfg.evaluate
    if tuple(ev.features) != COMPARED or not ev.table:
        raise ConfigError(f"the distilled demo config's evaluate.features must be {list(COMPARED)}, with an "
                          f"evaluate.table, got {ev.features}")
    local = ev.embedding_sets["local"].bundle
    if local_bundle is not None and local is not None and Path(local).resolve() != Path(local_bundle).resolve():
        raise ConfigError(f"evaluate.embedding_sets.local.bundle is {local}, but the local model of the first "
                          f"step is {local_bundle}")
    cfg.workdir_path.mkdir(parents=True, exist_ok=True)
    geoclip = teacher_bundle(cfg)
    echo("[GeoCLIP] import: the pretrained location encoder from the installed geoclip wheel")
    t = time.perf_counter()
    fresh, line = import_geoclip_step(geoclip, cfg.workdir_path)
    echo(f"import: {line} [{time.perf_counter() - t:.1f} s]")
    write_tract_polygons(ev.table)
    results = run_pipeline(cfg, overwrite=overwrite, echo=echo)
    pooled = results["evaluate"].outputs["pooled"]
    table = comparison_table(pooled)
    facts = {**_geoclip_facts(geoclip), "tract_km": float(np.sqrt(olinda_tracts()["area_km2"].median())),
             "epochs": {"local": _epochs(local), "distilled": _epochs(results["train"].outputs["bundle"])}}
    reading = comparison_reading(table, facts)
    report = results["evaluate"].outputs["report"]
    text = "\n".join([
        "# Olinda tracts: coordinates, GeoCLIP, the local model and the distilled model", "",
        f"Pooled out-of-fold deviance ratio (held-out deviance / exposure-only deviance; lower is better) of "
        f"{ev.target} ({ev.family}, exposure {ev.exposure}), split {split_label(ev)}, the same folds for every "
        f"column. Tracts as polygons: "
        f"each embedding is the mean over {ev.points_per_polygon} points sampled in the tract. Full report: "
        f"{report}/report.md.", "",
        markdown_table(table.reset_index()), "", *[f"- {r}" for r in reading], ""])
    atomic_write_text(cfg.workdir_path / "comparison.md", text)
    echo("\n" + text)
    return {"comparison": table, "reading": reading, "report": report, "bundle": results["train"].outputs["bundle"],
            "geoclip": str(geoclip), "pooled": pooled.to_dict("records")}


def run_demo(cfg: Config, overwrite: bool = False, distilled: Config | None = None) -> dict:
    """The demo: write the tracts table (``enrich.input``), then ``geoembed run`` on ``cfg``
    (:func:`geoembed.run.run_pipeline`); prints each stage and the pooled table against the target; then,
    with ``distilled`` (configs/demo_distilled.yaml), :func:`run_distilled`. Returns the report and bundle
    paths and the pooled evaluation records (and ``distilled``: what :func:`run_distilled` returns)."""
    from geoembed.run import run_pipeline

    cfg.require("locations", "views", "train", "enrich", "evaluate")
    t_all = time.perf_counter()
    write_tracts_table(cfg.enrich.input)
    echo = lambda text: print(text, flush=True)  # noqa: E731
    results = run_pipeline(cfg, overwrite=overwrite, echo=echo)
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
    out = {"report": report, "bundle": results["train"].outputs["bundle"], "pooled": pooled.to_dict("records")}
    if distilled is not None:
        out["distilled"] = run_distilled(distilled, local_bundle=out["bundle"], overwrite=overwrite, echo=echo)
        print(f"comparison: {distilled.workdir_path / 'comparison.md'}")
    print(f"demo finished in {time.perf_counter() - t_all:.0f} s")
    return out


def _seed_spread(cfg: Config) -> list[str]:
    """How many seeds back the printed figures (:mod:`geoembed.seeds`)."""
    from geoembed.seeds import seed_spread_lines

    return seed_spread_lines(cfg)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=str(DEMO_CONFIG), help="demo config (default configs/demo.yaml)")
    add_settings_argument(parser)
    parser.add_argument("--distilled", default=None,
                        help="config of the GeoCLIP / distilled comparison run after it (default "
                             "configs/demo_distilled.yaml with the default -c; none otherwise)")
    parser.add_argument("--no-distilled", action="store_true", help="stop after the first config")
    parser.add_argument("--overwrite", action="store_true", help="rebuild artefacts made with other settings")


def run(args: argparse.Namespace) -> int:
    from geoembed.errors import ConfigError, InputError

    logging.getLogger("geoembed").setLevel(logging.WARNING)
    cfg = load_config(args.config, settings=getattr(args, "settings", ()))
    own = Path(args.config).resolve() == DEMO_CONFIG.resolve()
    second = getattr(args, "distilled", None) or (str(DISTILLED_CONFIG) if own else None)
    if getattr(args, "no_distilled", False):
        second = None
    distilled = load_config(second) if second else None
    try:
        run_demo(cfg, overwrite=args.overwrite, distilled=distilled)
    except (InputError, ConfigError) as err:
        # The bundled demo's own scratch folders hold artefacts made with other settings (an older
        # version of geoembed or of configs/demo*.yaml): rebuild them rather than stop the quick start.
        # A user's config keeps the error, so that nothing of theirs is replaced without --overwrite.
        mine = own and (second is None or Path(second).resolve() == DISTILLED_CONFIG.resolve())
        if args.overwrite or not mine or "--overwrite" not in str(err):
            raise
        where = ", ".join(str(c.workdir_path) for c in (cfg, distilled) if c is not None)
        print(f"note: {err}\nnote: {where}: the demo's own scratch folders: rebuilding them", flush=True)
        run_demo(cfg, overwrite=True, distilled=distilled)
    return 0
