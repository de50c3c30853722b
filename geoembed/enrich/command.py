"""``geoembed enrich``: add embedding columns to a table with coordinates.

    geoembed enrich --bundle B --input IN --output OUT [--lon-col C --lat-col C] [--crs EPSG:XXXX]
                    [--layer NAME] [--infer-types] [--on-invalid error|null] [--chunk-rows N]
                    [--points-per-polygon N] [--polygon-seed S] [--weight-raster R.tif]
                    [--reduction R.json] [--scheduler ADDR] [--workers N]
    geoembed enrich fit-reduction --bundle B --input REF --output R.json --n-components K [--whiten]

IN is a CSV (optionally compressed), Parquet, GeoParquet, shapefile, GeoPackage (--layer for one of
several layers), GeoJSON or FlatGeobuf file, or a folder of Parquet parts (then OUT is a folder of parts
with the same names, computed on Dask: a distributed scheduler from --scheduler or env
GEOEMBED_SCHEDULER, else locally). CSV columns other than the coordinates keep their text unless
--infer-types. Coordinates in a projected CRS (x/y in metres): --crs names it. A table whose geometry
holds polygons gets one embedding per polygon: the mean over --points-per-polygon points sampled
uniformly in it (deterministic for --polygon-seed), weighted by the density raster --weight-raster when
given. ``fit-reduction`` fits a PCA (``--whiten``: whitened PCA) on a reference table's embeddings and
writes it as JSON for ``--reduction``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoembed.errors import InputError


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a usage error otherwise)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed enrich`` (and of ``geoembed enrich fit-reduction``)."""
    from geoembed.enrich.enricher import DEFAULT_EMBED_BATCH
    from geoembed.enrich.polygons import DEFAULT_POINTS

    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.add_argument("action", nargs="?", choices=("run", "fit-reduction"), default="run",
                        help="run (default): enrich IN into OUT; fit-reduction: fit a PCA on IN, write OUT")
    parser.add_argument("--bundle", required=True, help="model bundle folder (from `geoembed train`)")
    parser.add_argument("--input", required=True, help="CSV / Parquet / GeoParquet / shapefile / GeoPackage "
                                                       "file, or a folder of Parquet parts")
    parser.add_argument("--output", required=True, help="output file (.parquet or .csv[.gz]) or folder; "
                                                        "for fit-reduction a .json file")
    parser.add_argument("--lon-col", default=None, help="longitude column (default 'lon'; for GeoParquet "
                                                        "the point geometry unless columns are given)")
    parser.add_argument("--lat-col", default=None, help="latitude column (default 'lat')")
    parser.add_argument("--crs", default=None,
                        help="CRS of the coordinate columns when they are not lon/lat degrees (e.g. "
                             "EPSG:31985 for x/y in UTM metres), or of a geometry whose file declares none")
    parser.add_argument("--layer", default=None, help="layer of a GeoPackage (or other vector file) with "
                                                      "several layers")
    parser.add_argument("--infer-types", action="store_true",
                        help="CSV: infer column types (numbers, dates) instead of keeping every column's text")
    parser.add_argument("--points-per-polygon", type=positive_int, default=DEFAULT_POINTS,
                        help=f"polygons: points sampled in each (default {DEFAULT_POINTS})")
    parser.add_argument("--polygon-seed", type=int, default=0, help="polygons: seed of the sampled points")
    parser.add_argument("--weight-raster", default=None,
                        help="polygons: density raster (population, exposure) weighting the sampled points")
    parser.add_argument("--on-invalid", choices=("error", "null"), default="error",
                        help="invalid coordinates: error (default, lists the first bad rows) or null "
                             "(empty embeddings and a geoembed_invalid reason)")
    parser.add_argument("--chunk-rows", type=positive_int, default=262_144,
                        help="rows per streamed chunk (default 262144)")
    parser.add_argument("--embed-batch", type=positive_int, default=DEFAULT_EMBED_BATCH,
                        help=f"rows per encoder call (default {DEFAULT_EMBED_BATCH})")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="embedding threads for a file, Dask workers for a local folder run "
                             "(default: the number of cores, at most 8)")
    parser.add_argument("--reduction", default=None, help="reduction JSON from `fit-reduction`: output "
                                                          "emb_pc_* components instead of emb_*")
    parser.add_argument("--scheduler", default=None,
                        help="Dask distributed scheduler address for a folder of parts (default: env "
                             "GEOEMBED_SCHEDULER, else local)")
    parser.add_argument("--n-components", type=positive_int, default=None,
                        help="fit-reduction: number of components to keep")
    parser.add_argument("--whiten", action="store_true",
                        help="fit-reduction: scale components to unit variance on the reference table")


def run(args: argparse.Namespace) -> int:
    """Run ``geoembed enrich``; prints a summary line, returns the exit code."""
    from geoembed.runtime import progress_enabled

    inp, out = Path(args.input), Path(args.output)
    if args.action == "fit-reduction":
        from geoembed.enrich.fit_reduction import fit_reduction_file

        if args.n_components is None:
            raise InputError("fit-reduction needs --n-components K")
        if args.reduction is not None:
            raise InputError("--reduction is for enriching; fit-reduction writes a new one to --output")
        red = fit_reduction_file(args.bundle, inp, out, n_components=args.n_components,
                                 method="whiten" if args.whiten else "pca", lon_col=args.lon_col,
                                 lat_col=args.lat_col, on_invalid=args.on_invalid,
                                 chunk_rows=args.chunk_rows, workers=args.workers, crs=args.crs,
                                 layer=args.layer)
        total = float(red.info.get("total_variance", 0.0)) or None
        share = f", {red.explained_variance.sum() / total:.1%} of the variance" if total else ""
        print(f"fitted a {red.n_components}-component {red.method} reduction on {red.n_samples:,} rows"
              f"{share} -> {out}")
        return 0
    if args.n_components is not None or args.whiten:
        raise InputError("--n-components/--whiten belong to `geoembed enrich fit-reduction`; to enrich "
                         "with a reduction, pass its file with --reduction")
    polygons = {"points_per_polygon": args.points_per_polygon, "polygon_seed": args.polygon_seed,
                "weight_raster": args.weight_raster}
    if inp.is_dir():
        from geoembed.enrich.parts import enrich_directory

        if args.layer is not None or args.infer_types:
            raise InputError("--layer and --infer-types apply to a single file; a folder holds Parquet parts")
        summary = enrich_directory(args.bundle, inp, out, lon_col=args.lon_col, lat_col=args.lat_col,
                                   on_invalid=args.on_invalid, chunk_rows=args.chunk_rows,
                                   reduction=args.reduction, embed_batch=args.embed_batch,
                                   scheduler=args.scheduler, num_workers=args.workers, crs=args.crs,
                                   **polygons)
    else:
        from geoembed.enrich.driver import enrich_file

        if args.scheduler:
            raise InputError("--scheduler applies to a folder of Parquet parts; a single file is "
                             "enriched locally (split it into parts to use a cluster)")
        summary = enrich_file(args.bundle, inp, out, lon_col=args.lon_col, lat_col=args.lat_col,
                              on_invalid=args.on_invalid, chunk_rows=args.chunk_rows,
                              reduction=args.reduction, embed_batch=args.embed_batch, workers=args.workers,
                              progress=progress_enabled(), infer_types=args.infer_types, crs=args.crs,
                              layer=args.layer, **polygons)
    print(summary.line())
    if summary.invalid:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(summary.by_reason.items()))
        print(f"  invalid rows ({reasons}) have empty embeddings; see column geoembed_invalid")
    if summary.repaired:
        print(f"  {summary.repaired:,} self-intersecting polygon(s) were repaired with make_valid before sampling")
    return 0
