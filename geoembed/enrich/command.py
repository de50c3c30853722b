"""``geoembed enrich``: add embedding columns to a table with coordinates.

    geoembed enrich --bundle B --input IN --output OUT [--lon-col C --lat-col C]
                    [--on-invalid error|null] [--chunk-rows N] [--reduction R.json]
                    [--scheduler ADDR] [--workers N]
    geoembed enrich fit-reduction --bundle B --input REF --output R.json --n-components K [--whiten]

IN is a CSV (optionally compressed), Parquet or GeoParquet file, or a folder of Parquet parts (then
OUT is a folder of parts with the same names, computed on Dask: a distributed scheduler from
--scheduler or env GEOEMBED_SCHEDULER, else locally). ``fit-reduction`` fits a PCA (``--whiten``:
whitened PCA) on a reference table's embeddings and writes it as JSON for ``--reduction``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoembed.errors import InputError


def _positive_int(text: str) -> int:
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

    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.add_argument("action", nargs="?", choices=("run", "fit-reduction"), default="run",
                        help="run (default): enrich IN into OUT; fit-reduction: fit a PCA on IN, write OUT")
    parser.add_argument("--bundle", required=True, help="model bundle folder (from `geoembed train`)")
    parser.add_argument("--input", required=True, help="CSV / Parquet / GeoParquet file, or a folder of "
                                                       "Parquet parts")
    parser.add_argument("--output", required=True, help="output file (.parquet or .csv[.gz]) or folder; "
                                                        "for fit-reduction a .json file")
    parser.add_argument("--lon-col", default=None, help="longitude column (default 'lon'; for GeoParquet "
                                                        "the point geometry unless columns are given)")
    parser.add_argument("--lat-col", default=None, help="latitude column (default 'lat')")
    parser.add_argument("--on-invalid", choices=("error", "null"), default="error",
                        help="invalid coordinates: error (default, lists the first bad rows) or null "
                             "(empty embeddings and a geoembed_invalid reason)")
    parser.add_argument("--chunk-rows", type=_positive_int, default=262_144,
                        help="rows per streamed chunk (default 262144)")
    parser.add_argument("--embed-batch", type=_positive_int, default=DEFAULT_EMBED_BATCH,
                        help=f"rows per encoder call (default {DEFAULT_EMBED_BATCH})")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="embedding threads for a file, Dask workers for a local folder run "
                             "(default: the number of cores, at most 8)")
    parser.add_argument("--reduction", default=None, help="reduction JSON from `fit-reduction`: output "
                                                          "emb_pc_* components instead of emb_*")
    parser.add_argument("--scheduler", default=None,
                        help="Dask distributed scheduler address for a folder of parts (default: env "
                             "GEOEMBED_SCHEDULER, else local)")
    parser.add_argument("--n-components", type=_positive_int, default=None,
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
                                 chunk_rows=args.chunk_rows, workers=args.workers)
        total = float(red.info.get("total_variance", 0.0)) or None
        share = f", {red.explained_variance.sum() / total:.1%} of the variance" if total else ""
        print(f"fitted a {red.n_components}-component {red.method} reduction on {red.n_samples:,} rows"
              f"{share} -> {out}")
        return 0
    if args.n_components is not None or args.whiten:
        raise InputError("--n-components/--whiten belong to `geoembed enrich fit-reduction`; to enrich "
                         "with a reduction, pass its file with --reduction")
    if inp.is_dir():
        from geoembed.enrich.parts import enrich_directory

        summary = enrich_directory(args.bundle, inp, out, lon_col=args.lon_col, lat_col=args.lat_col,
                                   on_invalid=args.on_invalid, chunk_rows=args.chunk_rows,
                                   reduction=args.reduction, embed_batch=args.embed_batch,
                                   scheduler=args.scheduler, num_workers=args.workers)
    else:
        from geoembed.enrich.driver import enrich_file

        if args.scheduler:
            raise InputError("--scheduler applies to a folder of Parquet parts; a single file is "
                             "enriched locally (split it into parts to use a cluster)")
        summary = enrich_file(args.bundle, inp, out, lon_col=args.lon_col, lat_col=args.lat_col,
                              on_invalid=args.on_invalid, chunk_rows=args.chunk_rows,
                              reduction=args.reduction, embed_batch=args.embed_batch, workers=args.workers,
                              progress=progress_enabled())
    print(summary.line())
    if summary.invalid:
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(summary.by_reason.items()))
        print(f"  invalid rows ({reasons}) have empty embeddings; see column geoembed_invalid")
    return 0
