"""Tests of the one-pass libosmium OSM reader (geoembed/views/osm_pbf.py): features and GDAL's rules on
a hand-made extract, bad input, node indexes, reader choice, the synthetic generator, and equality
with the GDAL reader on the Helsinki kit."""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from geoembed.errors import ConfigError, InputError
from geoembed.testing.osm_pbf import write_opl_pbf, write_synthetic_pbf
from geoembed.views import osm_pbf, osm_read
from geoembed.views.osm_catalogue import load_catalogue, parse_catalogue
from geoembed.views.osm_pbf import Selection, closed_way_is_area, read_pbf
from geoembed.views.osm_read import osm_reader, read_osm_features


def _square(first: int, x: float, y: float, d: float = 0.0002) -> list[str]:
    return [f"n{first} x{x:.7f} y{y:.7f}", f"n{first + 1} x{x + d:.7f} y{y:.7f}",
            f"n{first + 2} x{x + d:.7f} y{y + d:.7f}", f"n{first + 3} x{x:.7f} y{y + d:.7f}"]


def _ring(first: int) -> str:
    return f"n{first},n{first + 1},n{first + 2},n{first + 3},n{first}"


# A hand-made extract (OPL): one case of each rule. Nodes 995-999 are missing (an extract's edge).
SMALL = (
    ["n1 x24.9400000 y60.1700000 Tamenity=cafe", "n2 x24.9401000 y60.1700000 Tamenity=bench",
     "n3 x24.9402000 y60.1700000 Tcreated_by=JOSM"]
    + _square(10, 24.941, 60.171)
    + ["n20 x24.9420000 y60.1720000", "n21 x24.9425000 y60.1721000", "n22 x24.9430000 y60.1725000"]
    + _square(30, 24.943, 60.173) + _square(40, 24.944, 60.174)
    + _square(50, 24.945, 60.175, 0.002) + _square(54, 24.9455, 60.1755, 0.0005)
    + _square(60, 24.950, 60.175, 0.002) + _square(64, 24.9505, 60.1755, 0.0005)
    + ["n70 x24.9550000 y60.1750000", "n71 x24.9560000 y60.1750000", "n72 x24.9560000 y60.1760000",
       "n80 x24.9600000 y60.1800000", "n81 x24.9601000 y60.1800000", "n82 x24.9610000 y60.1810000",
       "n90 x24.9700000 y60.1900000"]
    + [f"w100 Tbuilding=yes N{_ring(10)}",                       # closed + area key: polygon
       "w101 Thighway=residential Nn20,n21,n22",                  # line
       "w102 Thighway=residential Nn20,n21,n22,n20",              # closed, no area key: line
       f"w103 Thighway=pedestrian,area=yes N{_ring(30)}",         # area=yes: polygon (no category)
       f"w104 Tbuilding=yes,area=no N{_ring(40)}",                # area=no: line (no category)
       f"w110 N{_ring(50)}", f"w111 N{_ring(54)}",                # members of r1
       f"w120 Tbuilding=yes N{_ring(60)}", f"w121 N{_ring(64)}",  # members of the old-style r2
       "w130 Nn70,n71,n72",                                       # unclosed outer of r3
       "w140 Thighway=primary Nn20,n999,n22",                     # a missing node: 2 left
       "w141 Tbuilding=yes Nn80,n81,n998,n997,n80",               # a ring of 3 coordinates left
       "w142 Tbuilding=yes Nn82,n996,n995,n82",                   # a ring of 2 left: no polygon
       "w150 Trailway=rail Nn22,n90"]                             # no catalogue key: extent only
    + ["r1 Ttype=multipolygon,natural=water Mw110@outer,w111@inner",
       "r2 Ttype=multipolygon Mw120@outer,w121@inner",            # old-style: tags of its outer way
       "r3 Ttype=multipolygon,landuse=forest Mw130@outer",        # cannot be assembled
       "r4 Ttype=site,shop=mall Mn1@,w100@"]                      # a site: GDAL explodes it
)


@pytest.fixture(scope="module")
def small_pbf(tmp_path_factory) -> Path:
    return write_opl_pbf(SMALL, tmp_path_factory.mktemp("osm") / "small.osm.pbf")


def _rows(g) -> dict:
    """(osm_type, osm_id) -> (geometry type, coordinates, interior rings, tags) of a with_ids frame."""
    out = {}
    for rec, geom in zip(g.drop(columns="geometry").to_dict("records"), g.geometry.values, strict=True):
        tags = {k: v for k, v in rec.items() if k not in ("osm_type", "osm_id") and v is not None}
        holes = sum(shapely.get_num_interior_rings(p) for p in getattr(geom, "geoms", [geom]))
        out[(rec["osm_type"], rec["osm_id"])] = (geom.geom_type, int(shapely.get_num_coordinates(geom)), holes, tags)
    return out


def test_small_extract_follows_gdals_rules(small_pbf):
    cat = load_catalogue()
    rows = _rows(read_pbf(small_pbf, cat.keys, cat, with_ids=True))
    extent = rows.pop((None, None))
    assert rows == {
        ("node", 1): ("Point", 1, 0, {"amenity": "cafe"}),
        ("way", 100): ("Polygon", 5, 0, {"building": "yes"}),
        ("way", 101): ("LineString", 3, 0, {"highway": "residential"}),
        ("way", 102): ("LineString", 4, 0, {"highway": "residential"}),
        ("way", 140): ("LineString", 2, 0, {"highway": "primary"}),
        ("way", 141): ("Polygon", 3, 0, {"building": "yes"}),  # degenerate, as GDAL's driver writes it
        ("relation", 1): ("MultiPolygon", 10, 1, {"natural": "water"}),
        ("relation", 2): ("MultiPolygon", 10, 1, {"building": "yes"}),  # w120 is not a polygon of its own
    }
    # the extent: the hull of what was not kept (w150 reaches n90; the bench counts; created_by does not)
    assert extent[0] == "Polygon" and extent[3] == {}
    hull = read_pbf(small_pbf, cat.keys, cat).geometry.values[-1]
    assert shapely.intersects_xy(hull, 24.97, 60.19) and shapely.intersects_xy(hull, 24.9401, 60.17)
    # without a catalogue: every feature with a key, whatever its value and geometry
    rows = _rows(read_pbf(small_pbf, cat.keys, with_ids=True))
    rows.pop((None, None))
    assert set(rows) == {("node", 1), ("node", 2), ("way", 100), ("way", 101), ("way", 102), ("way", 103),
                         ("way", 104), ("way", 140), ("way", 141), ("relation", 1), ("relation", 2)}
    assert rows[("way", 103)][0] == "Polygon" and rows[("way", 104)][0] == "LineString"


def _features(f, cat) -> collections.Counter:
    """Categorised features as a multiset of (geometry at OSM's 1e-7 degree precision, categories)."""
    member = cat.match(f, f["gtype"].to_numpy())
    out = collections.Counter()
    for i in np.flatnonzero(member.any(1)):
        g = shapely.transform(f.geometry.values[i], lambda c: np.round(c, 7))
        if g.geom_type == "MultiPolygon" and len(g.geoms) == 1:
            g = g.geoms[0]  # GDAL's multipolygons layer holds closed ways as one-part multipolygons
        out[(shapely.normalize(g).wkb_hex, tuple(np.flatnonzero(member[i]).tolist()))] += 1
    return out


def test_small_extract_against_gdal(small_pbf):
    """Categorised features equal GDAL's, but for its copies of the site relation's members (shop=mall)."""
    cat = load_catalogue()
    new = _features(read_osm_features(small_pbf, cat.keys, catalogue=cat, reader="osmium"), cat)
    gdal = _features(read_osm_features(small_pbf, cat.keys, reader="gdal"), cat)
    assert sum(new.values()) == 8
    assert new - gdal == collections.Counter()
    extra = gdal - new
    assert sum(extra.values()) == 2 and {c for _, c in extra} == {(cat.names.index("shops"),)}


def test_closed_way_is_area():
    assert closed_way_is_area([("building", "yes")]) and closed_way_is_area([("highway", "platform")])
    assert not closed_way_is_area([("highway", "residential")]) and not closed_way_is_area([])
    assert closed_way_is_area([("highway", "pedestrian"), ("area", "yes")])
    assert not closed_way_is_area([("building", "yes"), ("area", "no")])
    assert not closed_way_is_area([("area", "no"), ("building", "yes")])
    assert closed_way_is_area([("area", "highway"), ("landuse", "grass")])  # other area values: no say


def test_selection_equals_catalogue_match():
    cat = load_catalogue()
    sel = Selection(cat.keys, cat)
    rng = np.random.default_rng(0)
    values = {k: sorted({v for c in cat.categories.values() for v in
                         (c.tags.get(k) if isinstance(c.tags.get(k), list) else [])} | {"no", "other"})
              for k in cat.keys}
    rows, gtypes = [], []
    for _ in range(3000):
        keys = rng.choice(cat.keys, rng.integers(1, 3), replace=False)
        rows.append({k: str(rng.choice(values[k])) for k in keys})
        gtypes.append(str(rng.choice(["point", "line", "polygon"])))
    want = cat.match(pd.DataFrame(rows, columns=cat.keys).astype(object), np.array(gtypes)).any(1)
    got = [sel.accepts(("point", "line", "polygon").index(g), list(r.items())) for r, g in zip(rows, gtypes, strict=True)]
    np.testing.assert_array_equal(got, want)
    assert want.mean() > 0.2 and not want.all()
    # node keys are those of point categories only; a catalogue without them filters every node
    assert "highway" not in sel.node_keys and "shop" in sel.node_keys
    lines = parse_catalogue({"categories": {"roads": {"tags": {"highway": "*"}, "geometry": ["line"],
                                                      "measures": ["length"]}}})
    assert Selection(lines.keys, lines).node_keys == []


def test_xml_reads_as_pbf(small_pbf, tmp_path):
    import osmium

    xml = tmp_path / "small.osm"
    with osmium.SimpleWriter(str(xml)) as w:
        osmium.apply(str(small_pbf), w)
    cat = load_catalogue()
    a, b = (read_pbf(p, cat.keys, cat, with_ids=True) for p in (small_pbf, xml))
    pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
    assert all(shapely.equals_exact(a.geometry.values, b.geometry.values, 0))


def test_out_of_range_node_is_named(tmp_path):
    """A node outside [-180, 180] x [-90, 90] is an error naming it (GDAL's driver: 'error during the
    parsing of data around byte 271'); libosmium's XML reader and PBF writer keep such a node."""
    import osmium

    xml = tmp_path / "bad.osm"
    xml.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="test">\n'
                   '<node id="1" version="1" lat="60.1" lon="24.94"/>\n'
                   '<node id="2" version="1" lat="95.5" lon="24.95"/>\n'
                   '<node id="3" version="1" lat="60.2" lon="24.96"><tag k="amenity" v="cafe"/></node>\n'
                   '<way id="1" version="1"><nd ref="1"/><nd ref="2"/><nd ref="3"/>'
                   '<tag k="highway" v="primary"/></way>\n</osm>\n')
    pbf = tmp_path / "bad.osm.pbf"
    with osmium.SimpleWriter(str(pbf)) as w:
        osmium.apply(str(xml), w)
    cat = load_catalogue()
    for p in (xml, pbf):
        with pytest.raises(InputError, match=rf"{p.name}: node 2 has coordinates out of range \(lon 24.95, lat 95.5\)"):
            read_osm_features(p, cat.keys, catalogue=cat, reader="osmium")
    rail = tmp_path / "bad_rail.osm"  # a way no category uses: still an error, not a silent gap
    rail.write_text(xml.read_text().replace('v="primary"', 'v="rail"').replace('k="highway"', 'k="railway"'))
    with pytest.raises(InputError, match=r"bad_rail\.osm: node 2 has coordinates out of range"):
        read_pbf(rail, cat.keys, cat)
    tagged = tmp_path / "bad_poi.osm"
    tagged.write_text(xml.read_text().replace('lat="60.2" lon="24.96"', 'lat="60.2" lon="-190.5"'))
    with pytest.raises(InputError, match=r"bad_poi\.osm: node 3 has coordinates out of range \(lon -190.5"):
        read_pbf(tagged, cat.keys, cat)


def test_truncated_pbf_is_named(tmp_path, helsinki_pbf):
    cut = tmp_path / "cut.osm.pbf"
    cut.write_bytes(helsinki_pbf.read_bytes()[:400_000])
    with pytest.raises(InputError, match=r"cut\.osm\.pbf: PBF error: unexpected EOF\. The file is truncated or "
                                         r"corrupt: download or export it again"):
        read_osm_features(cut, ["amenity"], reader="osmium")
    cut.write_bytes(helsinki_pbf.read_bytes()[:100])  # at a block boundary: nothing to tell, nothing read
    with pytest.raises(InputError, match=r"cut\.osm\.pbf holds no features \(an empty extract, or a download"):
        read_osm_features(cut, ["amenity"], reader="osmium")


def test_node_index_choice(small_pbf, monkeypatch):
    cat = load_catalogue()
    monkeypatch.delenv("GEOEMBED_OSM_NODE_INDEX", raising=False)
    ref = read_pbf(small_pbf, cat.keys, cat)
    assert osm_pbf.node_index_spec(small_pbf) == ("flex_mem", None)
    import psutil

    tiny = psutil.virtual_memory()._replace(available=1000)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: tiny)
    spec, tmp = osm_pbf.node_index_spec(small_pbf)
    assert spec == f"sparse_file_array,{tmp}" and tmp.is_file()  # a country extract on a small machine
    tmp.unlink()
    made = []
    real = osm_pbf.node_index_spec
    monkeypatch.setattr(osm_pbf, "node_index_spec", lambda p: made.append(real(p)) or made[-1])
    got = read_pbf(small_pbf, cat.keys, cat)
    assert made[0][0].startswith("sparse_file_array,") and not made[0][1].exists()  # removed afterwards
    assert all(shapely.equals_exact(got.geometry.values, ref.geometry.values, 0))
    monkeypatch.setenv("GEOEMBED_OSM_NODE_INDEX", "sparse_mem_array")
    assert len(read_pbf(small_pbf, cat.keys, cat)) == len(ref)
    monkeypatch.setenv("GEOEMBED_OSM_NODE_INDEX", "bogus")
    with pytest.raises(ConfigError, match="GEOEMBED_OSM_NODE_INDEX='bogus'"):
        read_pbf(small_pbf, cat.keys, cat)


def test_reader_choice(small_pbf, tmp_path, monkeypatch):
    monkeypatch.delenv("GEOEMBED_OSM_READER", raising=False)
    assert osm_reader(small_pbf) == "osmium" and osm_reader(small_pbf, "gdal") == "gdal"
    assert osm_reader(tmp_path / "f.parquet", "gdal") == "parquet"
    monkeypatch.setenv("GEOEMBED_OSM_READER", "gdal")
    assert osm_reader(small_pbf) == "gdal"
    f = read_osm_features(small_pbf, ["amenity", "shop"])  # GDAL: the site relation's parts too
    assert (f["shop"] == "mall").sum() == 2
    monkeypatch.setenv("GEOEMBED_OSM_READER", "ogr")
    with pytest.raises(ConfigError, match="GEOEMBED_OSM_READER='ogr': unknown OSM reader"):
        read_osm_features(small_pbf, ["amenity"])


def test_synthetic_extract_against_a_plain_reading(tmp_path):
    """The generator writes what it counts; the reader's categorised features equal a plain pyosmium
    reading of every object (tags through TagList, GDAL's area rule, a relation assembled when its
    outer way is closed)."""
    import osmium

    path = tmp_path / "synth.osm.pbf"
    counts = write_synthetic_pbf(path, 30_000, chunk=4000, seed=3)
    seen = collections.Counter()
    rows, gtypes = [], []
    closed = {}
    for o in osmium.FileProcessor(str(path)):
        seen[o.type_str()] += 1
        tags = dict(o.tags)
        if o.type_str() == "w":
            closed[o.id] = o.is_closed()
        if not tags:
            continue
        if o.type_str() == "n":
            gt = "point"
        elif o.type_str() == "w":
            gt = "polygon" if o.is_closed() and closed_way_is_area(list(tags.items())) else "line"
        elif tags.get("type") == "multipolygon" and closed[next(m.ref for m in o.members if m.role == "outer")]:
            gt = "polygon"
        else:
            continue
        rows.append(tags)
        gtypes.append(gt)
    assert counts["total"] >= 30_000
    assert dict(seen) == {"n": counts["nodes"], "w": counts["ways"], "r": counts["relations"]}
    cat = load_catalogue()
    want = cat.match(pd.DataFrame(rows).reindex(columns=cat.keys).astype(object), np.array(gtypes)).sum(0)
    f = read_osm_features(path, cat.keys, catalogue=cat, reader="osmium")
    got = cat.match(f, f["gtype"].to_numpy()).sum(0)
    np.testing.assert_array_equal(got, want)
    assert got[cat.names.index("buildings")] > 1000 and got[cat.names.index("water")] > 20


@pytest.mark.slow
def test_helsinki_view_equals_gdal_reader(helsinki_pbf, monkeypatch):
    """The OSM view of 400 locations (configs/helsinki_osm.yaml settings) from the libosmium reader and
    from GDAL's. Two differences, both GDAL artefacts, each pinned:

    1. GDAL's ``other_relations`` / ``multilinestrings`` layers turn each other relation into copies of
       its members with the relation's tags: two site relations tagged ``shop`` become 81 "shops".
       Without those layers, and only then, ...
    2. ... three building relations differ, all invalid in GDAL's output: two libosmium cannot assemble
       (one ring of 3 coordinates, one self-intersecting ring of 1,927 m2) and one whose touching inner
       rings libosmium merges (same area, now valid). They move building counts by at most 3, building
       areas by less than the dropped one's area, and building distances at 2 locations by < 14 m.
    Everything else (validity, the hex tensor, every other radius aggregate and distance) is identical.
    """
    from geoembed.config import load_config
    from geoembed.geo import utm_crs
    from geoembed.views.osm import compute_osm_chunk, prepare_osm

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "helsinki_osm.yaml")
    (view,) = cfg.views
    x0, y0, x1, y1 = cfg.locations.region.bbox
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(x0, x1, 400), rng.uniform(y0, y1, 400)
    crs = utm_crs(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    cat = load_catalogue(view.catalogue)

    def build(f):
        prep = prepare_osm(f, cat, crs, h3_resolution=view.h3_resolution, radii_m=view.radii_m,
                           max_distance_m=view.max_distance_m)
        return compute_osm_chunk(prep, x, y, lon, lat)

    new = read_osm_features(helsinki_pbf, cat.keys, catalogue=cat, reader="osmium")
    gdal_all = read_osm_features(helsinki_pbf, cat.keys, reader="gdal")
    monkeypatch.setattr(osm_read, "_read_pbf", functools.partial(osm_read._read_pbf,
                                                                 layers=("points", "lines", "multipolygons")))
    gdal = read_osm_features(helsinki_pbf, cat.keys, reader="gdal")

    # features: 1. the exploded relations are 81 shops; 2. three buildings differ
    shops, bld = cat.names.index("shops"), cat.names.index("buildings")
    fa, fg, fn = _features(gdal_all, cat), _features(gdal, cat), _features(new, cat)
    assert fg - fa == collections.Counter() and sum((fa - fg).values()) == 81
    assert {c for _, c in (fa - fg)} == {(shops,)}
    only_gdal, only_new = fg - fn, fn - fg
    assert sum(only_gdal.values()) == 3 and sum(only_new.values()) == 1
    assert {c for _, c in only_gdal} == {c for _, c in only_new} == {(bld,)}
    g_old = gpd.GeoSeries([shapely.from_wkb(w) for w, _ in only_gdal], crs="EPSG:4326").to_crs(crs)
    g_new = shapely.from_wkb(next(iter(only_new))[0])
    assert not g_old.is_valid.any() and g_new.is_valid
    new_area = gpd.GeoSeries([g_new], crs="EPSG:4326").to_crs(crs).area.iloc[0]
    merged = np.isclose(g_old.area, new_area, rtol=1e-9)
    assert merged.sum() == 1 and sorted(np.round(g_old.area[~merged])) == [0, 1927]

    vn, vg, va = build(new), build(gdal), build(gdal_all)
    names = cat.radius_feature_names(view.radii_m)
    for other in (vg, va):
        np.testing.assert_array_equal(other["valid"], vn["valid"])
    ok = vn["valid"]
    assert 350 < ok.sum() < 400
    # 1. all of GDAL's layers vs three: shops only
    np.testing.assert_array_equal(np.delete(va["hex"], 1, axis=1)[ok], np.delete(vg["hex"], 1, axis=1)[ok])
    assert (va["hex"][ok, 1] >= vg["hex"][ok, 1]).all() and (va["hex"][ok, 1] > vg["hex"][ok, 1]).any()
    shop_cols = [j for j, n in enumerate(names) if n.startswith("shops_")]
    np.testing.assert_array_equal(np.delete(va["radius"], shop_cols, 1), np.delete(vg["radius"], shop_cols, 1))
    np.testing.assert_array_equal(np.delete(va["distance"], shops, 1), np.delete(vg["distance"], shops, 1))
    # 2. GDAL's three layers vs libosmium: buildings only, bounded
    np.testing.assert_array_equal(vg["hex"][ok], vn["hex"][ok])
    bcols = [j for j, n in enumerate(names) if n.startswith("buildings_")]
    np.testing.assert_allclose(np.delete(vg["radius"], bcols, 1)[ok], np.delete(vn["radius"], bcols, 1)[ok],
                               rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(np.delete(vg["distance"], bld, 1)[ok], np.delete(vn["distance"], bld, 1)[ok],
                               rtol=1e-6, atol=1e-3)
    rad = {n: vg["radius"][ok, j].astype(np.float64) - vn["radius"][ok, j] for j, n in enumerate(names)}
    for r in ("250", "1000"):
        assert 0 <= rad[f"buildings_count_r{r}"].min() and rad[f"buildings_count_r{r}"].max() <= 3
        assert np.abs(rad[f"buildings_area_m2_r{r}"]).max() < 1927
    assert rad["buildings_count_r1000"].max() > 0  # the difference shows
    dist = np.abs(vg["distance"][ok, bld] - vn["distance"][ok, bld])
    assert (dist > 1e-3).sum() <= 2 and dist.max() < 14
