"""Enrichment: any table with coordinates -> the same rows plus embedding columns (and QA flags).

Entry point: :func:`enrich_file` (one table -> an enriched table, the format of
:mod:`geoembed.io.enriched`); the ``geoembed enrich`` command (``configure_parser(parser)`` /
``run(args)``) calls it, or :func:`enrich_directory` for a folder of Parquet parts on Dask. Tables of every
format are read by :mod:`geoembed.io.tables` (shared with ``evaluate`` and ``inspect``). Also:

* :class:`LocationEmbedder` - scikit-learn transformer (``geoembed.LocationEmbedder``).
* :func:`~geoembed.enrich.polygons.embed_polygons` - one embedding per polygon (mean over sampled points).
* :func:`fit_reduction_file` and :class:`Reduction` - optional PCA/whitening to k components.
* :func:`read_enrich_metadata` - what an enriched table records (bundle, input, columns, totals).

Modules, each with one concern (arrows are imports)::

    command -------> driver, parts, fit_reduction, enricher        the CLI (imports them lazily)
    parts ---------> driver, enricher, tables, reduction, polygons a folder of parts on Dask; resume
    fit_reduction -> driver, enricher, tables, coordinates         a reduction fitted on a reference table
    driver --------> enricher, tables, coordinates, arrow, polygons one file: stream, prefetch, atomic output
    transformer ---> enricher, hygiene, reduction, polygons        LocationEmbedder, in memory
    polygons ------> hygiene                                       points sampled in polygons, their mean
    enricher ------> hygiene, reduction                            coordinates -> embeddings + QA values
    arrow ---------> coordinates, hygiene                          output schema, embedding/QA columns
    tables                                                         sources (io.tables) and CSV/Parquet sinks
    coordinates ---> hygiene                                       lon/lat columns or a geometry; its kind
    hygiene, reduction                                             numpy/pandas only

All of them use :mod:`geoembed.io.enriched` (column names, metadata, sidecars), :mod:`geoembed.io.tables`,
:mod:`geoembed.io.atomic` and :mod:`geoembed.errors`; none imports another stage.

Heavy dependencies (torch, scikit-learn, pyarrow) load on first use, so the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoembed.enrich.command import configure_parser, run

if TYPE_CHECKING:  # pragma: no cover
    from geoembed.enrich.driver import EnrichSummary, enrich_file
    from geoembed.enrich.enricher import Enricher
    from geoembed.enrich.fit_reduction import fit_reduction_file
    from geoembed.enrich.parts import enrich_directory
    from geoembed.enrich.transformer import LocationEmbedder
    from geoembed.io.enriched import read_enrich_metadata
    from geoembed.io.reduction import Reduction

__all__ = [
    "EnrichSummary", "Enricher", "LocationEmbedder", "Reduction", "configure_parser", "enrich_directory",
    "enrich_file", "fit_reduction_file", "read_enrich_metadata", "run",
]

_LAZY = {
    "LocationEmbedder": "geoembed.enrich.transformer",
    "Enricher": "geoembed.enrich.enricher",
    "EnrichSummary": "geoembed.enrich.driver",
    "enrich_file": "geoembed.enrich.driver",
    "fit_reduction_file": "geoembed.enrich.fit_reduction",
    "read_enrich_metadata": "geoembed.io.enriched",
    "enrich_directory": "geoembed.enrich.parts",
    "Reduction": "geoembed.io.reduction",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geoembed.enrich' has no attribute {name!r}")
