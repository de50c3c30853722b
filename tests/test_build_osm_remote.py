"""`geoembed build` of OSM views from the network, without network: an Overpass API and a file server
started by the tests, answering with the real Helsinki kit. Overpass answers are cached and
fingerprinted, URL sources downloaded once and checked, and failures (an Overpass error document,
a checksum mismatch, a truncated download) are one clear error line with no store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from geoembed.cli import main
from geoembed.io.locations import read_locations
from geoembed.io.viewstore import ViewStore
from geoembed.testing.overpass import OVERPASS_TIMEOUT_REMARK, overpass_handler
from geoembed.testing.remote import LocalServer, Reply

REGION = [24.941, 60.167, 24.945, 60.169]  # central Helsinki, inside the kit
CATALOGUE = {"categories": {
    "shops": {"tags": {"shop": "*"}, "geometry": ["point", "polygon"]},
    "food": {"tags": {"amenity": ["cafe", "restaurant", "bar"]}, "geometry": ["point", "polygon"]},
    "buildings": {"tags": {"building": "*"}, "geometry": ["polygon"], "measures": ["count", "area"]},
}}
VIEW = {"kind": "osm", "name": "osm", "catalogue": "catalogue.yaml", "h3_resolution": 12, "radii_m": [100.0],
        "max_distance_m": 200.0}


def _config(tmp_path: Path, **view) -> Path:
    (tmp_path / "catalogue.yaml").write_text(yaml.safe_dump(CATALOGUE))
    cfg = {"workdir": str(tmp_path / "run"), "seed": 0, "dask": {"chunk_size": 16},
           "locations": {"region": {"bbox": REGION}, "n": 40, "block_size_m": 200},
           "views": [{**VIEW, **view}]}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _markers(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "_chunks").glob("*.json")}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("geoembed build: error: ")
    return err


@pytest.fixture
def overpass(helsinki_pbf):
    with LocalServer() as srv:
        handler = overpass_handler(helsinki_pbf)
        yield srv, srv.add_route("/api/interpreter", handler), handler


def test_overpass_view_builds_from_the_cache_and_reruns_without_asking(tmp_path, overpass, capsys):
    srv, url, handler = overpass
    cfg = _config(tmp_path, overpass={"url": url, "timeout_s": 25, "retries": 1, "backoff_s": 0.01,
                                      "tile_deg": 0.006})
    assert main(["build", "-c", str(cfg)]) == 0
    store = ViewStore.open(tmp_path / "run" / "views" / "osm")
    attrs = store.attrs
    # the extent is the locations' box padded by the view's reach (here the 200 m distance cap), in tiles
    locs = read_locations(tmp_path / "run" / "locations.parquet")
    w, s, e, n = attrs["overpass"]["extent"]
    pad_lon, pad_lat = 200 / (111_320 * np.cos(np.radians(60.17))), 200 / 111_320
    assert locs["lon"].min() - w == pytest.approx(pad_lon, rel=0.02)
    assert e - locs["lon"].max() == pytest.approx(pad_lon, rel=0.02)
    assert locs["lat"].min() - s == pytest.approx(pad_lat, rel=0.02)
    assert n - locs["lat"].max() == pytest.approx(pad_lat, rel=0.02)
    assert attrs["overpass"]["tiles"] == len(handler.queries) > 1
    assert attrs["source_fingerprint"].startswith("sha256:") and attrs["overpass"]["url"] == url
    assert all('node["shop"]["shop"!="no"]' in q and "highway" not in q for q in handler.queries)
    # every location lies in the box asked for: all valid, with shops and buildings around central Helsinki
    assert store.read("valid").all()
    radius, names = store.read("radius"), attrs["radius_features"]
    assert radius[:, names.index("buildings_count_r100")].mean() > 1
    assert radius[:, names.index("shops_count_r100")].sum() > 0
    dist = store.read("distance")
    assert np.isfinite(dist).all() and (dist <= 200.0).all() and (dist < 200.0).any()
    # a rerun reads the cached answers (no request) and computes nothing
    markers, asked = _markers(store.path), len(srv.log)
    assert main(["build", "-c", str(cfg)]) == 0
    assert len(srv.log) == asked and _markers(store.path) == markers
    # the answers are in the fingerprint: a changed answer (one more shop) makes the store stale
    folder = Path(os.environ["GEOEMBED_CACHE_DIR"]) / "overpass"
    tile = folder / (hashlib.sha256(f"{url}\n{handler.queries[0]}".encode()).hexdigest()[:32] + ".osm")
    lat, lon = (REGION[1] + REGION[3]) / 2, (REGION[0] + REGION[2]) / 2
    tile.write_text(tile.read_text().replace("</osm>", f'<node id="9999999999" lat="{lat}" lon="{lon}">'
                                                        '<tag k="shop" v="bakery"/></node>\n</osm>'))
    capsys.readouterr()
    assert main(["build", "-c", str(cfg)]) == 1
    assert "views/osm was built from different inputs or settings" in _one_error_line(capsys)
    assert main(["build", "-c", str(cfg), "--overwrite"]) == 0
    shops = ViewStore.open(store.path).read("radius")[:, names.index("shops_count_r100")]
    assert shops.sum() > radius[:, names.index("shops_count_r100")].sum()
    assert len(srv.log) == asked  # still from the cache


def test_overpass_error_document_is_one_line_and_leaves_no_store(tmp_path, overpass, capsys):
    srv, _, _ = overpass
    url = srv.add_route("/busy/interpreter", lambda *a: Reply(body=OVERPASS_TIMEOUT_REMARK,
                                                              content_type="application/osm3s+xml"))
    cfg = _config(tmp_path, overpass={"url": url, "timeout_s": 25, "retries": 1, "backoff_s": 0.01})
    assert main(["build", "-c", str(cfg)]) == 1
    err = _one_error_line(capsys)
    assert f"OSM view 'osm': Overpass query to {url}" in err and "Query timed out" in err
    assert "2 attempts" in err and "overpass.timeout_s" in err
    assert len(srv.requests_to("/busy/interpreter")) == 2
    assert not (tmp_path / "run" / "views" / "osm").exists()


def test_url_source_is_downloaded_once_checked_and_resumed(tmp_path, helsinki_pbf, capsys, monkeypatch):
    import geoembed.sources.http

    monkeypatch.setattr(geoembed.sources.http, "retry_delay", lambda *a, **k: 0.0)  # retries without waiting
    data = Path(helsinki_pbf).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with LocalServer() as srv:
        url = srv.add_file("/extracts/helsinki-latest.osm.pbf", data)
        path = "/extracts/helsinki-latest.osm.pbf"
        # a download cut short on every attempt: an error naming the URL, the partial file kept, no store
        srv.fail(path, *[("drop", 100_000)] * 5)
        cfg = _config(tmp_path, source=url, source_sha256=sha)
        assert main(["build", "-c", str(cfg)]) == 1
        err = _one_error_line(capsys)
        assert f"OSM view 'osm': download of {url}" in err and "cut short" in err and "rerun to resume" in err
        assert not (tmp_path / "run" / "views" / "osm").exists()
        srv.faults.clear()
        # the rerun resumes the partial file (a Range request) and builds
        assert main(["build", "-c", str(cfg)]) == 0
        assert srv.requests_to(path)[-1]["headers"].get("Range", "").startswith("bytes=")
        store = ViewStore.open(tmp_path / "run" / "views" / "osm")
        assert store.attrs["source"] == url and store.attrs["local_path"].endswith("helsinki-latest.osm.pbf")
        # the same view from the local file holds the same arrays
        local = tmp_path / "local"
        local.mkdir()
        assert main(["build", "-c", str(_config(local, source=str(helsinki_pbf)))]) == 0
        other = ViewStore.open(local / "run" / "views" / "osm")
        assert store.attrs["source_fingerprint"] == other.attrs["source_fingerprint"]
        for name in ("hex", "radius", "distance", "valid"):
            np.testing.assert_array_equal(store.read(name), other.read(name))
        # a rerun downloads nothing and computes nothing
        asked, markers = len(srv.requests_to(path)), _markers(store.path)
        assert main(["build", "-c", str(cfg)]) == 0
        assert len(srv.requests_to(path)) == asked and _markers(store.path) == markers
        # a wrong checksum: the download is removed, the error says so, no store
        capsys.readouterr()
        bad = tmp_path / "bad"
        bad.mkdir()
        assert main(["build", "-c", str(_config(bad, source=url, source_sha256="0" * 64))]) == 1
        err = _one_error_line(capsys)
        assert f"download of {url}: sha256 is sha256:{sha}, expected sha256:{'0' * 64}" in err
        assert not (bad / "run" / "views" / "osm").exists()
        # an HTTP error
        assert main(["build", "-c", str(_config(bad, source=srv.url + "/extracts/nope.osm.pbf"))]) == 1
        err = _one_error_line(capsys)
        assert "nope.osm.pbf: HTTP 404" in err and not (bad / "run" / "views" / "osm").exists()


def test_osm_source_settings_are_checked(tmp_path, capsys):
    for view, words in (({"source": "x.osm.pbf", "overpass": {"url": "http://h/api"}}, "got both"),
                        ({}, "got neither"),
                        ({"source": "x.osm.pbf", "source_sha256": "0" * 64}, "http(s) URL"),
                        ({"source": "https://h/x.osm.pbf", "source_sha256": "abc"}, "64 hexadecimal digits"),
                        ({"overpass": {"url": "ftp://h/api"}}, "not an http(s) URL")):
        assert main(["build", "-c", str(_config(tmp_path, **view))]) == 1
        assert words in capsys.readouterr().err
    assert main(["build", "-c", str(_config(tmp_path, source="https://127.0.0.1:9/extract.zip"))]) == 1
    assert "unknown format" in capsys.readouterr().err
