"""STAC sources without network: a static catalog of local COGs, the same catalog served over HTTP,
and a minimal STAC API served by a local server (range requests, paging); chips checked against the
COG pixels; bad catalogues, searches, assets and scenes give clear errors."""

from __future__ import annotations

import json
import pickle
import socket
import time

import numpy as np
import pyproj
import pytest
from rasterio.transform import from_origin

from geoembed.errors import ConfigError, InputError
from geoembed.io.rasters import raster_footprint
from geoembed.sources.assets import gdal_path, load_hook, prepare_stac, resolve_assets
from geoembed.sources.composite import item_hits, read_stac_chunk
from geoembed.sources.config import StacConfig
from geoembed.sources.extent import chip_bounds, chips_extent
from geoembed.sources.stac import search_areas, search_items
from geoembed.testing.remote import LocalServer
from geoembed.testing.stac import make_item, serve_stac_api, write_cog, write_static_catalog

# A UTM 33N grid whose column 100 lies on the central meridian: there the chip grid matches the
# raster grid to a few thousandths of a pixel, so nearest-neighbour chips are exact raster windows.
UTM = "EPSG:32633"
RES = 10.0
X0, Y0 = 500_000.0 - 100 * RES, 5_500_000.0
H, W = 160, 200
A_COLS, B_COLS = (0, 120), (80, 200)  # item A covers columns 0..119, item B 80..199 of the grid
KEEP = [4, 5]
S = 7
TO_LL = pyproj.Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
r_, c_ = np.mgrid[0:H, 0:W]
RED = {"A": (100 * r_ + c_ + 1).astype("uint16"), "B": (100 * r_ + c_ + 30001).astype("uint16")}
NIR = {k: (v + 5000).astype("uint16") for k, v in RED.items()}
# classes on a 20 m grid (half the rows and columns): A has a cloud (9) over rows 20..39, columns 90..109
# of the 10 m grid; B a cloud shadow (3) over rows 100..119, columns 160..179
SCL = {"A": np.full((H // 2, W // 2), 4, "uint8"), "B": np.full((H // 2, W // 2), 5, "uint8")}
SCL["A"][10:20, 45:55] = 9
SCL["B"][50:60, 80:90] = 3
HOLE = (slice(50, 60), slice(150, 160))  # B's nodata (0) in both bands
# (row, col) of chip centres (pixel centres): A only; A cloud over the overlap; half cloud; B hole;
# B shadow; overlap at A's right edge; top edge of both rasters
LOCS = [(30, 40), (30, 100), (40, 110), (55, 152), (110, 170), (5, 118), (1, 60)]


def lonlat(rows, cols):
    return TO_LL.transform(X0 + (np.asarray(cols, float) + 0.5) * RES, Y0 - (np.asarray(rows, float) + 0.5) * RES)


def _valid(item: str) -> np.ndarray:
    """Where item ``item`` holds a kept, valid pixel on the 10 m grid."""
    lo, hi = A_COLS if item == "A" else B_COLS
    ok = (c_ >= lo) & (c_ < hi) & np.isin(np.repeat(np.repeat(SCL[item], 2, 0), 2, 1), KEEP)
    if item == "B":
        ok[HOLE] = False
    return ok


def expected_chips(method: str) -> np.ndarray:
    """Composited chips of LOCS computed from the arrays written to the COGs."""
    vals = {k: np.stack([RED[k], NIR[k]]).astype(np.float64) for k in "AB"}
    va, vb = _valid("A"), _valid("B")
    if method == "first":
        full = np.where(va, vals["A"], np.where(vb, vals["B"], np.nan))
    else:
        full = np.where(va & vb, (vals["A"] + vals["B"]) / 2, np.where(va, vals["A"], np.where(vb, vals["B"], np.nan)))
    out = np.full((len(LOCS), 2, S, S), np.nan)
    for i, (r, c) in enumerate(LOCS):
        for dr in range(S):
            for dc in range(S):
                rr, cc = r + dr - S // 2, c + dc - S // 2
                if 0 <= rr < H and 0 <= cc < W:
                    out[i, :, dr, dc] = full[:, rr, cc]
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """COGs of items A (cloud 5) and B (cloud 30, earlier) plus decoys, as a static catalog on disk."""
    root = tmp_path_factory.mktemp("stac")
    files = {}
    for k, (lo, hi) in (("A", A_COLS), ("B", B_COLS)):
        tr = from_origin(X0 + lo * RES, Y0, RES, RES)
        red, nir = RED[k][:, lo:hi].copy(), NIR[k][:, lo:hi].copy()
        if k == "B":
            for band in (red, nir):
                band[HOLE[0], HOLE[1].start - lo:HOLE[1].stop - lo] = 0
        files[k] = {
            "red": write_cog(root / "cogs" / f"{k}_red.tif", red, crs=UTM, transform=tr, nodata=0),
            "nir": write_cog(root / "cogs" / f"{k}_nir.tif", nir, crs=UTM, transform=tr, nodata=0),
            "scl": write_cog(root / "cogs" / f"{k}_scl.tif", SCL[k][:, lo // 2:hi // 2], crs=UTM,
                             transform=from_origin(X0 + lo * RES, Y0, 2 * RES, 2 * RES), nodata=0),
        }
    foot = {k: raster_footprint(files[k]["red"]) for k in "AB"}
    far = raster_footprint(files["A"]["red"]).buffer(0)
    from shapely import affinity

    far = affinity.translate(far, 5.0, 0.0)  # 5 degrees east: never under the locations

    def rel(k):  # hrefs relative to the item file <root>/<collection>/<id>/<id>.json
        return {a: f"../../cogs/{k}_{a}.tif" for a in ("red", "nir", "scl")}

    items = {
        "s2": [
            make_item("A", collection="s2", footprint=foot["A"], datetime="2023-07-10T10:00:00Z", assets=rel("A"),
                      cloud_cover=5.0),
            make_item("B", collection="s2", footprint=foot["B"], datetime="2023-06-05T10:00:00Z", assets=rel("B"),
                      cloud_cover=30.0),
            make_item("old", collection="s2", footprint=foot["A"], datetime="2022-07-01T10:00:00Z",
                      assets=rel("A"), cloud_cover=0.0),
            make_item("cloudy", collection="s2", footprint=foot["A"], datetime="2023-07-01T10:00:00Z",
                      assets=rel("A"), cloud_cover=90.0),
            make_item("far", collection="s2", footprint=far, datetime="2023-07-01T10:00:00Z", assets=rel("A"),
                      cloud_cover=1.0),
        ],
        "landsat": [make_item("L", collection="landsat", footprint=foot["A"], datetime="2023-07-01T10:00:00Z",
                              assets=rel("A"), cloud_cover=0.0)],
    }
    catalog = write_static_catalog(root, items)
    return {"root": root, "catalog": catalog, "files": files, "items": items}


def cfg_for(catalog: str, **kw) -> StacConfig:
    base = dict(catalog=str(catalog), collections=["s2"], assets=["red", "nir"], datetime="2023-06-01/2023-08-31",
                query={"eo:cloud_cover": {"lt": 50}}, mask={"asset": "scl", "keep": KEEP}, composite="first",
                timeout_s=5.0, retries=0)
    base.update(kw)
    return StacConfig.model_validate(base)


def bbox_of_locs():
    lon, lat = lonlat([r for r, _ in LOCS], [c for _, c in LOCS])
    return chips_extent(chip_bounds(lon, lat, S, RES))


def _http_items(server: LocalServer, scene) -> dict[str, list[dict]]:
    """The scene's items with http hrefs to COGs served by ``server``."""
    out = {}
    for cid, items in scene["items"].items():
        out[cid] = []
        for item in items:
            item = json.loads(json.dumps(item))
            for a in item["assets"].values():
                name = a["href"].rsplit("/", 1)[1]
                a["href"] = server.url + "/cogs/" + name
            out[cid].append(item)
    return out


@pytest.fixture
def api(scene):
    """A STAC API over the scene, its COGs served with range requests by the same local server."""
    with LocalServer() as srv:
        for p in sorted((scene["root"] / "cogs").glob("*.tif")):
            srv.add_file("/cogs/" + p.name, p.read_bytes())
        cols = _http_items(srv, scene)
        url = serve_stac_api(srv, "/api", cols, page_size=2)
        yield srv, url, cols


# ----------------------------------------------------------------------------- search
def test_static_catalog_search_filters_and_sorts(scene):
    items = search_items(cfg_for(scene["catalog"]), bbox_of_locs())
    # 'old' is outside the dates, 'cloudy' fails the query, 'far' misses the box, 'L' is another collection;
    # A (cloud 5) comes before B (cloud 30) although B is older
    assert [i.id for i in items] == ["A", "B"]
    assert [i.id for i in search_items(cfg_for(scene["catalog"], query=None), bbox_of_locs())] == ["A", "B", "cloudy"]
    assert [i.id for i in search_items(cfg_for(scene["catalog"], collections=None, query=None,
                                                datetime=None), bbox_of_locs())] == ["old", "L", "A", "B", "cloudy"]
    one_day = cfg_for(scene["catalog"], datetime="2023-06-05")  # a date is its whole day
    assert [i.id for i in search_items(one_day, bbox_of_locs())] == ["B"]
    open_start = cfg_for(scene["catalog"], datetime=[None, "2023-06-30"])
    assert open_start.datetime == "../2023-06-30"
    assert [i.id for i in search_items(open_start, bbox_of_locs())] == ["old", "B"]
    open_end = cfg_for(scene["catalog"], datetime="2023-07-05/..")
    assert [i.id for i in search_items(open_end, bbox_of_locs())] == ["A"]


def test_api_search_pages_and_matches_the_static_catalog(scene, api):
    srv, url, _ = api
    got = search_items(cfg_for(url), bbox_of_locs())
    assert [i.id for i in got] == ["A", "B"]
    assert [r for r in srv.requests_to("/api/search") if r["method"] == "POST"]
    body = json.loads(srv.requests_to("/api/search")[0]["body"])
    assert body["collections"] == ["s2"] and body["query"] == {"eo:cloud_cover": {"lt": 50}}
    # paging: 5 s2 items over the box without query and dates, 2 per page
    many = search_items(cfg_for(url, query=None, datetime=None), bbox_of_locs())
    assert [i.id for i in many] == ["old", "A", "B", "cloudy"]
    assert len(srv.requests_to("/api/search")) >= 1 + 2


def test_api_without_query_extension_filters_locally(scene):
    with LocalServer() as srv:
        url = serve_stac_api(srv, "/api", _http_items(srv, scene), query_extension=False)
        got = search_items(cfg_for(url), bbox_of_locs())
        assert [i.id for i in got] == ["A", "B"]
        assert all("query" not in json.loads(r["body"] or b"{}") for r in srv.requests_to("/api/search"))


def test_static_catalog_over_http(scene):
    with LocalServer() as srv:
        root = scene["root"]
        for p in root.rglob("*"):
            if p.is_file():
                srv.add_file("/" + p.relative_to(root).as_posix(), p.read_bytes())
        cfg = cfg_for(srv.url + "/catalog.json")
        items = search_items(cfg, bbox_of_locs())
        assert [i.id for i in items] == ["A", "B"]
        assets = resolve_assets(items, cfg)
        assert assets.items[0].hrefs == (srv.url + "/cogs/A_red.tif", srv.url + "/cogs/A_nir.tif")
        lon, lat = lonlat([r for r, _ in LOCS], [c for _, c in LOCS])
        chips, _ = read_stac_chunk(assets, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")
        np.testing.assert_array_equal(chips, expected_chips("first"))


# ----------------------------------------------------------------------------- chips
@pytest.mark.parametrize("method", ["first", "median"])
def test_chips_from_two_overlapping_items_match_the_cog_pixels(scene, api, method):
    srv, url, _ = api
    cfg = cfg_for(url, composite=method)
    assets = resolve_assets(search_items(cfg, bbox_of_locs()), cfg)
    assert [it.id for it in assets.items] == ["A", "B"] and assets.band_names == ["red", "nir"]
    assert all(h.startswith("http://127.0.0.1") for it in assets.items for h in it.hrefs)
    far_lon, far_lat = 16.2, 50.0  # no item there
    lon, lat = lonlat([r for r, _ in LOCS], [c for _, c in LOCS])
    lon, lat = np.r_[lon, far_lon], np.r_[lat, far_lat]
    chips, vf = read_stac_chunk(assets, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")
    exp = expected_chips(method)
    assert chips.shape == (len(LOCS) + 1, 2, S, S) and chips.dtype == np.float32
    np.testing.assert_array_equal(chips[:-1], exp)
    assert np.isnan(chips[-1]).all() and vf[-1] == 0
    np.testing.assert_allclose(vf[:-1], np.isfinite(exp).mean((1, 2, 3)))
    assert not (chips == 0).any()  # no data is NaN, never zero
    assert any(r["headers"].get("Range") for r in srv.requests_to("/cogs/A_red.tif"))  # COGs read by ranges
    # the same chips from the static catalog of local files, in batches of one location
    scfg = cfg_for(scene["catalog"], composite=method)
    sassets = resolve_assets(search_items(scfg, bbox_of_locs()), scfg)
    schips, _ = read_stac_chunk(sassets, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest",
                                max_stack_bytes=1)
    np.testing.assert_array_equal(schips, chips)


def test_prepare_searches_the_cells_under_the_chips(scene, api):
    srv, url, _ = api
    lon, lat = lonlat([r for r, _ in LOCS], [c for _, c in LOCS])
    lon, lat = np.r_[lon, 16.2, np.nan], np.r_[lat, 50.0, np.nan]  # a location far away, one without coordinates
    areas = search_areas(lon, lat, chip_size=S, resolution_m=RES, chunk_rows=3, cells_per_degree=10)
    assert len(areas) == 1 and areas[0].geom_type == "MultiPolygon"  # the scene's cell and the far one
    assert len(search_areas(lon, lat, chip_size=S, resolution_m=RES, chunk_rows=3, max_cells=1)) == 3
    assets = prepare_stac(cfg_for(url), lon, lat, chip_size=S, resolution_m=RES, chunk_rows=3)
    assert [it.id for it in assets.items] == ["A", "B"]
    assert "intersects" in json.loads(srv.requests_to("/api/search")[-1]["body"])
    # one location: its cell is a rectangle, searched by bbox; the static catalog gives the same
    one = prepare_stac(cfg_for(url), lon[:1], lat[:1], chip_size=S, resolution_m=RES, chunk_rows=3)
    assert "bbox" in json.loads(srv.requests_to("/api/search")[-1]["body"])
    static = prepare_stac(cfg_for(scene["catalog"]), lon, lat, chip_size=S, resolution_m=RES, chunk_rows=3)
    assert [it.id for it in one.items] == [it.id for it in static.items] == ["A", "B"]
    # what a chunk task receives pickles (dask processes, distributed workers) and reads the same
    again = pickle.loads(pickle.dumps(static))
    np.testing.assert_array_equal(read_stac_chunk(again, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")[0],
                                  read_stac_chunk(static, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")[0])
    with pytest.raises(InputError, match="no location has a chip"):
        prepare_stac(cfg_for(url), lon[-1:], lat[-1:], chip_size=S, resolution_m=RES, chunk_rows=3)


def test_item_hits_follow_footprints(scene):
    cfg = cfg_for(scene["catalog"])
    assets = resolve_assets(search_items(cfg, bbox_of_locs()), cfg)
    lon, lat = lonlat([30, 30, 30], [40, 100, 170])
    it, loc = item_hits(assets.items, lon, lat, S, RES)
    assert list(zip(loc.tolist(), it.tolist(), strict=True)) == [(0, 0), (1, 0), (1, 1), (2, 1)]


def test_signing_applies_when_reading_only(scene, api):
    srv, url, _ = api
    calls = []

    def sign(href: str) -> str:
        calls.append(href)
        return f"{href}?sig={len(calls)}"

    cfg = cfg_for(url)
    items = search_items(cfg, bbox_of_locs())
    plain, signed = resolve_assets(items, cfg), resolve_assets(items, cfg, sign=sign)
    assert plain.fingerprint == signed.fingerprint  # signatures never reach the fingerprint
    assert signed.items[0].hrefs == plain.items[0].hrefs
    lon, lat = lonlat([30], [100])
    chips, _ = read_stac_chunk(signed, lon, lat, chip_size=S, resolution_m=RES, resampling="nearest")
    np.testing.assert_array_equal(chips, expected_chips("first")[1:2])
    assert calls and all(r["raw"].split("?sig=")[1] for r in srv.log if r["path"].startswith("/cogs/"))
    assert gdal_path("https://h/x.tif?sig=1") == "/vsicurl/https://h/x.tif?sig=1"
    assert gdal_path("s3://bucket/k.tif") == "/vsis3/bucket/k.tif"
    assert load_hook("posixpath:basename")("/a/b.tif") == "b.tif"
    with pytest.raises(ConfigError, match="stac.sign"):
        load_hook("no_such_module_xyz:sign")


def test_fingerprint_notices_a_changed_catalogue(scene):
    with LocalServer() as srv:
        cols = _http_items(srv, scene)
        url = serve_stac_api(srv, "/api", cols)
        cfg = cfg_for(url)
        fp1 = resolve_assets(search_items(cfg, bbox_of_locs()), cfg).fingerprint
        assert resolve_assets(search_items(cfg, bbox_of_locs()), cfg).fingerprint == fp1  # a rerun resumes
        new = json.loads(json.dumps(cols["s2"][0]))
        new["id"] = "A2"
        cols["s2"].append(new)  # a new scene is ingested
        items = search_items(cfg, bbox_of_locs())
        assert [i.id for i in items] == ["A", "A2", "B"]
        assert resolve_assets(items, cfg).fingerprint != fp1
        assert resolve_assets(items[:1], cfg_for(url, composite="median")).fingerprint != \
            resolve_assets(items[:1], cfg).fingerprint


# ----------------------------------------------------------------------------- bad input
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_catalogue_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}/api/"
    with pytest.raises(InputError, match=f"STAC catalogue {url} cannot be read.*network"):
        search_items(cfg_for(url), (0, 0, 1, 1))


def test_missing_static_catalog_names_the_path(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/nope/catalog.json cannot be read"):
        search_items(cfg_for(tmp_path / "nope" / "catalog.json"), (0, 0, 1, 1))


def test_http_errors_are_retried_then_reported(scene, api):
    srv, url, _ = api
    srv.fail("/api/search", ("status", 503))  # one failure, then the search works
    assert [i.id for i in search_items(cfg_for(url, retries=2), bbox_of_locs())] == ["A", "B"]
    srv.fail("/api/search", *[("status", 500)] * 3)
    with pytest.raises(InputError, match=r"STAC search at http://127.0.0.1:\d+/api/search failed \(HTTP 500"):
        search_items(cfg_for(url, retries=2), bbox_of_locs())


def test_timeout_names_the_url(scene, api):
    srv, url, _ = api
    srv.fail("/api/", ("hang", 30))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=f"STAC catalogue {url} cannot be read"):
        search_items(cfg_for(url, timeout_s=0.5), bbox_of_locs())
    assert time.monotonic() - t0 < 10


def test_empty_search_and_too_many_items(scene):
    with pytest.raises(InputError, match="no item in collections \\['s2'\\].*widen stac.datetime"):
        search_items(cfg_for(scene["catalog"], datetime="2030-01-01/2030-02-01"), bbox_of_locs())
    with pytest.raises(InputError, match="more than 1 items.*stac.max_items"):
        search_items(cfg_for(scene["catalog"], max_items=1), bbox_of_locs())


def test_missing_asset_names_the_item(scene):
    cfg = cfg_for(scene["catalog"], assets=["red", "swir16"])
    items = search_items(cfg, bbox_of_locs())
    with pytest.raises(InputError, match="STAC item A .* has no asset swir16; its assets are \\['nir', 'red', 'scl'\\]"):
        resolve_assets(items, cfg)
    cfg = cfg_for(scene["catalog"], mask={"asset": "qa", "keep": [1]})
    with pytest.raises(InputError, match="has no asset qa"):
        resolve_assets(items, cfg)


def test_scene_without_crs_names_the_item(tmp_path):
    red = write_cog(tmp_path / "cogs" / "x_red.tif", RED["A"][:, :120], crs=None,
                    transform=from_origin(X0, Y0, RES, RES), nodata=0)
    foot = raster_footprint(write_cog(tmp_path / "ref.tif", RED["A"][:, :120], crs=UTM,
                                      transform=from_origin(X0, Y0, RES, RES), nodata=0))
    item = make_item("nocrs", collection="s2", footprint=foot, datetime="2023-07-01T00:00:00Z",
                     assets={"red": str(red)}, cloud_cover=1.0)
    catalog = write_static_catalog(tmp_path / "cat", {"s2": [item]})
    cfg = cfg_for(catalog, assets=["red"], mask=None, query=None)
    assets = resolve_assets(search_items(cfg, bbox_of_locs()), cfg)
    lon, lat = lonlat([30], [40])
    with pytest.raises(InputError, match="STAC item nocrs .*has no CRS"):
        read_stac_chunk(assets, lon, lat, chip_size=S, resolution_m=RES)


def test_unreadable_remote_asset_names_the_item(scene, api):
    srv, url, _ = api
    cfg = cfg_for(url)
    assets = resolve_assets(search_items(cfg, bbox_of_locs()), cfg)
    del srv.files["/cogs/B_nir.tif"]
    lon, lat = lonlat([30], [170])
    with pytest.raises(InputError, match="STAC item B .*B_nir.tif"):
        read_stac_chunk(assets, lon, lat, chip_size=S, resolution_m=RES)
