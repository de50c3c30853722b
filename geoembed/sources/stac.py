"""STAC items behind a raster view: search and sort them.

* :func:`search_items`: a STAC API through pystac-client (``/search``, paged), or a static catalog
  through pystac, walking its children (collections outside ``collections``, the boxes or the dates
  are not entered) and filtering items by footprint, datetime, collection and ``query`` locally. An
  API that lacks the query extension gets the search without ``query``, which is then applied here.
  Boxes across the antimeridian are searched as their two halves. Items come back in composite order:
  least cloudy first (``eo:cloud_cover``; none = last), then by datetime, collection and id.
* :func:`search_areas`: what to search for a view's locations: per group of chunks, the grid cells
  under their chips.

Their assets are resolved in :mod:`geoembed.sources.assets`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import warnings
from collections.abc import Iterable
from typing import Any

from geoembed.errors import InputError
from geoembed.sources.config import StacConfig, parse_interval
from geoembed.sources.extent import bbox_parts, cells_area, chip_bounds, chip_cells
from geoembed.sources.http import RETRY_STATUS, reason_text

log = logging.getLogger(__name__)

__all__ = ["item_footprint", "item_time_text", "query_matches", "search_areas", "search_items", "sort_items"]


# --------------------------------------------------------------------------- opening
def _stac_io(cfg: StacConfig):
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    import geoembed

    retry = Retry(total=cfg.retries, connect=cfg.retries, read=cfg.retries, status=cfg.retries,
                  backoff_factor=0.5, status_forcelist=sorted(RETRY_STATUS), allowed_methods=None,
                  raise_on_status=False, respect_retry_after_header=True)
    io = StacApiIO(timeout=cfg.timeout_s, max_retries=retry)
    io.session.headers["User-Agent"] = f"geoembed/{geoembed.__version__}"
    return io


def _static_io(cfg: StacConfig):
    """pystac I/O for static catalogs: local files, or http(s) through :func:`geoembed.sources.http.request`
    (timeout, retries, errors naming the URL)."""
    from pystac.stac_io import DefaultStacIO

    from geoembed.sources.http import request

    class _IO(DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if href.startswith(("http://", "https://")):
                body = request("GET", href, what="STAC catalogue file", timeout_s=cfg.timeout_s,
                               retries=cfg.retries, backoff_s=0.5)
                return body.decode("utf-8")
            return super().read_text_from_href(href)

    return _IO()


def _reason(err: Exception) -> str:
    code = getattr(err, "status_code", None)
    text = reason_text(err) if code is None else " ".join(str(err).split())[:300]
    return f"HTTP {code}: {text}" if code else text


def _open(cfg: StacConfig):
    """(root, is_api): a pystac-client Client for a STAC API with item search, else the static
    catalog (or collection) read with pystac."""
    import pystac
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    io = _stac_io(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = Client.open(cfg.catalog, stac_io=io, timeout=cfg.timeout_s)  # (open resets the timeout)
            if client.conforms_to(ConformanceClasses.ITEM_SEARCH) and client.get_single_link("search"):
                return client, True
            return pystac.read_file(cfg.catalog, stac_io=_static_io(cfg)), False
    except (APIError, OSError, ValueError, pystac.STACError, InputError) as err:
        raise InputError(f"STAC catalogue {cfg.catalog} cannot be read ({_reason(err)}); check stac.catalog (a "
                         "STAC API URL, or the path or URL of a static catalog.json) and the network") from None


# --------------------------------------------------------------------------- filters
def _naive_utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is not None and t.tzinfo is not None:
        t = t.astimezone(dt.UTC).replace(tzinfo=None)
    return t


def _item_time(item) -> tuple[dt.datetime | None, dt.datetime | None]:
    if item.datetime is not None:
        t = _naive_utc(item.datetime)
        return t, t
    cm = item.common_metadata
    return _naive_utc(cm.start_datetime), _naive_utc(cm.end_datetime)


def _time_hits(start: dt.datetime | None, end: dt.datetime | None, interval) -> bool:
    lo, hi = interval
    return not ((hi is not None and start is not None and start > hi) or
                (lo is not None and end is not None and end < lo))


def _compare(op: str, have: Any, want: Any) -> bool:
    try:
        if op == "eq":
            return have == want
        if op == "neq":
            return have != want
        if op == "in":
            return have in want
        if op in ("lt", "lte", "gt", "gte"):
            if isinstance(have, bool) or not isinstance(have, int | float | str) or \
                    isinstance(have, str) != isinstance(want, str):
                return False
            return {"lt": have < want, "lte": have <= want, "gt": have > want, "gte": have >= want}[op]
        if not isinstance(have, str):
            return False
        return {"startsWith": have.startswith, "endsWith": have.endswith, "contains": have.__contains__}[op](
            str(want))
    except TypeError:
        return False


def query_matches(properties: dict, query: dict | None) -> bool:
    """Whether item ``properties`` satisfy a STAC query-extension filter (a missing property fails)."""
    for field, ops in (query or {}).items():
        if field not in properties:
            return False
        if not all(_compare(op, properties[field], want) for op, want in ops.items()):
            return False
    return True


def item_footprint(item):
    """The item's footprint (EPSG:4326 shapely geometry) from its geometry, else its bbox; None when
    it has neither."""
    import shapely
    from shapely.geometry import shape

    if item.geometry:
        geom = shape(item.geometry)
        return geom if geom.is_valid else shapely.make_valid(geom)
    if item.bbox:
        b = list(item.bbox)
        w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
        return shapely.union_all([shapely.box(*p) for p in bbox_parts((w, s, e, n))])
    return None


def _spatial_hits(geom, boxes) -> bool:
    return geom is None or any(geom.intersects(b) for b in boxes)


def _collection_hits(col, boxes, interval) -> bool:
    """Whether a collection's extent may hold matching items (a malformed extent does not prune)."""
    import shapely

    try:
        bbs = col.extent.spatial.bboxes or []
        if bbs:
            b = bbs[0]
            w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
            if not any(shapely.box(*p).intersects(x) for p in bbox_parts((w, s, e, n)) for x in boxes):
                return False
        for start, end in col.extent.temporal.intervals or []:
            if _time_hits(_naive_utc(start), _naive_utc(end), interval):
                return True
        return not col.extent.temporal.intervals
    except (AttributeError, IndexError, TypeError, ValueError):
        return True


def _static_search(root, cfg: StacConfig, boxes: list) -> list:
    import pystac

    interval = parse_interval(cfg.datetime)
    wanted = set(cfg.collections or [])
    out = []

    def visit(cat, collection_id: str | None) -> None:
        for child in cat.get_children():
            cid = collection_id
            if isinstance(child, pystac.Collection):
                cid = child.id
                if (wanted and cid not in wanted) or not _collection_hits(child, boxes, interval):
                    continue
            visit(child, cid)
        for item in cat.get_items():
            cid = item.collection_id or collection_id
            if wanted and cid not in wanted:
                continue
            if _spatial_hits(item_footprint(item), boxes) and _time_hits(*_item_time(item), interval) \
                    and query_matches(item.properties, cfg.query):
                out.append(item)

    visit(root, root.id if isinstance(root, pystac.Collection) else None)
    return out


def _api_search(client, cfg: StacConfig, area) -> list:
    """One API search over ``area`` (a shapely geometry in [-180, 180]): by ``bbox`` for a rectangle,
    else by ``intersects``."""
    import shapely
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    send_query = bool(cfg.query) and client.conforms_to(ConformanceClasses.QUERY)
    kwargs = {"collections": cfg.collections, "max_items": cfg.max_items + 1, "limit": min(cfg.max_items + 1, 250)}
    if area.equals(shapely.box(*area.bounds)):
        kwargs["bbox"] = [round(v, 9) for v in area.bounds]
    else:
        kwargs["intersects"] = shapely.geometry.mapping(area)
    if cfg.datetime is not None:
        kwargs["datetime"] = cfg.datetime
    if send_query:
        kwargs["query"] = cfg.query
    link = client.get_single_link("search")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            items = list(client.search(**kwargs).items())
    except (APIError, OSError, ValueError) as err:
        raise InputError(f"STAC search at {link.href if link else cfg.catalog} failed ({_reason(err)}); check "
                         "stac.collections, stac.query and stac.datetime, and the network") from None
    if cfg.query and not send_query:
        items = [i for i in items if query_matches(i.properties, cfg.query)]
    return items


# --------------------------------------------------------------------------- search
def _cloud(item) -> float:
    v = item.properties.get("eo:cloud_cover")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else math.inf


def item_time_text(item) -> str:
    """The item's datetime (or start_datetime) in ISO form, naive UTC ("" when it has none)."""
    t = _item_time(item)[0]
    return t.isoformat() if t is not None else ""


def sort_items(items: Iterable) -> list:
    """Items in composite order: least cloudy first (``eo:cloud_cover``; none = last), then by
    datetime (or start_datetime), collection and id: deterministic for a given set."""
    return sorted(items, key=lambda i: (_cloud(i), item_time_text(i), i.collection_id or "", i.id))


def _areas(area) -> list:
    """Shapely geometries in [-180, 180] from a bbox (split at the antimeridian), a geometry, or a
    sequence of them."""
    import shapely

    if hasattr(area, "geom_type"):
        return [area]
    if len(area) == 4 and all(isinstance(v, int | float) for v in area):
        return [shapely.box(*p) for p in bbox_parts(tuple(area))]
    return [g for a in area for g in _areas(a)]


def search_items(cfg: StacConfig, area) -> list:
    """The pystac Items matching ``cfg`` (collections, datetime, query) that meet ``area``: a bbox
    (west, south, east, north in degrees; west > east: across the antimeridian), a shapely geometry
    in EPSG:4326, or a sequence of them (e.g. one per group of chunks, :func:`search_areas`); without
    repeats, in composite order (:func:`sort_items`). A rectangle is searched by ``bbox``, another
    shape by ``intersects``.

    Raises InputError naming the catalogue: unreadable or unreachable (after ``cfg.retries``
    retries), a failed search, no item at all, or more than ``cfg.max_items`` items.
    """
    areas = _areas(area)
    root, api = _open(cfg)
    if api:
        found = [i for a in areas for i in _api_search(root, cfg, a)]
    else:
        try:
            found = _static_search(root, cfg, areas)
        except InputError:
            raise
        except Exception as err:  # noqa: BLE001 - pystac raises many kinds on a broken child or item
            raise InputError(f"STAC catalogue {cfg.catalog}: a child or item cannot be read ({_reason(err)}); "
                             "check the catalogue's links") from None
    unique = {}
    for item in found:
        unique.setdefault((item.collection_id, item.id), item)
    where = f"collections {cfg.collections}" if cfg.collections else "all collections"
    if not unique:
        import shapely

        box = tuple(round(v, 6) for v in shapely.union_all(areas).bounds)
        raise InputError(f"STAC catalogue {cfg.catalog}: no item in {where} within {box} (west, south, east, north; "
                         f"datetime {cfg.datetime or 'any'}, query {cfg.query or 'none'}); widen stac.datetime, "
                         "relax stac.query, or check stac.collections and the locations")
    if len(unique) > cfg.max_items:
        raise InputError(f"STAC catalogue {cfg.catalog}: more than {cfg.max_items} items in {where}; narrow "
                         "stac.datetime or stac.query, or raise stac.max_items")
    log.info("STAC %s: %d items", cfg.catalog, len(unique))
    return sort_items(unique.values())


# --------------------------------------------------------------------------- for a view
def search_areas(lon, lat, *, chip_size: int, resolution_m: float, chunk_rows: int, cells_per_degree: int = 10,
                 max_cells: int = 400) -> list:
    """What to search for the chips of locations taken ``chunk_rows`` rows at a time (as a view's
    chunks): per group of consecutive chunks, the union of the grid cells (``1 / cells_per_degree``
    degree) that their chips touch, at most ``max_cells`` cells a group. A city is then one small
    search; sparse locations over a continent ask only for the items near them, not for every scene
    of their bounding box. Locations without a chip box (non-finite coordinates) are left out."""
    import numpy as np

    bounds = chip_bounds(lon, lat, chip_size, resolution_m)
    areas, group = [], np.zeros((0, 2), np.int64)
    for a in range(0, len(bounds), max(1, int(chunk_rows))):
        cells = chip_cells(bounds[a:a + chunk_rows], cells_per_degree)
        merged = np.unique(np.concatenate([group, cells]), axis=0)
        if len(group) and len(merged) > max_cells:
            areas.append(cells_area(group, cells_per_degree))
            merged = cells
        group = merged
    if len(group):
        areas.append(cells_area(group, cells_per_degree))
    return areas
