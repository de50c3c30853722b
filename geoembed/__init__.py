"""geoembed: spatial embeddings for risk modelling.

Stages: sample locations -> build raster/OSM views (Dask) -> train a multi-view contrastive model ->
enrich any table with coordinates -> evaluate GLM/GAM/GBM risk models.
"""

from geoembed.errors import GeoembedError

__version__ = "0.1.0"

__all__ = ["GeoembedError", "__version__", "LocationEmbedder"]


def __getattr__(name: str):
    # Lazy: importing geoembed must not import torch or scikit-learn.
    if name == "LocationEmbedder":
        from geoembed.enrich import LocationEmbedder

        return LocationEmbedder
    raise AttributeError(name)
