"""One-pass OSM reader on libosmium (pyosmium) for ``.osm.pbf`` and ``.osm`` XML files.

The file is read twice at most, each time once: a first pass over its relations only (libosmium's
multipolygon pre-pass; skipped when there are none to assemble), then one pass over nodes and ways.
libosmium filters in C++ (no Python call) everything without a catalogue key; what reaches Python
is turned into geometries in batches (WKB from libosmium, parsed by shapely vectorised):

* points: nodes with a catalogue key;
* lines: ways with a catalogue key, except closed ways tagged as areas;
* polygons: closed ways tagged as areas (GDAL's rule, :func:`closed_way_is_area`) and multipolygon /
  boundary relations with a catalogue key, assembled by libosmium's multipolygon manager (old-style
  relations without tags of their own take those of their first outer way, as GDAL does). A closed
  outer way of an assembled relation is not a polygon of its own (GDAL's rule: it would count twice).

The result has the form of GDAL's reader (:mod:`geoembed.views.osm_read`): one row per feature,
the catalogue's keys as string columns (null = absent), lon/lat geometry. It differs from GDAL
where GDAL's output is an artefact: other relations (routes, sites, waterways) are not exploded into
copies of their members' geometries, and relations libosmium cannot assemble into valid rings
(broken or unclosed rings) are dropped instead of becoming invalid polygons. Missing nodes are
skipped as GDAL skips them (a way keeps its other nodes); a node whose coordinates are out of range
is an :class:`InputError` naming the node; so is a truncated or corrupt file, naming the file.

Memory: node locations live in a libosmium index (``flex_mem``, 16 bytes a node, for files up to a
quarter of the free memory; a file-backed ``sparse_file_array`` beyond, or ``GEOEMBED_OSM_NODE_INDEX``);
only the catalogue's features are held, as shapely geometries built every :data:`BATCH` objects.
The data extent (every node's location) is kept as a running convex hull (:func:`read_pbf`'s
``extent``), so that validity does not depend on which features the catalogue keeps.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from array import array
from pathlib import Path

import numpy as np
import shapely

from geoembed.errors import InputError

log = logging.getLogger(__name__)

#: GDAL's osmconf.ini default ``closed_ways_are_polygons``: a closed way with one of these keys (or
#: key=value) is a polygon, unless it is tagged ``area=no``; ``area=yes`` makes any closed way one.
AREA_KEYS = ("building", "landuse", "natural", "amenity", "leisure", "shop", "tourism", "office", "historic",
             "boundary", "place", "sport", "aeroway", "craft", "geological", "military")  # commonest first
AREA_TAGS = frozenset({("highway", "platform"), ("public_transport", "platform")})
#: Objects turned into geometries per batch (bounds the WKB strings held at once).
BATCH = 100_000


def closed_way_is_area(get) -> bool:
    """GDAL's rule for a closed way whose tag values ``get(key)`` returns (None = absent): ``area=yes``
    / ``area=no`` decide; else a key of :data:`AREA_KEYS` or a tag of :data:`AREA_TAGS` makes it a
    polygon."""
    a = get("area")
    if a == "yes":
        return True
    if a == "no":
        return False
    return any(get(k) is not None for k in AREA_KEYS) or any(get(k) == v for k, v in AREA_TAGS)


def node_index_spec(path: Path) -> tuple[str, Path | None]:
    """The libosmium node location index for ``path``: ``GEOEMBED_OSM_NODE_INDEX`` if set; else
    ``flex_mem`` (in memory, ~16 bytes a node) when that fits in a quarter of the available memory
    (a .pbf holds about one node per 8 bytes), else a ``sparse_file_array`` in a temporary file
    (returned second, to be removed by the caller)."""
    env = os.environ.get("GEOEMBED_OSM_NODE_INDEX")
    if env:
        return env, None
    import psutil

    need = path.stat().st_size / 8 * 16 * (8 if path.suffix.lower() != ".pbf" else 1)
    if need < psutil.virtual_memory().available / 4:
        return "flex_mem", None
    fd, tmp = tempfile.mkstemp(prefix="geoembed_nodes_", suffix=".idx")
    os.close(fd)
    return f"sparse_file_array,{tmp}", Path(tmp)


class _Relations:
    """First-pass filter over relations: keeps the multipolygon / boundary relations with a catalogue
    key (or without tags of their own: old-style) for libosmium's area assembly, and notes their
    outer ways."""

    def __init__(self, keys: set[str]):
        self.keys = keys
        self.outer: dict[int, list[int]] = {}  # relation id -> outer member way ids
        self.old_style: set[int] = set()

    def relation(self, r) -> bool:  # True: dropped
        typ, interesting, hit = None, False, False
        for t in r.tags:
            k = t.k
            if k == "type":
                typ = t.v
            elif k != "created_by":
                interesting = True
                hit = hit or k in self.keys
        if typ not in ("multipolygon", "boundary") or (interesting and not hit):
            return True
        self.outer[r.id] = [m.ref for m in r.members if m.type == "w" and m.role == "outer"]
        if not interesting:
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
        sel = line[owner]
        out[line] = shapely.linestrings(coords[sel], indices=np.repeat(np.arange(int(line.sum())), counts[line]))
    ring = area & (counts >= 4)
    if ring.any():
        sel = ring[owner]
        rings = shapely.linearrings(coords[sel], indices=np.repeat(np.arange(int(ring.sum())), counts[ring]))
        out[ring] = shapely.polygons(rings)
    for i in np.flatnonzero(area & (counts == 3)):  # shapely builds no 3-point ring, but reads one
        xy = coords[owner == i]
        out[i] = shapely.from_wkb(struct.pack("<BIII", 1, 3, 1, 3) + np.asarray(xy, dtype="<f8").tobytes())
    return out


class _Extent:
    """Running convex hull (lon/lat) of the ways that no catalogue key selects: libosmium hands them
    to :meth:`way` (a filtered-out handler; no Python call for nodes), so the data extent covers every
    way as GDAL's features did."""

    def __init__(self, fab, use_all):
        self.fab, self.use_all = fab, use_all
        self.hexes: list[str] = []
        self.hull = shapely.GeometryCollection()

    def way(self, w) -> None:
        try:
            self.hexes.append(self.fab.create_linestring(w, self.use_all))
        except Exception:  # noqa: BLE001 - missing nodes or a one-node way: no extent to add
            return
        if len(self.hexes) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.hexes:
            coords, _ = _parse_lines(self.hexes)
            pts = np.vstack([shapely.get_coordinates(self.hull), coords])
            self.hull = shapely.convex_hull(shapely.multipoints(pts))
            self.hexes.clear()


class _OutOfRange(Exception):
    def __init__(self, node_id: int, loc) -> None:
        super().__init__(node_id)
        self.node_id, self.lon, self.lat = node_id, loc.x / 1e7, loc.y / 1e7


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


def read_pbf(path: str | os.PathLike, keys: list[str], *, with_ids: bool = False):
    """Read the catalogue features of the OSM file ``path`` (.osm.pbf, or .osm XML).

    Returns a GeoDataFrame (EPSG:4326): one object column per key of ``keys`` (null = absent), the
    geometry, and a last untagged row (when there is any) holding the convex hull of the ways no key
    selects, so that the data extent still covers them. ``with_ids`` adds ``osm_type`` ("node",
    "way", "relation"; None on the extent row) and ``osm_id`` columns. Raises InputError naming ``path`` (a
    truncated or corrupt file) or the node id (coordinates out of range).
    """
    import osmium
    from osmium.filter import IdFilter, KeyFilter

    path = Path(path)
    keys = list(keys)
    fmt = "pbf" if path.name.lower().endswith(".pbf") else "osm"
    fab = osmium.geom.WKBFactory()
    ALL = osmium.geom.use_nodes.ALL
    Node, Way = osmium.osm.Node, osmium.osm.Way
    InvalidLocation = osmium.InvalidLocationError
    # columns of the features found so far
    kind, oid = array("b"), array("q")
    trows, tvals = [array("q") for _ in keys], [[] for _ in keys]
    intern: dict[str, str] = {}
    ivalue = intern.setdefault
    kj = list(enumerate(keys))
    pt_rows, pt_x, pt_y = array("q"), array("i"), array("i")
    way_rows, way_hex, way_area = array("q"), [], array("b")
    done_rows, done_geoms = [], []
    rel_rows, rel_hex, rel_done = array("q"), [], set()

    def flush_ways():
        if way_hex:
            done_rows.append(np.frombuffer(way_rows, dtype=np.int64).copy())
            done_geoms.append(_build_ways(way_hex, np.frombuffer(way_area, dtype=np.int8).astype(bool)))
            del way_rows[:], way_hex[:], way_area[:]

    def tags_of(g):
        row = len(kind)
        for j, k in kj:
            v = g(k, None)
            if v is not None:
                trows[j].append(row)
                tvals[j].append(ivalue(v, v))

    rels = _Relations(set(keys))
    am = osmium.area.AreaManager()
    extent = _Extent(fab, ALL)
    spec, tmp = node_index_spec(path)
    n_broken = 0
    try:
        src = osmium.io.File(str(path), fmt)
        with osmium.io.Reader(src, osmium.osm.RELATION) as rd:  # libosmium's relation pre-pass
            osmium.apply(rd, rels, am.first_pass_handler())
        # pyosmium keeps raw pointers to handlers and filters: every one stays referenced here
        lh = osmium.NodeLocationsForWays(osmium.index.create_map(spec))
        lh.ignore_errors()  # missing nodes: skipped below, as GDAL does
        handlers = [lh]
        buf = area_filter = area_handler = None
        if rels.outer:
            area_filter = IdFilter([2 * r + 1 for r in rels.outer])  # libosmium's ids of their areas
            buf = osmium.BufferIterator(area_filter)
            area_handler = am.second_pass_to_buffer(buf)
            handlers.append(area_handler)
        key_filter = KeyFilter(*keys)
        handlers.append(key_filter)

        def areas():
            nonlocal n_broken
            for a in buf:
                rid = a.orig_id()
                rel_done.add(rid)
                try:
                    wkb = fab.create_multipolygon(a)
                except (RuntimeError, InvalidLocation):
                    n_broken += 1  # rings libosmium could not assemble (GDAL: an invalid polygon)
                    continue
                rel_rows.append(len(kind))
                rel_hex.append(wkb)
                tags_of(a.tags.get)
                kind.append(3)
                oid.append(rid)

        with osmium.io.Reader(osmium.io.File(str(path), fmt), osmium.osm.NODE | osmium.osm.WAY) as rd:
            it = osmium.OsmFileIterator(rd, *handlers)
            it.set_filtered_handler(extent)
            for o in it:
                # tags through the C++ accessor: iterating a TagList costs ~50 us an object (a C++
                # exception ends each iteration); 13 direct look-ups cost ~3 us
                g = o._pyosmium_data.tags_get_value_by_key
                if type(o) is Way:
                    area = o.is_closed() and closed_way_is_area(lambda k, g=g: g(k, None))
                    try:
                        wkb = fab.create_linestring(o, ALL)
                    except InvalidLocation:
                        wkb = _way_wkb_slow(o, area)
                    except RuntimeError:  # a way of one node
                        wkb = None
                    if wkb is None:
                        continue
                    way_rows.append(len(kind))
                    way_hex.append(wkb)
                    way_area.append(area)
                    tags_of(g)
                    kind.append(2 if area else 1)
                    oid.append(o.id)
                    if len(way_hex) >= BATCH:
                        flush_ways()
                elif type(o) is Node:
                    loc = o.location
                    if not loc.valid():
                        raise _OutOfRange(o.id, loc)
                    pt_rows.append(len(kind))
                    pt_x.append(loc.x)
                    pt_y.append(loc.y)
                    tags_of(g)
                    kind.append(0)
                    oid.append(o.id)
                if buf:
                    areas()
            if buf:
                areas()
    except _OutOfRange as err:
        raise InputError(f"OSM file {path}: node {err.node_id} has coordinates out of range (lon {err.lon:g}, "
                         f"lat {err.lat:g}); fix or drop that node, or export the extract again") from None
    except (RuntimeError, InvalidLocation, ValueError) as err:
        raise InputError(f"cannot read OSM file {path}: {err}. The file is truncated or corrupt: download or "
                         "export it again") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    flush_ways()
    extent.flush()
    return _frame(keys, kind, oid, trows, tvals, pt_rows, pt_x, pt_y, done_rows, done_geoms, rel_rows, rel_hex,
                  rels, rel_done, extent.hull, n_broken, path, with_ids)


def _frame(keys, kind, oid, trows, tvals, pt_rows, pt_x, pt_y, done_rows, done_geoms, rel_rows, rel_hex, rels,
           rel_done, hull, n_broken, path, with_ids):
    """Assemble the features collected by :func:`read_pbf` into its GeoDataFrame."""
    import geopandas as gpd
    import pandas as pd

    n = len(kind)
    kind = np.frombuffer(kind, dtype=np.int8) if n else np.empty(0, np.int8)
    oid = np.frombuffer(oid, dtype=np.int64) if n else np.empty(0, np.int64)
    geom = np.full(n, None, dtype=object)
    if len(pt_rows):
        geom[np.frombuffer(pt_rows, dtype=np.int64)] = shapely.points(np.frombuffer(pt_x, dtype=np.int32) / 1e7,
                                                                      np.frombuffer(pt_y, dtype=np.int32) / 1e7)
    for r, g in zip(done_rows, done_geoms, strict=True):
        geom[r] = g
    if rel_hex:
        geom[np.frombuffer(rel_rows, dtype=np.int64)] = shapely.from_wkb(
            np.array([bytes.fromhex(h) for h in rel_hex], dtype=object))
    cols = {}
    for j, k in enumerate(keys):
        c = np.full(n, None, dtype=object)
        if len(trows[j]):
            vals = np.empty(len(tvals[j]), dtype=object)
            vals[:] = tvals[j]
            c[np.frombuffer(trows[j], dtype=np.int64)] = vals
        cols[k] = c
    way_poly = np.flatnonzero(kind == 2)
    order = way_poly[np.argsort(oid[way_poly], kind="stable")]

    def way_row(way_id: int) -> int | None:
        i = np.searchsorted(oid[order], way_id)
        return int(order[i]) if i < len(order) and oid[order[i]] == way_id else None

    # old-style multipolygons (no tags of their own) take the tags of their first outer way (GDAL)
    for r in np.flatnonzero((kind == 3) & np.isin(oid, list(rels.old_style))):
        outer = rels.outer.get(int(oid[r])) or [None]
        src = way_row(outer[0]) if outer[0] is not None else None
        for c in cols.values():
            c[r] = c[src] if src is not None else None
    keep = geom != None  # noqa: E711 - rings under 4 coordinates
    # a closed outer way of an assembled relation is not a polygon of its own (GDAL)
    outer_ids = [w for r in rel_done for w in rels.outer.get(r, ())]
    if outer_ids:
        keep &= ~((kind == 2) & np.isin(oid, outer_ids))
    tagged = np.zeros(n, dtype=bool)
    for c in cols.values():
        tagged |= c != None  # noqa: E711
    keep &= tagged  # e.g. an old-style multipolygon whose outer way has no catalogue key
    df = pd.DataFrame({k: pd.Series(c[keep], dtype=object) for k, c in cols.items()})
    if with_ids:
        df["osm_type"] = np.array(["node", "way", "way", "relation"], dtype=object)[kind[keep]]
        df["osm_id"] = oid[keep]
    gdf = gpd.GeoDataFrame(df, geometry=geom[keep], crs="EPSG:4326")
    if not hull.is_empty:  # the extent of the ways no key selected: an untagged row, as GDAL reported them
        extra = gpd.GeoDataFrame(pd.DataFrame({k: pd.Series([None], dtype=object) for k in df.columns}),
                                 geometry=[hull], crs="EPSG:4326")
        gdf = gpd.GeoDataFrame(pd.concat([gdf, extra], ignore_index=True), crs="EPSG:4326")
    log.info("read %d catalogue features from %s (%d points, %d lines, %d way polygons, %d relation polygons; "
             "%d relations not assembled)", int(keep.sum()), path, *(int((kind[keep] == t).sum()) for t in range(4)),
             n_broken)
    return gdf
