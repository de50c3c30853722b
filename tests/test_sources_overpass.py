"""Overpass sources against a local server answering real OSM XML (from the Helsinki kit): the query,
tiles, the on-disk cache, retries, error documents and timeouts."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from geoembed.errors import InputError
from geoembed.sources.config import OverpassConfig
from geoembed.sources.overpass import overpass_error, overpass_features, overpass_query, overpass_tiles
from geoembed.testing.overpass import (
    OVERPASS_HTML_ERROR,
    OVERPASS_TIMEOUT_REMARK,
    overpass_handler,
    overpass_xml,
)
from geoembed.testing.remote import LocalServer
from geoembed.views.osm_catalogue import parse_catalogue
from geoembed.views.osm_read import read_osm_features

BBOX = (24.935, 60.164, 24.953, 60.179)  # the Helsinki kit
SMALL = (24.940, 60.166, 24.946, 60.170)  # its centre (OSM XML reads slowly through osmnx)
CAT = parse_catalogue({"categories": {
    "shops": {"tags": {"shop": "*"}, "geometry": ["point", "polygon"]},
    "food": {"tags": {"amenity": ["cafe", "restaurant", "bar"]}, "geometry": ["point", "polygon"]},
    "roads": {"tags": {"highway": ["primary", "secondary", "tertiary", "residential", "pedestrian"]},
              "geometry": ["line"], "measures": ["length"]},
    "buildings": {"tags": {"building": "*"}, "geometry": ["polygon"], "measures": ["count", "area"]},
}})


@pytest.fixture
def overpass(helsinki_pbf):
    with LocalServer() as srv:
        handler = overpass_handler(helsinki_pbf)
        url = srv.add_route("/api/interpreter", handler)
        yield srv, url, handler


def cfg(url: str, **kw) -> OverpassConfig:
    return OverpassConfig.model_validate({"url": url, "timeout_s": 25, "retries": 2, "backoff_s": 0.01, **kw})


def test_query_covers_the_catalogue_tags():
    cat = parse_catalogue({"categories": {
        "shops": {"tags": {"shop": "*"}, "geometry": ["point", "polygon"]},
        "food": {"tags": {"amenity": ["cafe", "bar"]}, "geometry": ["point"]},
        "roads": {"tags": {"highway": ["primary"], "amenity": ["parking"]}, "geometry": ["line"], "measures": ["length"]},
        "odd": {"tags": {"name": ['A "quoted" (x)']}},
    }})
    q = overpass_query(cat, (24.9, 60.1, 25.0, 60.2), 60)
    assert q.startswith("[out:xml][timeout:60];\n(\n")
    assert '  node["amenity"~"^(bar|cafe)$"](60.100000,24.900000,60.200000,25.000000);' in q
    assert '  way["amenity"~"^(parking)$"]' in q and 'node["amenity"~"^(bar|cafe|parking)' not in q
    assert '  node["shop"]["shop"!="no"]' in q and '  relation["shop"]["shop"!="no"]' in q
    assert 'node["highway"' not in q  # a line category has no nodes
    assert r'["name"~"^(A \"quoted\" \\(x\\))$"]' in q  # QL string and regex escapes
    assert q.endswith(");\n(._;>;);\nout body;\n")


def test_tiles_split_large_extents_and_the_antimeridian():
    assert overpass_tiles(BBOX, 0.1) == [BBOX]
    tiles = overpass_tiles((24.9, 60.1, 25.2, 60.3), 0.1)
    assert len(tiles) == 6 and tiles[0] == (24.9, 60.1, 25.0, 60.2) and tiles[-1] == (25.1, 60.2, 25.2, 60.3)
    across = overpass_tiles((179.95, -17.0, -179.95, -16.9), 0.1)
    assert across == [(-180.0, -17.0, -179.95, -16.9), (179.95, -17.0, 180.0, -16.9)]
    with pytest.raises(InputError, match="not west, south, east, north"):
        overpass_tiles((24.9, 60.3, 25.0, 60.1), 0.1)


def test_features_are_fetched_cached_and_read_by_the_osm_reader(overpass, helsinki_pbf):
    srv, url, handler = overpass
    res = overpass_features(cfg(url), SMALL, CAT)
    assert res.path.suffix == ".osm" and len(res.tiles) == 1 and len(handler.queries) == 1
    gdf = read_osm_features(res.path, CAT.keys)
    assert set(gdf.gtype) == {"point", "line", "polygon"}
    member = CAT.match(gdf, gdf.gtype.to_numpy())
    assert member.sum(0).min() > 10  # (other features: tagged nodes of the ways, e.g. traffic signals)
    # the kit's shop nodes in the box, all there
    import osmium

    n_shops = sum(1 for o in osmium.FileProcessor(str(helsinki_pbf), osmium.osm.NODE)
                  if o.tags.get("shop", "no") != "no" and SMALL[0] <= o.location.lon <= SMALL[2]
                  and SMALL[1] <= o.location.lat <= SMALL[3])
    assert (gdf["shop"].notna() & (gdf.gtype == "point")).sum() == n_shops > 20
    # a rerun reads the cache: no request, same file and fingerprint
    again = overpass_features(cfg(url), SMALL, CAT)
    assert len(handler.queries) == 1 and again.path == res.path and again.fingerprint == res.fingerprint
    # another query (here: the server-side timeout) is asked and fingerprinted anew
    other = overpass_features(cfg(url, timeout_s=30), SMALL, CAT)
    assert len(handler.queries) == 2 and other.fingerprint != res.fingerprint


def test_tiles_are_merged_without_repeats(overpass):
    srv, url, handler = overpass
    whole = read_osm_features(overpass_features(cfg(url), SMALL, CAT).path, CAT.keys)
    tiled = overpass_features(cfg(url, tile_deg=0.002), SMALL, CAT)
    assert len(tiled.tiles) == 6 and len(handler.queries) == 1 + 6
    parts = read_osm_features(tiled.path, CAT.keys)
    # ways crossing tile borders come in several tiles but once in the merged file
    assert len(parts) == len(whole)
    np.testing.assert_allclose(np.sort(parts.geometry.to_crs(3067).length.to_numpy()),
                               np.sort(whole.geometry.to_crs(3067).length.to_numpy()))


def test_server_errors_are_retried(overpass):
    srv, url, handler = overpass
    srv.fail("/api/interpreter", ("status", 500), ("status", 429))
    res = overpass_features(cfg(url), SMALL, CAT)
    assert len(srv.requests_to("/api/interpreter")) == 3 and res.path.is_file()


@pytest.mark.parametrize("doc, match", [(OVERPASS_TIMEOUT_REMARK, "runtime error: Query timed out"),
                                        (OVERPASS_HTML_ERROR, "an HTML page instead of OSM data.*too busy")])
def test_error_documents_are_errors_and_never_cached(overpass, doc, match):
    srv, url, _ = overpass
    from geoembed.testing.remote import Reply

    srv.add_route("/bad", lambda *a: Reply(body=doc, content_type="application/osm3s+xml"))
    with pytest.raises(InputError, match=f"Overpass query to {srv.url}/bad: Overpass answered with an error: {match}"
                       ".*3 attempts.*overpass.tile_deg"):
        overpass_features(cfg(srv.url + "/bad"), SMALL, CAT)
    assert len(srv.requests_to("/bad")) == 3
    # nothing was cached: the next run asks again
    with pytest.raises(InputError):
        overpass_features(cfg(srv.url + "/bad", retries=0), SMALL, CAT)
    assert len(srv.requests_to("/bad")) == 4


def test_error_detection():
    assert overpass_error(OVERPASS_TIMEOUT_REMARK).startswith("runtime error: Query timed out")
    assert overpass_error(b'{"version": 0.6, "elements": [], "remark": "runtime error: out of memory"}') == \
        "runtime error: out of memory"
    assert overpass_error(b'{"version": 0.6, "elements": []}') is None
    assert "cut short" in overpass_error(b'<?xml version="1.0"?>\n<osm version="0.6">\n  <node id="1" lat="1" lon')
    assert "not OSM XML" in overpass_error(b"<kml></kml>")
    assert overpass_error(b'<osm version="0.6"><node id="1" lat="1" lon="2"/></osm>') is None


def test_truncated_answer_is_retried(overpass):
    srv, url, handler = overpass
    srv.fail("/api/interpreter", ("drop", 5000))
    res = overpass_features(cfg(url), SMALL, CAT)
    assert len(handler.queries) == 2 and read_osm_features(res.path, ["shop"]).shape[0] > 0


def test_unreachable_server_and_timeout_name_the_url(overpass, monkeypatch):
    srv, url, _ = overpass
    monkeypatch.setattr("geoembed.sources.overpass.CLIENT_MARGIN_S", 0.0)
    srv.fail("/api/interpreter", ("hang", 30), ("hang", 30))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=f"Overpass query to {url}: no answer within 1 s \\(2 attempts\\)"):
        overpass_features(cfg(url, retries=1, timeout_s=1), SMALL, CAT)
    assert time.monotonic() - t0 < 15
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api/interpreter"
    with pytest.raises(InputError, match=f"Overpass query to {closed}: connection failed"):
        overpass_features(cfg(closed, retries=0), SMALL, CAT)


def test_empty_area_is_an_error(overpass):
    srv, url, _ = overpass
    with pytest.raises(InputError, match="holds no feature of the catalogue's tags"):
        overpass_features(cfg(url), (10.0, 10.0, 10.01, 10.01), CAT)


def test_stand_in_server_answers_like_the_kit(helsinki_pbf):
    cat = parse_catalogue({"categories": {"cafes": {"tags": {"amenity": ["cafe"]}, "geometry": ["point"]}}})
    xml = overpass_xml(helsinki_pbf, overpass_query(cat, BBOX, 10))
    kit = read_osm_features(helsinki_pbf, ["amenity"])
    b = kit.geometry.bounds
    inside = (b.minx >= BBOX[0]) & (b.maxx <= BBOX[2]) & (b.miny >= BBOX[1]) & (b.maxy <= BBOX[3])
    n_kit = int(((kit["amenity"] == "cafe") & (kit.gtype == "point") & inside).sum())
    assert xml.count(b'v="cafe"') == n_kit > 10
