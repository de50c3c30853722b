"""The configuration blocks of the remote sources (``stac:``, ``overpass:``), defined in
:mod:`geoembed.config.sources` (the config layer validates them inside the raster and OSM view
settings) and re-exported here."""

from geoembed.config.sources import (
    QUERY_OPS,
    OverpassConfig,
    StacConfig,
    StacMaskConfig,
    parse_interval,
)

__all__ = ["QUERY_OPS", "OverpassConfig", "StacConfig", "StacMaskConfig", "parse_interval"]
