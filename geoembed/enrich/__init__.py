"""Enrichment: any table with coordinates -> the same rows plus embedding columns (and QA flags).

* :class:`LocationEmbedder` - scikit-learn transformer (``geoembed.LocationEmbedder``).
* :func:`enrich_file` / :func:`enrich_directory` - streaming CSV/Parquet/GeoParquet enrichment, one
  file or a folder of Parquet parts on Dask (what ``geoembed enrich`` runs).
* :func:`fit_reduction_file` and :class:`Reduction` - optional PCA/whitening to k components.
* ``configure_parser(parser)`` / ``run(args)`` - the ``geoembed enrich`` command.

Heavy dependencies (torch, scikit-learn, pyarrow) load on first use, so the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geoembed.enrich.command import configure_parser, run

if TYPE_CHECKING:  # pragma: no cover
    from geoembed.enrich.core import (
        Enricher,
        EnrichSummary,
        enrich_file,
        fit_reduction_file,
        read_enrich_metadata,
    )
    from geoembed.enrich.parts import enrich_directory
    from geoembed.enrich.reduction import Reduction
    from geoembed.enrich.transformer import LocationEmbedder

__all__ = [
    "EnrichSummary", "Enricher", "LocationEmbedder", "Reduction", "configure_parser", "enrich_directory",
    "enrich_file", "fit_reduction_file", "read_enrich_metadata", "run",
]

_LAZY = {
    "LocationEmbedder": "geoembed.enrich.transformer",
    "Enricher": "geoembed.enrich.core",
    "EnrichSummary": "geoembed.enrich.core",
    "enrich_file": "geoembed.enrich.core",
    "fit_reduction_file": "geoembed.enrich.core",
    "read_enrich_metadata": "geoembed.enrich.core",
    "enrich_directory": "geoembed.enrich.parts",
    "Reduction": "geoembed.enrich.reduction",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geoembed.enrich' has no attribute {name!r}")
