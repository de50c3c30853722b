"""`geoembed build` of raster views from STAC, without network: a static catalog of local COGs and a
STAC API served (with its COGs, by range requests) by a local server. The stores hold the chips the
source layer composites, a rerun resumes and does nothing, a changed catalogue makes the store stale,
and bad inputs are one clear error line with no complete-looking store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyproj
import pytest
import yaml
from rasterio.transform import from_origin

from geoembed.cli import main
from geoembed.io.locations import read_locations
from geoembed.io.rasters import raster_footprint
from geoembed.io.viewstore import ViewStore
from geoembed.testing.remote import LocalServer
from geoembed.testing.stac import make_item, serve_stac_api, write_cog, write_static_catalog

ROOT = Path(__file__).resolve().parents[1]
UTM = "EPSG:32633"
RES = 10.0
X0, Y0 = 500_000.0 - 100 * RES, 5_500_000.0
H, W = 160, 200
COLS = {"A": (0, 120), "B": (80, 200)}  # the two items overlap over columns 80..119
r_, c_ = np.mgrid[0:H, 0:W]
RED = {"A": (100 * r_ + c_ + 1).astype("uint16"), "B": (100 * r_ + c_ + 30001).astype("uint16")}
NIR = {k: (v + 5000).astype("uint16") for k, v in RED.items()}
S = 8


def _region_bbox() -> list[float]:
    """The lon/lat box of the grid's interior (200 m in from each edge)."""
    tr = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    xs = [X0 + 200.0, X0 + W * RES - 200.0]
    ys = [Y0 - H * RES + 200.0, Y0 - 200.0]
    lon, lat = tr.transform([xs[0], xs[0], xs[1], xs[1]], [ys[0], ys[1], ys[0], ys[1]])
    return [max(lon[0], lon[1]), max(lat[0], lat[2]), min(lon[2], lon[3]), min(lat[1], lat[3])]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """COGs of items A (cloud 5) and B (cloud 30, with a hole of nodata) and a static catalog of them."""
    root = tmp_path_factory.mktemp("stac_build")
    foot = {}
    for k, (lo, hi) in COLS.items():
        tr = from_origin(X0 + lo * RES, Y0, RES, RES)
        red, nir = RED[k][:, lo:hi].copy(), NIR[k][:, lo:hi].copy()
        if k == "B":
            red[40:60, 60:80] = 0
            nir[40:60, 60:80] = 0
        write_cog(root / "cogs" / f"{k}_red.tif", red, crs=UTM, transform=tr, nodata=0)
        write_cog(root / "cogs" / f"{k}_nir.tif", nir, crs=UTM, transform=tr, nodata=0)
        foot[k] = raster_footprint(root / "cogs" / f"{k}_red.tif")

    def item(item_id: str, k: str, cloud: float, when: str) -> dict:
        return make_item(item_id, collection="s2", footprint=foot[k], datetime=when, cloud_cover=cloud,
                         assets={a: f"../../../cogs/{k}_{a}.tif" for a in ("red", "nir")})

    items = [item("A", "A", 5.0, "2023-07-10T10:00:00Z"), item("B", "B", 30.0, "2023-06-05T10:00:00Z"),
             item("old", "A", 0.0, "2022-07-01T10:00:00Z")]
    write_static_catalog(root / "catalog", {"s2": items})
    return {"root": root, "items": items, "item": item}


def _http_items(srv: LocalServer, items: list[dict]) -> dict[str, list[dict]]:
    out = []
    for it in items:
        it = json.loads(json.dumps(it))
        for a in it["assets"].values():
            a["href"] = srv.url + "/cogs/" + a["href"].rsplit("/", 1)[1]
        out.append(it)
    return {"s2": out}


@pytest.fixture
def api(scene):
    with LocalServer() as srv:
        for p in sorted((scene["root"] / "cogs").glob("*.tif")):
            srv.add_file("/cogs/" + p.name, p.read_bytes())
        cols = _http_items(srv, scene["items"])
        yield srv, serve_stac_api(srv, "/api", cols), cols


def _stac(catalog: str, **kw) -> dict:
    return {"catalog": catalog, "collections": ["s2"], "assets": ["red", "nir"], "composite": "median",
            "query": {"eo:cloud_cover": {"lt": 50}}, "timeout_s": 10, "retries": 0, **kw}


YAML_DATES = "YAML_DATES"  # replaced by unquoted YAML dates in the written config


def _write(tmp_path: Path, views: list[dict]) -> Path:
    """A config in ``tmp_path`` (relative catalog paths are relative to it)."""
    cfg = {"workdir": str(tmp_path / "run"), "seed": 0, "dask": {"chunk_size": 16},
           "locations": {"region": {"bbox": _region_bbox()}, "n": 60, "block_size_m": 500},
           "views": views}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False).replace(YAML_DATES, "[2023-06-01, 2023-08-31]"))
    return path


def _view(name: str, stac: dict) -> dict:
    return {"kind": "raster", "name": name, "stac": stac, "chip_size": S, "resolution_m": RES,
            "resampling": "nearest", "min_valid_fraction": 0.5}


def _markers(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (store / "_chunks").glob("*.json")}


def _expected(store: ViewStore, cfg_path: Path, view: str, lon, lat) -> np.ndarray:
    """The chips the source layer gives for the same view and locations (what the store must hold)."""
    from geoembed.config import load_config
    from geoembed.sources import prepare_stac, read_stac_chunk

    v = load_config(cfg_path).view(view)
    assets = prepare_stac(v.stac, lon, lat, chip_size=S, resolution_m=RES, chunk_rows=16)
    return read_stac_chunk(assets, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")[0]


def test_static_catalog_and_api_views_build_resume_and_notice_a_new_item(tmp_path, scene, api, capsys):
    srv, url, cols = api
    (tmp_path / "cat").symlink_to(scene["root"] / "catalog")  # a catalog path relative to the config
    # the static view's dates are YAML dates (YAML reads 2023-06-01 as a date)
    cfg = _write(tmp_path, [_view("s2_api", _stac(url, datetime="2023-06-01/2023-08-31")),
                            _view("s2_static", _stac("cat/catalog.json", datetime=YAML_DATES))])
    assert "datetime: [2023-06-01, 2023-08-31]" in cfg.read_text()
    assert main(["build", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "view s2_api (raster)" in out and "view s2_static (raster)" in out
    run = tmp_path / "run"
    locs = read_locations(run / "locations.parquet")
    lon, lat = locs["lon"].to_numpy(), locs["lat"].to_numpy()
    api_store, static_store = ViewStore.open(run / "views" / "s2_api"), ViewStore.open(run / "views" / "s2_static")
    assert len(locs) == 60 and api_store.arrays["chips"].shape == (2, S, S)
    chips = api_store.read("chips")
    np.testing.assert_array_equal(chips, _expected(api_store, cfg, "s2_api", lon, lat))
    np.testing.assert_array_equal(static_store.read("chips"), chips)  # the same items, the same pixels
    assert [i["id"] for i in api_store.attrs["items"]] == ["A", "B"]  # 'old' is outside the dates
    assert api_store.attrs["band_names"] == ["red", "nir"]
    assert all(h.startswith(srv.url + "/cogs/") for i in api_store.attrs["items"] for h in i["hrefs"])
    assert api_store.attrs["fingerprints"] != static_store.attrs["fingerprints"]  # other hrefs
    valid = api_store.read("valid")
    assert valid.mean() > 0.9 and not (chips == 0).any()  # nodata is NaN, never zero
    vf = api_store.read("valid_fraction")
    np.testing.assert_allclose(vf, np.isfinite(chips).mean((1, 2, 3)), rtol=1e-6)
    assert len(api_store.stats["chips"]["mean"]) == 2
    assert any(r["headers"].get("Range") for r in srv.requests_to("/cogs/A_red.tif"))

    # a rerun searches again, finds the same items and computes nothing
    before = {v: _markers(run / "views" / v) for v in ("s2_api", "s2_static")}
    assert main(["build", "-c", str(cfg)]) == 0
    assert {v: _markers(run / "views" / v) for v in ("s2_api", "s2_static")} == before

    # a scene is added to the catalogue: the store is stale until --overwrite
    new = json.loads(json.dumps(cols["s2"][0]))
    new["id"], new["properties"]["eo:cloud_cover"] = "A2", 1.0
    cols["s2"].append(new)
    capsys.readouterr()
    assert main(["build", "-c", str(cfg), "--only", "s2_api"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "views/s2_api was built from different inputs or settings; pass --overwrite" in err
    assert main(["build", "-c", str(cfg), "--only", "s2_api", "--overwrite"]) == 0
    assert [i["id"] for i in ViewStore.open(run / "views" / "s2_api").attrs["items"]] == ["A2", "A", "B"]

    # the same in a static catalog
    write_static_catalog(scene["root"] / "catalog", {"s2": [*scene["items"], scene["item"]("A2", "A", 1.0,
                                                                                           "2023-07-11T10:00:00Z")]})
    assert main(["build", "-c", str(cfg), "--only", "s2_static"]) == 1
    assert "views/s2_static was built from different inputs" in capsys.readouterr().err
    write_static_catalog(scene["root"] / "catalog", {"s2": scene["items"]})  # as the other tests expect it


def test_runtime_settings_do_not_make_the_store_stale(tmp_path, scene):
    from geoembed.build import build
    from geoembed.config import load_config

    cfg = _write(tmp_path, [_view("s2", _stac(str(scene["root"] / "catalog" / "catalog.json")))])
    build(load_config(cfg))
    markers = _markers(tmp_path / "run" / "views" / "s2")
    text = cfg.read_text().replace("timeout_s: 10", "timeout_s: 99").replace("retries: 0", "retries: 5")
    cfg.write_text(text)
    build(load_config(cfg))  # resumes: nothing to compute, no stale-store error
    assert _markers(tmp_path / "run" / "views" / "s2") == markers
    cfg.write_text(text.replace("composite: median", "composite: first"))
    from geoembed.errors import InputError

    with pytest.raises(InputError, match="pass --overwrite"):
        build(load_config(cfg))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("geoembed build: error: ")
    return err


def test_bad_stac_inputs_are_one_clear_line_and_leave_no_store(tmp_path, scene, api, capsys):
    srv, url, _ = api
    catalog = str(scene["root"] / "catalog" / "catalog.json")
    store = tmp_path / "run" / "views" / "s2"
    dead = f"http://127.0.0.1:{_free_port()}/api/"
    cases = [
        (_stac(dead), [f"view s2: STAC catalogue {dead} cannot be read", "check stac.catalog"]),
        (_stac(catalog, datetime="2030-01-01/2030-02-01"), ["view s2: STAC catalogue", "no item in collections",
                                                            "widen stac.datetime", "locations.region"]),
        (_stac(catalog, assets=["red", "swir16"]), ["view s2: STAC item", "has no asset swir16", "stac.assets"]),
        (_stac(str(tmp_path / "nowhere" / "catalog.json")), ["nowhere/catalog.json cannot be read"]),
    ]
    for stac, words in cases:
        cfg = _write(tmp_path, [_view("s2", stac)])
        assert main(["build", "-c", str(cfg)]) == 1
        err = _one_error_line(capsys)
        assert all(w in err for w in words), err
        assert not store.exists()
    # a catalogue that does not answer in time
    srv.fail("/api/", ("hang", 30))
    cfg = _write(tmp_path, [_view("s2", _stac(url, timeout_s=0.5))])
    assert main(["build", "-c", str(cfg)]) == 1
    assert f"view s2: STAC catalogue {url} cannot be read" in _one_error_line(capsys) and not store.exists()
    # an HTTP error of the search
    srv.fail("/api/search", ("status", 500))
    cfg = _write(tmp_path, [_view("s2", _stac(url))])
    assert main(["build", "-c", str(cfg)]) == 1
    err = _one_error_line(capsys)
    assert f"STAC search at {srv.url}/api/search failed (HTTP 500" in err and not store.exists()


def test_unreadable_scenes_stop_the_build_with_an_incomplete_store(tmp_path, scene, api, capsys):
    srv, url, _ = api
    del srv.files["/cogs/B_nir.tif"]  # an asset the server no longer has (HTTP 404)
    cfg = _write(tmp_path, [_view("s2", _stac(url))])
    assert main(["build", "-c", str(cfg)]) == 1
    err = _one_error_line(capsys)
    assert "STAC item B" in err and "B_nir.tif" in err and "finished chunks are kept" in err
    store = tmp_path / "run" / "views" / "s2"
    assert not json.loads((store / "meta.json").read_text())["complete"]
    from geoembed.errors import InputError

    with pytest.raises(InputError, match="incomplete"):
        ViewStore.open(store)
    # the file is back: the rerun (a new process, as from the shell: GDAL keeps a 404 for the life of
    # a process) completes only the missing chunks
    done = _markers(store)
    srv.add_file("/cogs/B_nir.tif", (scene["root"] / "cogs" / "B_nir.tif").read_bytes())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "geoembed.cli", "build", "-c", str(cfg)], check=True, env=env,
                   stdout=subprocess.DEVNULL, timeout=300)
    after = _markers(store)
    assert {k: after[k] for k in done} == done and len(after) > len(done)
    assert ViewStore.open(store).complete


def test_a_scene_without_crs_names_the_item(tmp_path, capsys):
    red = write_cog(tmp_path / "cogs" / "x_red.tif", RED["A"][:, :120], crs=None,
                    transform=from_origin(X0, Y0, RES, RES), nodata=0)
    ref = write_cog(tmp_path / "ref.tif", RED["A"][:, :120], crs=UTM, transform=from_origin(X0, Y0, RES, RES))
    item = make_item("nocrs", collection="s2", footprint=raster_footprint(ref), datetime="2023-07-01T00:00:00Z",
                     assets={"red": str(red)}, cloud_cover=1.0)
    catalog = write_static_catalog(tmp_path / "cat", {"s2": [item]})
    cfg = _write(tmp_path, [_view("s2", _stac(str(catalog), assets=["red"], query=None))])
    assert main(["build", "-c", str(cfg)]) == 1
    err = _one_error_line(capsys)
    assert "STAC item nocrs" in err and "has no CRS" in err
    assert not ViewStore.open(tmp_path / "run" / "views" / "s2", require_complete=False).complete
