"""OSM features from an Overpass API: the catalogue's tags over an extent, as one OSM XML file that the
OSM reader (:func:`geoembed.views.osm_read.read_osm_features`) reads like any ``.osm`` source.

The extent is cut into tiles of at most ``tile_deg`` degrees a side (and at the antimeridian). Each
tile is one query (:func:`overpass_query`), POSTed with retries and exponential backoff (429, 5xx,
timeouts, answers cut short); an answer must be complete OSM XML without a ``<remark>`` (Overpass
reports runtime errors such as a query timeout or out-of-memory with HTTP 200 and a remark, and the
data before it is partial). Each tile's answer is cached under ``$GEOEMBED_CACHE_DIR/overpass/``, keyed
by the URL and the query text, and written atomically; a rerun reads the cache and sends nothing. The
tiles are merged into one file (an object on a tile border once) and the fingerprint covers the URL,
the queries and the answers' sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from geoembed.errors import InputError
from geoembed.io.atomic import atomic_path
from geoembed.io.fingerprint import file_fingerprint, text_fingerprint
from geoembed.sources.config import OverpassConfig
from geoembed.sources.http import Retryable, cache_dir, fetch_once, with_retries

log = logging.getLogger(__name__)

__all__ = ["OverpassResult", "overpass_error", "overpass_features", "overpass_query", "overpass_tiles"]

BBox = tuple[float, float, float, float]  # west, south, east, north (degrees; west > east: across 180)
_ORDER = {"node": 0, "way": 1, "relation": 2}
CLIENT_MARGIN_S = 30.0  # the client waits this much longer than the server-side timeout


@dataclass(frozen=True)
class OverpassResult:
    """``path``: the merged OSM XML; ``tiles``: the cached answer of each tile; ``fingerprint``: of the
    URL, the queries and the answers."""

    path: Path
    tiles: tuple[Path, ...]
    fingerprint: str


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def _regex_literal(s: str) -> str:
    """``s`` as a regular expression matching itself, quoted for an Overpass QL string."""
    return _quote(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", s))


def _selectors(catalogue) -> list[tuple[str, str]]:
    """(element type, tag filter) pairs covering every category of the catalogue: nodes for point
    categories, ways and relations for line and polygon ones; values of one key are merged."""
    wanted: dict[tuple[str, str], set[str] | None] = {}  # (type, key) -> values (None = any but "no")
    for cat in catalogue.categories.values():
        types = (["node"] if "point" in cat.geometry else []) + (
            ["way", "relation"] if {"line", "polygon"} & set(cat.geometry) else [])
        for key, vals in cat.tags.items():
            for t in types:
                if vals == "*" or wanted.get((t, key), set()) is None:
                    wanted[(t, key)] = None
                else:
                    wanted.setdefault((t, key), set()).update(vals)
    out = []
    for (t, key), vals in sorted(wanted.items(), key=lambda kv: (_ORDER[kv[0][0]], kv[0][1])):
        k = _quote(key)
        if vals is None:
            out.append((t, f'["{k}"]["{k}"!="no"]'))
        else:
            alts = "|".join(_regex_literal(v) for v in sorted(vals))
            out.append((t, f'["{k}"~"^({alts})$"]'))
    return out


def overpass_query(catalogue, bbox: BBox, timeout_s: int) -> str:
    """Overpass QL for every feature of the catalogue's tags in ``bbox`` (west, south, east, north; not
    across the antimeridian), with the nodes and ways that make up their geometry, as OSM XML."""
    w, s, e, n = bbox
    box = f"({s:.6f},{w:.6f},{n:.6f},{e:.6f})"
    lines = [f"[out:xml][timeout:{int(timeout_s)}];", "("]
    lines += [f"  {t}{flt}{box};" for t, flt in _selectors(catalogue)]
    lines += [");", "(._;>;);", "out body;"]
    return "\n".join(lines) + "\n"


def overpass_tiles(bbox: BBox, tile_deg: float) -> list[BBox]:
    """``bbox`` cut at the antimeridian and into an even grid of tiles of at most ``tile_deg`` degrees a
    side (edges rounded outwards to 1e-6 degree, so the query text is stable)."""
    import shapely

    from geoembed.geo import split_at_antimeridian

    w, s, e, n = (float(v) for v in bbox)
    if not (-90 <= s < n <= 90 and -180 <= w <= 180 and -180 <= e <= 180) or w == e:
        raise InputError(f"Overpass extent {bbox} is not west, south, east, north in degrees")
    parts = shapely.get_parts(split_at_antimeridian(shapely.box(w, s, e + 360.0 if w > e else e, n)))
    tiles = []
    for part in sorted(parts, key=lambda p: p.bounds):
        x0, y0, x1, y1 = part.bounds
        xs = _edges(x0, x1, tile_deg)
        ys = _edges(y0, y1, tile_deg)
        tiles += [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(len(ys) - 1) for i in range(len(xs) - 1)]
    return tiles


def _edges(lo: float, hi: float, step: float) -> list[float]:
    """Even tile edges from ``lo`` to ``hi`` at most ``step`` apart, to 1e-6 degree (outer edges
    rounded outwards)."""
    n = max(1, math.ceil((hi - lo) / step - 1e-9))
    edges = [round(lo + (hi - lo) * i / n, 6) for i in range(n + 1)]
    edges[0] = math.floor(lo * 1e6 + 1e-3) / 1e6
    edges[-1] = math.ceil(hi * 1e6 - 1e-3) / 1e6
    return edges


def overpass_error(body: bytes) -> str | None:
    """The error an Overpass answer reports (a ``remark`` in XML or JSON, or an HTML error page), or
    None for a complete answer. An answer that does not parse, or is not OSM data, is an error too."""
    head = body.lstrip()[:200].lower()
    if head.startswith(b"{"):
        try:
            doc = json.loads(body)
        except ValueError as err:
            return f"the JSON answer does not parse ({err}): it was cut short"
        return str(doc["remark"]) if isinstance(doc, dict) and doc.get("remark") else None
    if b"<html" in body[:1000].lower():
        text = re.sub(rb"<[^>]+>", b" ", body).decode("utf-8", "replace")
        return "an HTML page instead of OSM data: " + " ".join(text.split())[:300]
    root = None
    try:
        for event, elem in ET.iterparse(io.BytesIO(body), events=("start", "end")):
            if root is None:
                root = elem.tag
            elif event == "end" and elem.tag == "remark":
                return " ".join((elem.text or "").split()) or "a remark without text"
            elif event == "end" and elem.tag in _ORDER:
                elem.clear()
    except ET.ParseError as err:
        return f"the XML answer does not parse ({err}): it was cut short or is not XML"
    return None if root == "osm" else f"the answer is not OSM XML (root element {root!r})"


def _fetch_tile(cfg: OverpassConfig, query: str, path: Path) -> None:
    """POST ``query`` (with retries) and store the checked answer at ``path``, atomically."""

    def once() -> bytes:
        body = fetch_once("POST", cfg.url, what="Overpass query to", data={"data": query},
                          timeout_s=cfg.timeout_s + CLIENT_MARGIN_S, advice="check overpass.url")
        err = overpass_error(body)
        if err is not None:
            raise Retryable(f"Overpass answered with an error: {err}")
        return body

    body = with_retries(once, url=cfg.url, what="Overpass query to", retries=cfg.retries, backoff_s=cfg.backoff_s,
                        advice="retry later, raise overpass.timeout_s, or lower overpass.tile_deg (smaller tiles)")
    with atomic_path(path) as tmp:
        tmp.write_bytes(body)


def _merge(tiles: list[Path], out: Path) -> int:
    """Write the objects of all tiles into one OSM XML file (nodes, ways, relations, each by id, each
    once); returns their number."""
    objects: dict[tuple[int, int], bytes] = {}
    for path in tiles:
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag in _ORDER:
                key = (_ORDER[elem.tag], int(elem.get("id")))
                if key not in objects:
                    objects[key] = ET.tostring(elem, encoding="utf-8").strip()
                elem.clear()
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        fh.write(b"<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\" generator=\"geoembed overpass\">\n")
        for key in sorted(objects):
            fh.write(objects[key])
            fh.write(b"\n")
        fh.write(b"</osm>\n")
    return len(objects)


def overpass_features(cfg: OverpassConfig, bbox: BBox, catalogue) -> OverpassResult:
    """The features of ``catalogue``'s tags over ``bbox`` (west, south, east, north in degrees;
    west > east crosses the antimeridian), fetched tile by tile (or read from the cache) and merged.

    Raises InputError naming the URL: an unreachable server, an HTTP error, a timeout or an Overpass
    error document after the retries; or an extent with no feature at all.
    """
    folder = cache_dir("overpass")
    queries, paths = [], []
    for tile in overpass_tiles(bbox, cfg.tile_deg):
        query = overpass_query(catalogue, tile, cfg.timeout_s)
        key = hashlib.sha256(f"{cfg.url}\n{query}".encode()).hexdigest()[:32]
        path = folder / f"{key}.osm"
        if not path.is_file():
            log.info("Overpass: querying %s for tile %s", cfg.url, tile)
            _fetch_tile(cfg, query, path)
        queries.append(query)
        paths.append(path)
    answers = [file_fingerprint(p) for p in paths]
    fingerprint = text_fingerprint({"url": cfg.url, "queries": queries, "answers": answers})
    merged = folder / f"merged-{fingerprint.removeprefix('sha256:')[:32]}.osm"
    if not merged.is_file():
        if _merge(paths, merged) == 0:
            merged.unlink()
            raise InputError(f"Overpass {cfg.url} holds no feature of the catalogue's tags in {bbox} (west, "
                             "south, east, north): check the locations' extent and the catalogue")
    return OverpassResult(merged, tuple(paths), fingerprint)
