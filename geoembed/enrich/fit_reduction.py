"""Fit a reduction (PCA, optionally whitened) on the embeddings of a reference table, streamed.

The table (any format of :mod:`geoembed.io.tables`, or a folder of Parquet parts) is read chunk by chunk
like :func:`geoembed.enrich.enrich_file` does, with the same coordinate hygiene and whole-table verdicts;
only the d x d covariance of the valid rows' embeddings is accumulated
(:class:`~geoembed.io.reduction.CovarianceAccumulator`). The result is saved as JSON
(:class:`~geoembed.io.reduction.Reduction`) for ``enrich_file(..., reduction=...)``.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

from geoembed.enrich import hygiene as hy
from geoembed.enrich.coordinates import batch_coordinates, resolve_coordinates
from geoembed.enrich.driver import DEFAULT_CHUNK_ROWS, HOW_CRS
from geoembed.enrich.enricher import Enricher, load_bundle_cached, torch_threads
from geoembed.enrich.tables import list_parts, open_source
from geoembed.errors import InputError
from geoembed.io.atomic import check_output
from geoembed.io.enriched import bundle_info
from geoembed.io.reduction import CovarianceAccumulator, Reduction

__all__ = ["fit_reduction_file"]


def fit_reduction_file(bundle, input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                       n_components: int, method: str = "pca", lon_col: str | None = None,
                       lat_col: str | None = None, on_invalid: str = "error",
                       chunk_rows: int = DEFAULT_CHUNK_ROWS, workers: int | None = None, crs=None,
                       layer: str | None = None) -> Reduction:
    """Fit a PCA/whitening reduction on the embeddings of a reference table (streamed) and save it.

    ``input_path`` is a table of points (any format of :mod:`geoembed.io.tables`) or a folder of Parquet
    parts. Invalid rows are an error (``on_invalid="error"``) or skipped (``"null"``); swapped or
    projected coordinates are an error decided on the whole table. Returns the saved :class:`Reduction`.
    """
    input_path = Path(input_path)
    check_output(output_path, what="reduction output")
    if isinstance(bundle, str | os.PathLike):
        bundle = load_bundle_cached(bundle)
    files = list_parts(input_path) if input_path.is_dir() else [input_path]
    enricher = Enricher(bundle, on_invalid=on_invalid, workers=workers)
    acc = CovarianceAccumulator(int(bundle.embedding_dim))
    report = hy.HygieneReport()
    try:
        starts: list[int] = []  # first row of each file in the running row count

        def where(row: int) -> str:
            k = bisect.bisect_right(starts, row) - 1
            return f"{files[k].name} row {row - starts[k]}"

        with torch_threads(1 if enricher.workers > 1 else None):
            offset = 0
            for f in files:
                starts.append(offset)
                source = open_source(f, chunk_rows, layer=layer)
                try:
                    coords = resolve_coordinates(source.schema, str(f), lon_col, lat_col, source.geo, crs)
                    for batch in source.batches():
                        lon, lat, codes, lon_raw, lat_raw = batch_coordinates(batch, coords)
                        start = offset
                        enricher.check(lon, lat, codes, report, start, lon_raw, lat_raw)
                        offset += batch.num_rows
                        if report.invalid and on_invalid == "error":
                            continue
                        valid = codes == hy.OK
                        if valid.any():
                            emb = enricher.embed(lon, lat, valid)  # NaN rows where not valid
                            # rows the model gives NaN/inf for are invalid: never in the covariance
                            enricher.flag_non_finite(emb, codes, report, start, lon_raw, lat_raw)
                            if report.invalid and on_invalid == "error":
                                continue
                            acc.add(emb[codes == hy.OK])
                finally:
                    source.close()
            problem = report.verdict(str(input_path), *coords.labels, HOW_CRS)
            if problem is not None:
                raise InputError(problem)
            if report.invalid and on_invalid == "error":
                raise InputError(report.invalid_message(str(input_path), *coords.labels,
                                                        where=where if input_path.is_dir() else None))
    finally:
        enricher.close()
    red = Reduction.from_covariance(acc, int(n_components), method, bundle_fingerprint=bundle.fingerprint,
                                    info={"source": str(input_path.resolve()), "rows": report.rows,
                                          "invalid_skipped": report.invalid,
                                          "bundle_path": bundle_info(bundle)["path"]})
    red.save(output_path)
    return red
