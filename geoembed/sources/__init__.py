"""Sources that a view reads from the wild, each resolved to something the view reads and a fingerprint.

* STAC (:mod:`~geoembed.sources.stac`, :mod:`~geoembed.sources.assets`,
  :mod:`~geoembed.sources.composite`): a raster view's ``stac:`` block: :func:`prepare_stac` (=
  :func:`search_items` over the cells under the chips, then :func:`resolve_assets`: a picklable
  :class:`StacAssets` with the fingerprint) -> per chunk :func:`read_stac_chunk` (chips composited
  over the items).
* Overpass (:mod:`~geoembed.sources.overpass`): an OSM view's ``overpass:`` block:
  :func:`overpass_features` -> a cached, merged ``.osm`` file for the OSM reader, and a fingerprint.
* Downloads (:mod:`~geoembed.sources.download`): :func:`cached_download` of an http(s) source (e.g. a
  country .osm.pbf) into ``$GEOEMBED_CACHE_DIR/downloads``, resumed and verified.

Submodules are imported on first use (pystac and requests stay unloaded until a view needs them).
"""

from __future__ import annotations

import importlib

__all__ = [
    "OverpassConfig",
    "OverpassResult",
    "StacAssets",
    "StacConfig",
    "StacMaskConfig",
    "cached_download",
    "chip_bounds",
    "chips_extent",
    "composite",
    "extent_around",
    "overpass_features",
    "prepare_stac",
    "read_stac_chunk",
    "resolve_assets",
    "search_items",
]

_WHERE = {
    "OverpassConfig": "config", "StacConfig": "config", "StacMaskConfig": "config",
    "OverpassResult": "overpass", "overpass_features": "overpass",
    "StacAssets": "assets", "resolve_assets": "assets", "prepare_stac": "assets", "search_items": "stac",
    "composite": "composite", "read_stac_chunk": "composite",
    "chip_bounds": "extent", "chips_extent": "extent", "extent_around": "extent",
    "cached_download": "download",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"geoembed.sources.{_WHERE[name]}"), name)
    raise AttributeError(name)
