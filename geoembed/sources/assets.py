"""The assets of STAC items as a chunk reads them, and the fingerprint of a STAC raster view.

:func:`resolve_assets` gives per item the absolute, unsigned hrefs of the configured assets (a
missing asset is an error naming the item), its footprint, and one fingerprint of the search
parameters, item ids, datetimes and hrefs (and the sha256 of local files). Signed URLs change on every
run, so signing (:func:`load_hook`, ``stac.sign``) happens only when a chunk opens the files
(:func:`gdal_path`), never in the fingerprint. :func:`prepare_stac` is the search and the resolution
together, as a view runs them once before its chunks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from geoembed.errors import ConfigError, InputError
from geoembed.io.fingerprint import source_fingerprint, text_fingerprint
from geoembed.sources.config import StacConfig
from geoembed.sources.stac import item_footprint, item_time_text, search_areas, search_items

__all__ = ["StacAssets", "StacItemAssets", "gdal_path", "load_hook", "prepare_stac", "resolve_assets"]


@dataclass(frozen=True, eq=False)
class StacItemAssets:
    """One item as a chunk reads it: ``hrefs`` are the data assets' absolute unsigned hrefs in
    ``stac.assets`` order; ``footprint`` a shapely geometry in EPSG:4326 (None = unknown: read it)."""

    id: str
    collection: str | None
    datetime: str | None
    footprint: Any
    hrefs: tuple[str, ...]
    mask_href: str | None


@dataclass(frozen=True, eq=False)
class StacAssets:
    """Everything a chunk task needs to read and composite a STAC raster view (picklable when ``sign``
    is a ``module:function`` string)."""

    catalog: str
    items: tuple[StacItemAssets, ...]  # in composite order
    asset_keys: tuple[str, ...]
    mask_keep: tuple[int, ...] | None
    composite: str
    nodata: float | None
    sign: str | Callable[[str], str] | None
    timeout_s: float
    fingerprint: str

    @property
    def channels(self) -> int:
        return len(self.asset_keys)

    @property
    def band_names(self) -> list[str]:
        return list(self.asset_keys)


def load_hook(spec: str | Callable[[str], str] | None) -> Callable[[str], str] | None:
    """The signing function named ``module:function`` (or the callable itself)."""
    if spec is None or callable(spec):
        return spec
    mod, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"stac.sign {spec!r} cannot be loaded ({err}); give an importable 'module:function'") \
            from None
    if not callable(fn):
        raise ConfigError(f"stac.sign {spec!r} is not a function")
    return fn


def gdal_path(href: str) -> str:
    """A path GDAL opens for an asset href: http(s) through ``/vsicurl/``, ``s3://`` and ``gs://``
    through ``/vsis3/`` and ``/vsigs/``, ``file://`` as a local path; others unchanged."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if href.startswith(scheme):
            return vsi + href[len(scheme):]
    if href.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(href).path)
    return href


def _is_local(href: str) -> bool:
    return "://" not in href and not href.startswith("/vsi")


def _href(item, key: str, cfg: StacConfig) -> str:
    href = item.assets[key].get_absolute_href()
    if not href:
        raise InputError(f"STAC item {item.id} from {cfg.catalog}: asset {key!r} has a relative href and the "
                         "item no location to resolve it against")
    return gdal_path(href) if href.startswith("file://") else href


def resolve_assets(items: Sequence, cfg: StacConfig, sign: str | Callable[[str], str] | None = None) -> StacAssets:
    """The assets of ``items`` (in the given order) that a chunk reads, and the view's source
    fingerprint. ``sign`` (default ``cfg.sign``): a ``module:function`` (or callable) that turns an
    href into a signed one, applied only when a chunk opens the file.

    Raises InputError naming the item and the asset when an item lacks one of ``cfg.assets`` or the
    mask asset, or a local asset file does not exist.
    """
    sign = cfg.sign if sign is None else sign
    load_hook(sign)  # fail now, not in the first chunk
    keys = list(cfg.assets)
    mask_key = cfg.mask.asset if cfg.mask is not None else None
    out, records = [], []
    for item in items:
        missing = [k for k in keys + ([mask_key] if mask_key else []) if k not in item.assets]
        if missing:
            raise InputError(f"STAC item {item.id} (collection {item.collection_id}) from {cfg.catalog} has no "
                             f"asset {', '.join(missing)}; its assets are {sorted(item.assets)}: list assets that "
                             "every item has in stac.assets / stac.mask.asset, or narrow stac.collections")
        hrefs = tuple(_href(item, k, cfg) for k in keys)
        mask_href = _href(item, mask_key, cfg) if mask_key else None
        files = {}
        for h in (*hrefs, *([mask_href] if mask_href else [])):
            if _is_local(h):
                try:
                    files[h] = source_fingerprint(h)
                except InputError as err:
                    raise InputError(f"STAC item {item.id} from {cfg.catalog}: {err}") from None
        out.append(StacItemAssets(item.id, item.collection_id, item_time_text(item) or None, item_footprint(item),
                                  hrefs, mask_href))
        records.append({"id": item.id, "collection": item.collection_id, "datetime": item_time_text(item),
                        "updated": item.properties.get("updated"), "hrefs": list(hrefs), "mask": mask_href,
                        "files": files})
    fingerprint = text_fingerprint({
        "catalog": cfg.catalog, "collections": cfg.collections, "datetime": cfg.datetime, "query": cfg.query,
        "assets": keys, "mask": cfg.mask.model_dump() if cfg.mask else None, "composite": cfg.composite,
        "nodata": cfg.nodata, "items": records,
    })
    return StacAssets(cfg.catalog, tuple(out), tuple(keys), tuple(cfg.mask.keep) if cfg.mask else None,
                      cfg.composite, cfg.nodata, sign, cfg.timeout_s, fingerprint)


def prepare_stac(cfg: StacConfig, lon, lat, *, chip_size: int, resolution_m: float, chunk_rows: int,
                 sign: str | Callable[[str], str] | None = None) -> StacAssets:
    """Search the items under the chips of the locations (:func:`search_areas`, :func:`search_items`)
    and resolve their assets (:func:`resolve_assets`): what a STAC raster view computes once before
    its chunks, with the source fingerprint. Raises InputError when no location has a chip."""
    areas = search_areas(lon, lat, chip_size=chip_size, resolution_m=resolution_m, chunk_rows=chunk_rows)
    if not areas:
        raise InputError(f"STAC catalogue {cfg.catalog}: no location has a chip (coordinates missing or "
                         "within 11 km of a pole)")
    return resolve_assets(search_items(cfg, areas), cfg, sign=sign)
