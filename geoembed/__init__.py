"""geoembed: spatial embeddings for risk modelling.

Stages: sample locations -> build raster/OSM views (Dask) -> train a multi-view contrastive model ->
enrich any table with coordinates -> evaluate GLM/GAM/GBM risk models.

Each stage is a module or subpackage whose docstring names its entry point (``geoembed.build``,
``geoembed.train``, ``geoembed.enrich``, ``geoembed.evaluate``); the artefacts they exchange are read and
written by :mod:`geoembed.io`, geometry lives in :mod:`geoembed.geo`. ``__version__`` is the installed
distribution's (:mod:`geoembed.version`), written once in pyproject.toml.
"""

from geoembed.errors import GeoembedError
from geoembed.version import __version__

__all__ = ["GeoembedError", "__version__", "LocationEmbedder"]


def __getattr__(name: str):
    # Lazy: importing geoembed must not import torch or scikit-learn.
    if name == "LocationEmbedder":
        from geoembed.enrich import LocationEmbedder

        return LocationEmbedder
    raise AttributeError(name)
