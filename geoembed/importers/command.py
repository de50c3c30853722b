"""``geoembed import``: turn someone else's location encoder into an ordinary geoembed bundle.

    geoembed import geoclip --output DIR [--weights PATH]
    geoembed import satclip CKPT --output DIR [--prefix P] [--ignore-hparam NAME] [--analytic-m0 pi|1]
    geoembed import bundle SRC --output DIR          (a geoembed bundle, e.g. a trained one)

Each accepts --card FILE (YAML/JSON fields added to, or replacing, the model card) and a reduction
shipped inside the bundle: --components K [--whiten] fitted on one reference, --reference-bbox
LON0 LAT0 LON1 LAT1, --reference-polygon FILE, --reference-raster FILE (n points drawn uniformly in
area, --reference-n, --seed) or --reference-table FILE (its --lon-col/--lat-col coordinates).
The bundle is written atomically; an existing --output is kept unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from geoembed.enrich.command import positive_int
from geoembed.errors import InputError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--card", default=None, help="YAML/JSON file of model-card fields to add or replace")
    g = p.add_argument_group("reduction shipped in the bundle (optional)")
    g.add_argument("--components", type=positive_int, default=None, help="keep K principal components")
    g.add_argument("--whiten", action="store_true", help="scale components to unit variance on the reference")
    g.add_argument("--reference-bbox", type=float, nargs=4, metavar=("LON0", "LAT0", "LON1", "LAT1"), default=None,
                   help="reference region: a lon/lat box (lon0 > lon1 crosses the antimeridian)")
    g.add_argument("--reference-polygon", default=None, help="reference region: a polygon file (any CRS)")
    g.add_argument("--reference-raster", default=None, help="reference region: a raster's footprint")
    g.add_argument("--reference-table", default=None, help="reference locations: a table's coordinates")
    g.add_argument("--lon-col", default="lon", help="longitude column of --reference-table (default lon)")
    g.add_argument("--lat-col", default="lat", help="latitude column of --reference-table (default lat)")
    g.add_argument("--reference-n", type=positive_int, default=20_000,
                   help="locations drawn in a reference region (default 20000)")
    g.add_argument("--seed", type=int, default=0, help="seed of the reference draw (default 0)")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``geoembed import {geoclip,satclip,bundle}``."""
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    g = sub.add_parser("geoclip", help="GeoCLIP's pretrained location encoder (weights of the geoclip wheel)")
    g.add_argument("--weights", default=None, help="a GeoCLIP location-encoder state dict (default: the "
                                                   "installed geoclip wheel's weight file)")
    g.add_argument("--sigmas", default="1,16,256", help="the branches' RFF scales (default 1,16,256)")
    _add_common(g)
    s = sub.add_parser("satclip", help="a SatCLIP-format (Lightning) checkpoint: spherical harmonics + SIREN")
    s.add_argument("checkpoint", help="the .ckpt file")
    s.add_argument("--prefix", default=None, help="state_dict key prefix of the SIREN (default: found, e.g. "
                                                  "model.location.nnet.)")
    s.add_argument("--ignore-hparam", action="append", default=[], metavar="NAME",
                   help="a hyper-parameter known not to change the location encoder (repeatable)")
    s.add_argument("--analytic-m0", choices=("pi", "1"), default="pi",
                   help="harmonics_calculation 'analytic': the factor of the m = 0 terms; SatCLIP's generated "
                        "functions carry pi (default), regenerated ones 1")
    s.add_argument("--footprint-bbox", type=float, nargs=4, metavar=("LON0", "LAT0", "LON1", "LAT1"),
                   default=None, help="the model's training region (default: global, nothing out of support)")
    s.add_argument("--out-of-support-km", type=float, default=50.0,
                   help="with --footprint-bbox: flag rows farther than this (default 50)")
    _add_common(s)
    b = sub.add_parser("bundle", help="a geoembed bundle (e.g. trained): add a reduction and/or a model card")
    b.add_argument("source", help="the bundle folder to read")
    _add_common(b)


def _card_file(path: str | None) -> dict | None:
    if path is None:
        return None
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as err:
        raise InputError(f"cannot read model card file {p}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise InputError(f"model card file {p} is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"model card file {p} must hold a mapping of fields, got {type(data).__name__}")
    return data


def _reduction(args: argparse.Namespace):
    from geoembed.importers.reduce import ReductionRequest

    refs = (args.reference_bbox, args.reference_polygon, args.reference_raster, args.reference_table)
    if args.components is None:
        if args.whiten or any(r is not None for r in refs):
            raise InputError("--whiten and --reference-* need --components K")
        return None
    return ReductionRequest(n_components=args.components, whiten=args.whiten,
                            bbox=tuple(args.reference_bbox) if args.reference_bbox else None,
                            polygon=args.reference_polygon, raster=args.reference_raster,
                            table=args.reference_table, lon_col=args.lon_col, lat_col=args.lat_col,
                            n=args.reference_n, seed=args.seed)


def _footprint_bbox(bbox):
    if bbox is None:
        return None
    from pydantic import ValidationError

    from geoembed.config.build import RegionConfig
    from geoembed.locations import region_geometry

    try:
        return region_geometry(RegionConfig(bbox=tuple(float(v) for v in bbox)))
    except ValidationError as err:
        raise InputError(f"--footprint-bbox: {'; '.join(e['msg'] for e in err.errors())}") from None


def run(args: argparse.Namespace) -> int:
    """Run ``geoembed import``; prints what was written."""
    from geoembed.io.bundle import load_bundle

    reduction = _reduction(args)
    card = _card_file(args.card)
    if args.kind == "geoclip":
        from geoembed.importers.geoclip import import_geoclip

        try:
            sigmas = [float(v) for v in args.sigmas.split(",")]
        except ValueError:
            raise InputError(f"--sigmas must be comma-separated numbers, got {args.sigmas!r}") from None
        path = import_geoclip(args.output, args.weights, sigmas=sigmas, reduction=reduction, card_extra=card,
                              overwrite=args.overwrite)
    elif args.kind == "satclip":
        from geoembed.importers.satclip import import_satclip

        path = import_satclip(args.checkpoint, args.output, prefix=args.prefix, ignore_hparams=args.ignore_hparam,
                              analytic_m0_scale=math.pi if args.analytic_m0 == "pi" else 1.0, reduction=reduction,
                              card_extra=card, footprint=_footprint_bbox(args.footprint_bbox),
                              out_of_support_km=args.out_of_support_km if args.footprint_bbox else 0.0,
                              overwrite=args.overwrite)
    else:
        from geoembed.importers.reduce import reduce_bundle

        path = reduce_bundle(args.source, args.output, reduction, card=card, overwrite=args.overwrite)
    b = load_bundle(path)
    red = ""
    if b.reduction is not None:
        total = float(b.reduction.info.get("total_variance", 0.0))
        share = f", {b.reduction.explained_variance.sum() / total:.1%} of the variance" if total else ""
        red = f", reduced to {b.embedding_dim} {b.reduction.method} components{share}"
    source = (b.card or {}).get("source", "")
    print(f"wrote {path}: {b.raw_embedding_dim}-d encoder{red}; {source}".rstrip("; "))
    return 0
