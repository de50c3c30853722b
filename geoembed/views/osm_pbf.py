"""One-pass OSM reader on libosmium (pyosmium) for ``.osm.pbf`` and ``.osm`` XML files.

The file is read once for nodes and ways, after libosmium's multipolygon pre-pass over its
relations only. libosmium filters in C++ (no Python call) every node and way without a key the
catalogue can use for its geometry type; what reaches Python is checked against the catalogue's
values and turned into geometries in batches (WKB from libosmium, parsed with numpy, built with
shapely's vectorised constructors):

* points: nodes;
* lines: ways, except closed ways tagged as areas;
* polygons: closed ways tagged as areas (GDAL's rule, :func:`closed_way_is_area`) and multipolygon /
  boundary relations, assembled by libosmium's multipolygon manager. Old-style relations (no tags of
  their own) take the tags of their first outer way, and a closed outer way of an assembled relation
  is not a polygon of its own (it would count twice), both as GDAL's OSM driver does.

The result has the form of GDAL's reader (:mod:`geoembed.views.osm_read`): one row per feature,
the requested keys as object columns (null = absent), lon/lat geometry. Given the catalogue, only
features that fall in one of its categories are kept (GDAL's reader returned every feature). It
differs from GDAL's driver where that output is an artefact: other relations (sites, routes) are
not exploded into copies of their members' geometries with the relation's tags (a shopping-centre
site relation tagged ``shop=mall`` became one "shop" per member), and relations whose rings
libosmium cannot assemble are dropped instead of becoming invalid polygons; touching inner rings
are merged (valid polygons). As GDAL does, a way skips its missing nodes (an extract cut through
it) and keeps the rest: a ring of 3 coordinates is a degenerate polygon, of 2 none. A node whose
coordinates are out of range is an :class:`InputError` naming the node; so is a truncated or
corrupt file, naming the file.

Validity downstream is the convex hull of the features read: a last, untagged row holds the hull of
the ways (and rejected nodes) that were not kept, as GDAL reported them as untagged features, so
the extent still covers the whole extract (:class:`_Extent`).

Memory: node locations live in a libosmium index (:func:`node_index_spec`); only kept features are
held, as shapely geometries built every :data:`BATCH` ways; tag values are interned.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import time
from array import array
from pathlib import Path

import numpy as np
import shapely

from geoembed.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: GDAL's default ``closed_ways_are_polygons``: a closed way with one of these keys (or key=value)
#: is a polygon, unless tagged ``area=no``; ``area=yes`` makes any closed way one.
AREA_KEYS = frozenset("aeroway amenity boundary building craft geological historic landuse leisure military "
                      "natural office place shop sport tourism".split())
AREA_TAGS = frozenset({("highway", "platform"), ("public_transport", "platform")})
#: Ways turned into geometries per batch (bounds the WKB strings held at once).
BATCH = 100_000
_ANY, _ALL = "*", "**"  # any value but "no"; any value
_GTYPES = ("point", "line", "polygon")


def closed_way_is_area(tags: list[tuple[str, str]]) -> bool:
    """GDAL's rule for a closed way with ``tags`` ((key, value) pairs): ``area=yes`` / ``area=no``
    decide; else a key of :data:`AREA_KEYS` or a tag of :data:`AREA_TAGS` makes it a polygon."""
    area = False
    for k, v in tags:
        if k == "area" and v in ("yes", "no"):
            return v == "yes"
        if not area and (k in AREA_KEYS or (k, v) in AREA_TAGS):
            area = True
    return area


def node_index_spec(path: Path) -> tuple[str, Path | None]:
    """The libosmium node location index for ``path``: ``GEOEMBED_OSM_NODE_INDEX`` if set; else
    ``flex_mem`` (in memory, ~16 bytes a node) when that fits in a quarter of the available memory
    (a .pbf holds about one node per 8 bytes, XML one per 100), else a ``sparse_file_array`` in a
    temporary file (returned second, for the caller to remove)."""
    env = os.environ.get("GEOEMBED_OSM_NODE_INDEX")
    if env:
        return env, None
    import psutil

    nodes = path.stat().st_size / (8 if path.name.lower().endswith(".pbf") else 100)
    if nodes * 16 < psutil.virtual_memory().available / 4:
        return "flex_mem", None
    fd, tmp = tempfile.mkstemp(prefix="geoembed_nodes_", suffix=".idx")
    os.close(fd)
    return f"sparse_file_array,{tmp}", Path(tmp)


class Selection:
    """Which keys and values the reader keeps, per geometry type (point, line, polygon).

    From a catalogue: exactly what :meth:`Catalogue.match` can put in a category (``"*"`` = any
    value but ``"no"``). Without one: every feature with one of ``keys``.
    """

    def __init__(self, keys: list[str], catalogue=None):
        self.keys = list(keys)
        if catalogue is None:
            self.accept = [dict.fromkeys(self.keys, _ALL) for _ in _GTYPES]
        else:
            self.accept = [{} for _ in _GTYPES]
            for cat in catalogue.categories.values():
                for g in cat.geometry:
                    acc = self.accept[_GTYPES.index(g)]
                    for k, vals in cat.tags.items():
                        if vals == _ANY or acc.get(k) == _ANY:
                            acc[k] = _ANY
                        else:
                            acc[k] = frozenset(acc.get(k, ())) | frozenset(vals)
        self.node_keys = sorted(self.accept[0])
        self.way_keys = sorted(set(self.accept[1]) | set(self.accept[2]))

    def accepts(self, gtype: int, tags: list[tuple[str, str]]) -> bool:
        """Whether a feature of geometry type ``gtype`` (0 point, 1 line, 2 polygon) with ``tags`` is kept."""
        acc = self.accept[gtype]
        for k, v in tags:
            a = acc.get(k)
            if a is None:
                continue
            if (v in a) if type(a) is frozenset else (a == _ALL or v != "no"):
                return True
        return False


def _tags(o) -> list[tuple[str, str]]:
    """The tags of a pyosmium object as (key, value) pairs. Iterating its TagList costs ~50 us (a C++
    exception ends every iteration); counting first avoids it (pyosmium 4.3's accessors)."""
    d = o._pyosmium_data
    it = d.tags_begin()
    nxt = d.tags_next
    return [nxt(it) for _ in range(d.tags_size())]


class _Relations:
    """First-pass filter over relations (returns True to drop): keeps the multipolygon / boundary
    relations the selection accepts as polygons, or without tags of their own (old-style), for
    libosmium's area assembly, and notes their outer ways."""

    def __init__(self, sel: Selection):
        self.sel = sel
        self.outer: dict[int, list[int]] = {}  # relation id -> outer member way ids, in member order
        self.old_style: set[int] = set()

    def relation(self, r) -> bool:
        tags = _tags(r)
        if not any(k == "type" and v in ("multipolygon", "boundary") for k, v in tags):
            return True
        own = [(k, v) for k, v in tags if k not in ("type", "created_by")]
        if own and not self.sel.accepts(2, own):
            return True
        d = r._pyosmium_data
        it = d.members_begin()
        members = [d.members_next(it) for _ in range(d.members_size())]
        self.outer[r.id] = [m.ref for m in members if m.type == "w" and m.role == "outer"]
        if not own:
            self.old_style.add(r.id)
        return False


def _line_wkb(xy: list[tuple[float, float]]) -> str:
    """Hex WKB of a linestring (little-endian), as libosmium's WKB factory writes it."""
    return (struct.pack("<BII", 1, 2, len(xy)) + np.asarray(xy, dtype="<f8").tobytes()).hex()


def _parse_lines(hexes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (m, 2) and per-line vertex counts of hex WKB linestrings, parsed with numpy."""
    size = np.fromiter(map(len, hexes), dtype=np.int64, count=len(hexes)) // 2
    buf = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8)
    start = np.cumsum(size) - size
    counts = (size - 9) // 16
    head = buf[start[:, None] + np.arange(5)] if len(hexes) else np.empty((0, 5), np.uint8)
    if not ((head == [1, 2, 0, 0, 0]).all() and (size == 9 + 16 * counts).all()):
        g = shapely.from_wkb(np.array([bytes.fromhex(h) for h in hexes], dtype=object))  # not plain 2D WKB
        return shapely.get_coordinates(g), shapely.get_num_coordinates(g)
    first = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum()))
    off = np.repeat(start + 9, counts) + 16 * (k - np.repeat(first, counts))
    return buf[off[:, None] + np.arange(16)].view("<f8").reshape(-1, 2), counts


def _build_ways(hexes: list[str], area: np.ndarray) -> np.ndarray:
    """Linestrings, or polygons where ``area``. As from GDAL's driver, a ring of 3 coordinates (a way
    with missing nodes) is a degenerate polygon and one of 2 is None (no reader can parse it)."""
    coords, counts = _parse_lines(hexes)
    out = np.full(len(hexes), None, dtype=object)
    owner = np.repeat(np.arange(len(hexes)), counts)
    line = ~area
    if line.any():
        idx = np.repeat(np.arange(int(line.sum())), counts[line])
        out[line] = shapely.linestrings(coords[line[owner]], indices=idx)
    ring = area & (counts >= 4)
    if ring.any():
        idx = np.repeat(np.arange(int(ring.sum())), counts[ring])
        out[ring] = shapely.polygons(shapely.linearrings(coords[ring[owner]], indices=idx))
    for i in np.flatnonzero(area & (counts == 3)):  # shapely builds no 3-point ring, but reads one
        out[i] = shapely.from_wkb(struct.pack("<BIII", 1, 3, 1, 3) + coords[owner == i].astype("<f8").tobytes())
    return out


class _Extent:
    """Running convex hull (lon/lat) of the features GDAL's driver reported and this reader does not
    keep: every way (libosmium hands those its key filter drops to :meth:`way`, a filtered-out
    handler without a ``node`` method, so no Python call for nodes), and the nodes with a catalogue
    key the reader rejects (:meth:`add_node`). Tagged nodes without a catalogue key are not seen
    (GDAL's hull had them): on the Helsinki kit the hulls then differ for 14 of 400,000 random points
    of its bounding box."""

    def __init__(self, fab, use_all):
        self.fab, self.use_all = fab, use_all
        self.hexes: list[str] = []
        self.x, self.y = array("i"), array("i")
        self.hull = shapely.GeometryCollection()

    def way(self, w) -> None:
        try:
            self.hexes.append(self.fab.create_linestring(w, self.use_all))
        except Exception:  # noqa: BLE001 - missing nodes (an extract's edge: the nodes left count), or 1 node
            wkb = _way_wkb_slow(w, False)  # a node out of range: an error here too
            if wkb is None:
                return
            self.hexes.append(wkb)
        if len(self.hexes) >= BATCH:
            self.flush()

    def add_node(self, loc) -> None:
        if loc.valid():
            self.x.append(loc.x)
            self.y.append(loc.y)
            if len(self.x) >= 16 * BATCH:
                self.flush()

    def flush(self) -> None:
        parts = [shapely.get_coordinates(self.hull)]
        if self.hexes:
            parts.append(_parse_lines(self.hexes)[0])
            self.hexes.clear()
        if len(self.x):
            parts.append(np.column_stack([np.frombuffer(self.x, dtype=np.int32),
                                          np.frombuffer(self.y, dtype=np.int32)]) / 1e7)
            del self.x[:], self.y[:]
        if len(parts) > 1:
            self.hull = shapely.convex_hull(shapely.multipoints(np.vstack(parts)))


class _OutOfRange(Exception):
    """A node whose location is out of range (or, for a node itself, missing)."""

    def __init__(self, node_id: int, loc) -> None:
        super().__init__(node_id)
        self.node_id = node_id
        self.what = ("has no coordinates" if loc.x == _UNDEFINED and loc.y == _UNDEFINED
                     else f"has coordinates out of range (lon {loc.x / 1e7:g}, lat {loc.y / 1e7:g})")


_UNDEFINED = 2147483647  # libosmium's undefined coordinate (a node missing from the file)


def _way_wkb_slow(w, area: bool) -> str | None:
    """Hex WKB of a way some of whose nodes have no valid location: missing nodes are skipped, as
    GDAL skips them (None when under 2 are left); a node out of range raises :class:`_OutOfRange`."""
    xy = []
    refs = list(w.nodes)
    for nr in refs[:-1] if area else refs:
        loc = nr.location
        if loc.valid():
            xy.append((loc.lon, loc.lat))
        elif loc.x != _UNDEFINED or loc.y != _UNDEFINED:
            raise _OutOfRange(nr.ref, loc)
    if area and xy:
        xy.append(xy[0])
    return _line_wkb(xy) if len(xy) >= 2 else None


class _Features:
    """The kept features, column by column: kind (0 point, 1 line, 2 way polygon, 3 relation
    polygon), OSM id, tag values per key, and geometries (points as 1e-7 degree integers, ways as
    shapely geometries built per batch, relation polygons as WKB)."""

    def __init__(self, keys: list[str]):
        self.kind, self.oid = array("b"), array("q")
        self.kpos = {k: j for j, k in enumerate(keys)}
        self.trows, self.tvals = [array("q") for _ in keys], [[] for _ in keys]
        self.intern: dict[str, str] = {}
        self.pt_rows, self.pt_x, self.pt_y = array("q"), array("i"), array("i")
        self.way_rows, self.way_hex, self.way_area = array("q"), [], array("b")
        self.done_rows: list[np.ndarray] = []
        self.done_geoms: list[np.ndarray] = []
        self.rel_rows, self.rel_hex = array("q"), []

    def add(self, kind: int, oid: int, tags: list[tuple[str, str]]) -> int:
        """Append a feature's kind, id and tag values; returns its row."""
        row = len(self.kind)
        self.kind.append(kind)
        self.oid.append(oid)
        kpos, ivalue = self.kpos, self.intern.setdefault
        for k, v in tags:
            j = kpos.get(k)
            if j is not None:
                self.trows[j].append(row)
                self.tvals[j].append(ivalue(v, v))
        return row

    def flush_ways(self) -> None:
        if self.way_hex:
            self.done_rows.append(np.frombuffer(self.way_rows, dtype=np.int64).copy())
            self.done_geoms.append(_build_ways(self.way_hex, np.frombuffer(self.way_area, dtype=np.int8) > 0))
            del self.way_rows[:], self.way_hex[:], self.way_area[:]


def read_pbf(path: str | os.PathLike, keys: list[str], catalogue=None, *, with_ids: bool = False):
    """Read the features of the OSM file ``path`` (.osm.pbf, or .osm XML) with the tag columns ``keys``.

    With ``catalogue`` (a :class:`~geoembed.views.osm_catalogue.Catalogue`), only features that fall
    in one of its categories; else every feature with one of ``keys``. Returns a GeoDataFrame
    (EPSG:4326) of object columns ``keys`` (null = absent) and the geometry, with a last untagged row
    holding the convex hull of the ways not kept (when there are any). ``with_ids`` adds
    ``osm_type`` ("node", "way", "relation") and ``osm_id`` columns. Raises InputError naming
    ``path`` (a truncated or corrupt file) or the node (coordinates out of range).
    """
    import osmium
    from osmium.filter import EntityFilter, IdFilter, KeyFilter

    path = Path(path)
    sel = Selection(keys, catalogue)
    fmt = "pbf" if path.name.lower().endswith(".pbf") else "osm"
    fab = osmium.geom.WKBFactory()
    ALL = osmium.geom.use_nodes.ALL
    Node, Way = osmium.osm.Node, osmium.osm.Way
    InvalidLocation = osmium.InvalidLocationError
    f = _Features(sel.keys)
    rels = _Relations(sel)
    extent = _Extent(fab, ALL)
    rel_done: set[int] = set()
    n_broken = 0
    spec, tmp = node_index_spec(path)
    try:
        index = osmium.index.create_map(spec)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"GEOEMBED_OSM_NODE_INDEX={spec!r}: not a libosmium node location index ({err}); "
                          "e.g. flex_mem, sparse_file_array,/path/nodes.idx") from None
    t0 = time.perf_counter()
    try:
        am = osmium.area.AreaManager()
        with osmium.io.Reader(osmium.io.File(str(path), fmt), osmium.osm.RELATION) as rd:  # the pre-pass
            osmium.apply(rd, rels, am.first_pass_handler())
        t1 = time.perf_counter()
        # pyosmium keeps raw pointers to handlers and filters: each one stays referenced until the end
        lh = osmium.NodeLocationsForWays(index)
        lh.ignore_errors()  # missing nodes: skipped below, as GDAL does
        handlers = [lh]
        buf = None
        if rels.outer:
            area_filter = IdFilter([2 * r + 1 for r in rels.outer])  # libosmium's ids of their areas
            buf = osmium.BufferIterator(area_filter)
            handlers.append(am.second_pass_to_buffer(buf))
        # C++ filters: nodes and ways with a key the selection uses for their geometry type (letting
        # every tagged node through, for the extent, would cost 30% more time for 0.004% of it)
        node_filter = KeyFilter(*sel.node_keys) if sel.node_keys else EntityFilter(osmium.osm.WAY)
        node_filter.enable_for(osmium.osm.NODE)
        way_filter = KeyFilter(*sel.way_keys) if sel.way_keys else EntityFilter(osmium.osm.NODE)
        way_filter.enable_for(osmium.osm.WAY)
        handlers += [node_filter, way_filter]

        def areas() -> None:
            nonlocal n_broken
            for a in buf:
                rid = a.orig_id()
                rel_done.add(rid)
                try:
                    wkb = fab.create_multipolygon(a)
                except (RuntimeError, InvalidLocation):
                    n_broken += 1  # rings libosmium could not assemble (GDAL: an invalid polygon)
                    continue
                f.rel_rows.append(f.add(3, rid, _tags(a)))
                f.rel_hex.append(wkb)

        with osmium.io.Reader(osmium.io.File(str(path), fmt), osmium.osm.NODE | osmium.osm.WAY) as rd:
            it = osmium.OsmFileIterator(rd, *handlers)
            it.set_filtered_handler(extent)
            # the hot loop: C++ accessors of pyosmium 4.3 bound to locals (each Python-level wrapper
            # call costs ~1 us, a million times over)
            accepts, add = sel.accepts, f.add
            way_rows, way_hex, way_area = f.way_rows.append, f.way_hex.append, f.way_area.append
            pt_rows, pt_x, pt_y = f.pt_rows.append, f.pt_x.append, f.pt_y.append
            linestring = fab.create_linestring
            for o in it:
                d = o._pyosmium_data
                ti, nxt = d.tags_begin(), d.tags_next
                tags = [nxt(ti) for _ in range(d.tags_size())]
                if type(o) is Way:
                    area = d.is_closed() and closed_way_is_area(tags)
                    if not accepts(2 if area else 1, tags):
                        extent.way(o)
                    else:
                        try:
                            wkb = linestring(o, ALL)
                        except InvalidLocation:
                            wkb = _way_wkb_slow(o, area)
                        except RuntimeError:  # a way of one node
                            wkb = None
                        if wkb is not None:
                            way_rows(add(2 if area else 1, d.id(), tags))
                            way_hex(wkb)
                            way_area(area)
                            if len(f.way_hex) >= BATCH:
                                f.flush_ways()
                elif type(o) is Node:
                    loc = d.location()
                    if not accepts(0, tags):
                        extent.add_node(loc)
                    elif not loc.valid():
                        raise _OutOfRange(d.id(), loc)
                    else:
                        pt_rows(add(0, d.id(), tags))
                        pt_x(loc.x)
                        pt_y(loc.y)
                if buf:
                    areas()
            if buf:
                areas()
    except _OutOfRange as err:
        raise InputError(f"OSM file {path}: node {err.node_id} {err.what}; fix or drop that node, or export the "
                         "extract again") from None
    except (RuntimeError, InvalidLocation) as err:  # libosmium's errors on a bad file
        raise InputError(f"cannot read OSM file {path}: {err}. The file is truncated or corrupt: download or "
                         "export it again") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    f.flush_ways()
    extent.flush()
    t2 = time.perf_counter()
    gdf = _frame(f, sel.keys, rels, rel_done, extent.hull, with_ids)
    log.info("read %d features from %s in %.1f s (relation pre-pass %.1f s, nodes and ways %.1f s, frame %.1f s); "
             "%d relations not assembled", len(gdf), path, time.perf_counter() - t0, t1 - t0, t2 - t1,
             time.perf_counter() - t2, n_broken)
    return gdf


def _frame(f: _Features, keys: list[str], rels: _Relations, rel_done: set[int], hull, with_ids: bool):
    """The GeoDataFrame of the features collected by :func:`read_pbf`."""
    import geopandas as gpd
    import pandas as pd

    n = len(f.kind)
    kind = np.frombuffer(f.kind, dtype=np.int8) if n else np.empty(0, np.int8)
    oid = np.frombuffer(f.oid, dtype=np.int64) if n else np.empty(0, np.int64)
    geom = np.full(n, None, dtype=object)
    if len(f.pt_rows):
        geom[np.frombuffer(f.pt_rows, dtype=np.int64)] = shapely.points(
            np.frombuffer(f.pt_x, dtype=np.int32) / 1e7, np.frombuffer(f.pt_y, dtype=np.int32) / 1e7)
    for r, g in zip(f.done_rows, f.done_geoms, strict=True):
        geom[r] = g
    if f.rel_hex:
        geom[np.frombuffer(f.rel_rows, dtype=np.int64)] = shapely.from_wkb(
            np.array([bytes.fromhex(h) for h in f.rel_hex], dtype=object))
    cols = {}
    for j, k in enumerate(keys):
        c = np.full(n, None, dtype=object)
        if len(f.trows[j]):
            vals = np.empty(len(f.tvals[j]), dtype=object)
            vals[:] = f.tvals[j]
            c[np.frombuffer(f.trows[j], dtype=np.int64)] = vals
        cols[k] = c
    # old-style multipolygons take the tags of their first outer way (GDAL: of a way tagged as an area)
    way_poly = np.flatnonzero(kind == 2)
    way_poly = way_poly[np.argsort(oid[way_poly], kind="stable")]
    for r in np.flatnonzero((kind == 3) & np.isin(oid, list(rels.old_style))):
        first = (rels.outer.get(int(oid[r])) or [-1])[0]
        i = np.searchsorted(oid[way_poly], first)
        src = int(way_poly[i]) if i < len(way_poly) and oid[way_poly[i]] == first else None
        for c in cols.values():
            c[r] = c[src] if src is not None else None
    keep = geom != None  # noqa: E711 - a ring of 2 coordinates
    outer = [w for r in rel_done for w in rels.outer.get(r, ())]
    if outer:  # a closed outer way of an assembled relation is not a polygon of its own (GDAL)
        keep &= ~((kind == 2) & np.isin(oid, outer))
    tagged = np.zeros(n, dtype=bool)
    for c in cols.values():
        tagged |= c != None  # noqa: E711
    keep = np.flatnonzero(keep & tagged)  # untagged: an old-style relation whose outer way was not kept
    extra = 0 if hull.is_empty else 1  # the extent of the ways not kept: a last, untagged row
    m = len(keep)

    def column(values: np.ndarray, fill=None) -> np.ndarray:
        out = np.empty(m + extra, dtype=values.dtype)
        out[:m] = values[keep]
        out[m:] = fill
        return out

    data = {k: column(c) for k, c in cols.items()}
    if with_ids:
        data["osm_type"] = column(np.array(["node", "way", "way", "relation"], dtype=object)[kind])
        data["osm_id"] = column(oid.astype(object))
    df = pd.DataFrame(data, dtype=object)  # object columns (not pandas' string dtype), as GDAL's reader
    log.debug("kept %d points, %d lines, %d way polygons, %d relation polygons",
              *np.bincount(kind[keep], minlength=4).tolist())
    return gpd.GeoDataFrame(df, geometry=column(geom, hull), crs="EPSG:4326")
