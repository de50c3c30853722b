"""The build stage: sample (or read) locations, then build every configured view with Dask.

Artefacts under ``<workdir>``: ``config.resolved.yaml``, ``locations.parquet``, ``views/<name>/``.
Every step is resumable: finished artefacts whose inputs and settings are unchanged are kept, a view
store killed mid-build is completed chunk by chunk, and a second rerun does nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from geoembed.config import Config, add_settings_argument, load_config, save_resolved
from geoembed.config.build import RasterViewConfig, ViewConfig
from geoembed.errors import InputError
from geoembed.io.fingerprint import file_fingerprint, source_fingerprint, text_fingerprint
from geoembed.io.locations import read_locations, read_locations_meta, write_locations
from geoembed.io.rasters import raster_fingerprint
from geoembed.io.viewstore import ViewStore

log = logging.getLogger(__name__)

LOCATIONS_FILE = "locations.parquet"
VIEWS_DIR = "views"
RESOLVED_CONFIG = "config.resolved.yaml"


def coverage_sources(cfg: Config) -> list[str]:
    """Rasters a location must lie inside: configured, else every view's footprint sources (a raster
    view's rasters; a STAC raster view has none: the region alone says where locations go)."""
    assert cfg.locations is not None
    if cfg.locations.coverage:
        return list(cfg.locations.coverage)
    return [s for v in cfg.views for s in v.footprint_sources()]


def raster_options(cfg: Config) -> dict:
    """The CRS and nodata overrides the config gives raster files (a raster view's ``crs`` and
    ``nodata`` entries, by source), for the same files as region, weight or coverage rasters."""
    from geoembed.views.raster.validarea import RasterOptions

    out: dict = {}
    for v in cfg.views:
        if isinstance(v, RasterViewConfig) and v.sources is not None:
            for k, src in enumerate(v.sources):
                crs, nodata = v.crs[k] if v.crs else None, v.nodata[k] if v.nodata else None
                if crs is not None or nodata is not None:
                    out.setdefault(src, RasterOptions(crs, nodata, f"view {v.name}: source {k}"))
    return out


def _locations_fingerprints(cfg: Config, cov: list[str], options: dict) -> tuple[str, str | None]:
    """What the locations depend on, and the same as geoembed fingerprinted it before locations were
    kept to the rasters' data (None where such a build could not have had these settings: a ``crs``
    override). Keys added since appear only when they apply."""
    loc = cfg.locations
    assert loc is not None
    parts = {
        "locations": loc.model_dump(mode="json"),
        "seed": cfg.seed,
        "coverage": {s: source_fingerprint(s) for s in cov},
        "points": file_fingerprint(loc.points) if loc.points else None,
    }
    legacy = text_fingerprint(parts)
    rasters = [*cov, *(r for r in (loc.region and loc.region.raster, loc.weight and loc.weight.raster) if r)]
    used = {s: [options[s].crs, options[s].nodata] for s in rasters if s in options}
    if used:  # the valid-data areas depend on them
        parts["raster_options"] = used
    for key, r in (("region_raster", loc.region and loc.region.raster),
                   ("weight_raster", loc.weight and loc.weight.raster)):
        if r and r not in cov:
            parts[key] = source_fingerprint(r)
    # a VRT (or a raster with sidecars): every file GDAL reads for it, so a changed tile is noticed
    behind = {r: raster_fingerprint(r) for r in dict.fromkeys(rasters)}
    behind = {r: fp for r, fp in behind.items() if fp != source_fingerprint(r)}
    if behind:
        parts["raster_files"] = behind
    if any(crs is not None for crs, _ in used.values()) or (loc.region and loc.region.crs) or \
            (loc.weight and loc.weight.crs):
        legacy = None
    return text_fingerprint(parts), legacy


def _coverage_areas(cov: list[str], options: dict) -> list:
    from geoembed.views.raster.validarea import raster_area

    return [raster_area(s, options.get(s), where=options[s].origin if s in options else "locations.coverage")
            for s in cov]


def _all_on_data(cfg: Config, cov: list[str], options: dict, path: Path) -> bool:
    """Whether every location of an existing file lies on data of each coverage raster and of the
    region raster (a file from before locations were kept to the rasters' data may not)."""
    from geoembed.locations import coverage_mask, region_options
    from geoembed.views.raster.validarea import raster_area

    areas = _coverage_areas(cov, options)
    region = cfg.locations.region if cfg.locations else None
    if region is not None and region.raster is not None:
        areas.append(raster_area(region.raster, region_options(region, options), where="locations.region.raster"))
    gdf = read_locations(path)
    return bool(coverage_mask(gdf["lon"].to_numpy(), gdf["lat"].to_numpy(), areas).all())


def build_locations(cfg: Config, overwrite: bool = False) -> tuple[Path, dict]:
    """Write ``<workdir>/locations.parquet`` unless an identical one exists. Returns (path, metadata).

    Locations lie on data of every coverage raster and, with ``region: raster``, of the region raster
    (:mod:`geoembed.locations`; the metadata says ``valid_area``). A file written before that rule,
    with the same settings and inputs, is kept while all its locations lie on data; else it is
    rebuilt like a changed one (``overwrite``)."""
    from geoembed.locations import make_location_table

    assert cfg.locations is not None
    path = cfg.workdir_path / LOCATIONS_FILE
    cov = coverage_sources(cfg)
    options = raster_options(cfg)
    fingerprint, legacy = _locations_fingerprints(cfg, cov, options)
    if path.exists():
        meta = read_locations_meta(path)
        stored = meta.get("build_fingerprint")
        earlier = not meta.get("valid_area") and stored == legacy
        if (stored == fingerprint and meta.get("valid_area")) or (earlier and _all_on_data(cfg, cov, options, path)):
            log.info("locations: %s is up to date", path)
            return path, meta
        if not overwrite:
            why = ("was sampled by an earlier geoembed, some of its locations on pixels without data" if earlier
                   else "was built from different settings or inputs")
            raise InputError(f"{path} {why}; pass --overwrite to rebuild it (views built on it are rebuilt too)")
    gdf, meta = make_location_table(cfg.locations, _coverage_areas(cov, options), cfg.seed, options)
    meta = {**meta, "build_fingerprint": fingerprint, "coverage": cov, "valid_area": True}
    write_locations(gdf, path, meta)
    return path, meta


def build_view(cfg: Config, view: ViewConfig, overwrite: bool = False) -> ViewStore:
    """Build one view store for the run's locations (any registered kind, through the one driver)."""
    from geoembed.views.driver import build_view_store

    locations = read_locations(cfg.workdir_path / LOCATIONS_FILE)
    out_dir = cfg.workdir_path / VIEWS_DIR / view.name
    return build_view_store(view, locations, out_dir, dask_cfg=cfg.dask, overwrite=overwrite)


def _store_state(path: Path) -> tuple[str | None, int]:
    """(build fingerprint, finished chunks) of the view store at ``path`` (None, 0 when there is none)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return None, 0
    return meta.get("build_fingerprint"), len(list((path / "_chunks").glob("*.json")))


def build(cfg: Config, overwrite: bool = False, only: list[str] | None = None) -> dict:
    """Run the build stage; returns a summary of what was produced: per view its rows, valid rows,
    arrays and ``computed_chunks`` (0: it was up to date), and whether the locations were
    ``rebuilt``."""
    cfg.require("locations", "views")
    workdir = cfg.workdir_path
    workdir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, workdir / RESOLVED_CONFIG)
    summary: dict = {"workdir": str(workdir)}
    t0 = time.perf_counter()
    loc_file = workdir / LOCATIONS_FILE
    before = loc_file.stat().st_mtime_ns if loc_file.exists() else None
    loc_path, loc_meta = build_locations(cfg, overwrite=overwrite)
    s = loc_meta["sampling"]
    summary["locations"] = {"path": str(loc_path), "kept": s["kept"],
                            "excluded_no_coverage": s["excluded_no_coverage"], "blocks": loc_meta["n_blocks"],
                            "rebuilt": before != loc_path.stat().st_mtime_ns}
    summary["views"] = {}
    for view in cfg.views:
        if only and view.name not in only:
            continue
        t = time.perf_counter()
        old_fp, old_done = _store_state(workdir / VIEWS_DIR / view.name)
        store = build_view(cfg, view, overwrite=overwrite)
        resumed = old_fp == store.meta["build_fingerprint"] and not overwrite  # else built from scratch
        summary["views"][view.name] = {
            "computed_chunks": store.n_chunks - (old_done if resumed else 0),
            "path": str(store.path), "kind": store.meta["kind"], "rows": store.n_rows,
            "valid": store.meta.get("n_valid"),
            "arrays": {k: list(v.shape) for k, v in store.arrays.items()},
            "seconds": round(time.perf_counter() - t, 1),
        }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    return summary


def format_summary(summary: dict) -> str:
    """Human-readable lines for the CLI."""
    loc = summary["locations"]
    lines = [f"workdir: {summary['workdir']}",
             f"locations: {loc['kept']} kept, {loc['excluded_no_coverage']} excluded (no coverage), "
             f"{loc['blocks']} spatial blocks -> {loc['path']}" + ("" if loc.get("rebuilt", True) else " (up to date)")]
    for name, v in summary["views"].items():
        arrays = ", ".join(f"{k} {tuple(s)}" for k, s in v["arrays"].items())
        lines.append(f"view {name} ({v['kind']}): {v['valid']} of {v['rows']} rows valid; {arrays} "
                     f"[{v['seconds']} s] -> {v['path']}" + ("" if v.get("computed_chunks", 1) else " (up to date)"))
    lines.append(f"build finished in {summary['seconds']} s")
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="YAML config with locations and views sections")
    add_settings_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild artefacts built from different settings instead of stopping")
    parser.add_argument("--only", nargs="+", metavar="VIEW", help="build only these views")
    parser.add_argument("--scheduler", help="Dask distributed scheduler address (overrides config/env)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, settings=args.settings)
    if args.scheduler:
        cfg.dask.scheduler = args.scheduler
    summary = build(cfg, overwrite=args.overwrite, only=args.only)
    print(format_summary(summary))
    return 0
