"""STAC fixtures for tests: small COGs, STAC items for them, a static catalog on disk, and a minimal
STAC API (landing page with conformance, ``/collections``, ``/search`` by GET and POST with paging)
served by :class:`geoembed.testing.remote.LocalServer`.

The API filters on its own (collections, bbox, intersects, datetime, property comparisons), written
independently of :mod:`geoembed.sources.stac`, so tests compare two implementations.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from geoembed.testing.remote import LocalServer, Reply

__all__ = ["make_item", "serve_stac_api", "write_cog", "write_static_catalog"]

CORE = "https://api.stacspec.org/v1.0.0/core"
SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
QUERY = "https://api.stacspec.org/v1.0.0/item-search#query"


def write_cog(path: str | os.PathLike, data: np.ndarray, *, crs, transform: Affine, nodata: float | None = None,
              blocksize: int = 128) -> Path:
    """Write ``data`` (bands, rows, cols) as a Cloud Optimized GeoTIFF (tiled, with overviews);
    ``crs=None`` writes one without a CRS."""
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    profile = {"driver": "COG", "width": width, "height": height, "count": count, "dtype": data.dtype.name,
               "transform": transform, "nodata": nodata, "blocksize": blocksize, "overviews": "auto",
               "compress": "deflate"}
    if crs is not None:
        profile["crs"] = crs
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GTIFF_SRS_SOURCE="EPSG"), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def make_item(item_id: str, *, collection: str, footprint, datetime: str, assets: dict[str, str],
              cloud_cover: float | None = None, properties: dict | None = None) -> dict:
    """A STAC Item (dict) with ``footprint`` (shapely, EPSG:4326) as geometry and bbox."""
    from shapely.geometry import mapping

    props = {"datetime": datetime, **(properties or {})}
    if cloud_cover is not None:
        props["eo:cloud_cover"] = cloud_cover
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "geometry": mapping(footprint), "bbox": list(footprint.bounds), "properties": props,
        "assets": {k: {"href": h, "type": "image/tiff; application=geotiff; profile=cloud-optimized"}
                   for k, h in assets.items()},
        "links": [],
    }


def _collection(cid: str, items: list[dict]) -> dict:
    boxes = np.array([i["bbox"] for i in items]) if items else np.array([[-180, -90, 180, 90]])
    times = sorted(i["properties"]["datetime"] for i in items) or [None]
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": cid, "description": f"test collection {cid}",
        "license": "CC0-1.0", "links": [],
        "extent": {"spatial": {"bbox": [[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                          float(boxes[:, 2].max()), float(boxes[:, 3].max())]]},
                   "temporal": {"interval": [[times[0], times[-1]]]}},
    }


def write_static_catalog(root: str | os.PathLike, collections: dict[str, list[dict]]) -> Path:
    """A self-contained static catalog: ``catalog.json`` -> ``<collection>/collection.json`` ->
    ``<collection>/<item>/<item>.json``, with relative links (asset hrefs are kept as given: make
    them relative to the item file, absolute, or URLs)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cat = {"type": "Catalog", "stac_version": "1.0.0", "id": "test-catalog", "description": "test",
           "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]}
    for cid, items in collections.items():
        col = _collection(cid, items)
        col["links"] = [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
        for item in items:
            item = dict(item, links=[{"rel": "root", "href": "../../catalog.json"},
                                     {"rel": "parent", "href": "../collection.json"},
                                     {"rel": "collection", "href": "../collection.json"}])
            path = root / cid / item["id"] / f"{item['id']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(item))
            col["links"].append({"rel": "item", "href": f"./{item['id']}/{item['id']}.json",
                                 "type": "application/geo+json"})
        (root / cid).mkdir(exist_ok=True)
        (root / cid / "collection.json").write_text(json.dumps(col))
        cat["links"].append({"rel": "child", "href": f"./{cid}/collection.json", "type": "application/json"})
    (root / "catalog.json").write_text(json.dumps(cat))
    return root / "catalog.json"


def _time(s: str | None, end: bool) -> dt.datetime | None:
    if s in (None, "", ".."):
        return None
    if len(s) == 10:
        d = dt.date.fromisoformat(s)
        return dt.datetime.combine(d, dt.time.max if end else dt.time.min)
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).replace(tzinfo=None)


_OPS = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge, "eq": operator.eq}


def _matches(item: dict, params: dict) -> bool:
    if params.get("collections") and item["collection"] not in params["collections"]:
        return False
    if params.get("intersects"):
        from shapely.geometry import shape

        if not shape(params["intersects"]).intersects(shape(item["geometry"])):
            return False
    if params.get("bbox"):
        w, s, e, n = params["bbox"]
        x0, y0, x1, y1 = item["bbox"]
        if x0 > e or x1 < w or y0 > n or y1 < s:
            return False
    if params.get("datetime"):
        lo, _, hi = params["datetime"].partition("/")
        hi = hi or lo
        t = _time(item["properties"]["datetime"], False)
        if (_time(lo, False) and t < _time(lo, False)) or (_time(hi, True) and t > _time(hi, True)):
            return False
    for field, ops in (params.get("query") or {}).items():
        v = item["properties"].get(field)
        for op, want in ops.items():
            if v is None or not _OPS[op](v, want):
                return False
    return True


def serve_stac_api(server: LocalServer, prefix: str, collections: dict[str, list[dict]], *,
                   page_size: int = 2, query_extension: bool = True) -> str:
    """Add a STAC API under ``prefix`` (e.g. ``/api``) to a running ``server``; returns its URL. Search
    pages hold ``page_size`` items, with a ``next`` link (a POST body with a token, merged)."""
    base = server.url + prefix

    def landing(method, query, body, headers):
        conforms = [CORE, SEARCH, "https://api.stacspec.org/v1.0.0/collections"] + ([QUERY] if query_extension else [])
        return Reply(body=json.dumps({
            "type": "Catalog", "stac_version": "1.0.0", "id": "test-api", "description": "test STAC API",
            "conformsTo": conforms,
            "links": [{"rel": "self", "href": base + "/", "type": "application/json"},
                      {"rel": "root", "href": base + "/", "type": "application/json"},
                      {"rel": "data", "href": base + "/collections", "type": "application/json"},
                      {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "GET"},
                      {"rel": "search", "href": base + "/search", "type": "application/geo+json", "method": "POST"}],
        }).encode())

    def cols(method, query, body, headers):
        return Reply(body=json.dumps({"collections": [_collection(c, its) for c, its in collections.items()],
                                      "links": []}).encode())

    def search(method, query, body, headers):
        if method == "POST":
            params = json.loads(body or b"{}")
        else:
            params = dict(query)
            for k in ("collections", "bbox"):
                if k in params:
                    params[k] = params[k].split(",")
            if "bbox" in params:
                params["bbox"] = [float(v) for v in params["bbox"]]
            for k in ("query", "intersects"):
                if k in params:
                    params[k] = json.loads(params[k])
        if params.get("query") and not query_extension:
            return Reply(400, b'{"detail": "query extension not supported"}')
        hits = [i for its in collections.values() for i in its if _matches(i, params)]  # as they are now
        start = int(params.get("token") or 0)
        limit = min(int(params.get("limit") or page_size), page_size)
        page = hits[start:start + limit]
        links = []
        if start + limit < len(hits):
            links.append({"rel": "next", "href": base + "/search", "method": "POST", "merge": True,
                          "body": {"token": str(start + limit)}})
        return Reply(body=json.dumps({"type": "FeatureCollection", "features": page, "links": links,
                                      "numberMatched": len(hits)}).encode(), content_type="application/geo+json")

    server.add_route(prefix + "/", landing)
    server.add_route(prefix, landing)
    server.add_route(prefix + "/collections", cols)
    server.add_route(prefix + "/search", search)
    return base + "/"
