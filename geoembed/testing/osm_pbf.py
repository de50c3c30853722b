"""Synthetic ``.osm.pbf`` files for tests and benchmarks, written with pyosmium.

:func:`write_opl_pbf` turns OPL lines (OSM's one-object-per-line text format) into a ``.pbf``;
:func:`write_synthetic_pbf` generates a country-like extract of any size in chunks (bounded memory):
buildings (closed 4-corner ways), roads (open 2-12 node ways), other lines (railways, fences, power
lines), land-use / water polygons (closed ways), multipolygon relations (an untagged outer and inner
ring each; 1% with an unclosed outer that cannot be assembled), route relations over roads, and
tagged points (a minority in catalogue categories: shops, food, schools, hotels; the rest crossings,
street lamps, trees, gates, towers). Untagged nodes are the ways' vertices. Objects are sorted (nodes,
ways, relations, ids ascending) as in an OSM extract.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: (tags, weight) mixes of the generated objects; OPL tag lists (no spaces, commas or '=' in values)
POI_TAGS = [("amenity=cafe", 6), ("amenity=restaurant", 6), ("shop=supermarket", 5), ("shop=clothes", 4),
            ("amenity=school", 2), ("amenity=pharmacy", 2), ("tourism=hotel", 2), ("amenity=bench", 8),
            ("highway=crossing", 18), ("highway=street_lamp", 14), ("natural=tree", 15), ("barrier=gate", 8),
            ("power=tower", 6), ("entrance=yes", 4)]
BUILDING_TAGS = [("building=yes", 60), ("building=house", 25), ("building=residential", 8),
                 ("building=yes,shop=bakery", 3), ("building=school,amenity=school", 1),
                 ("building=yes,amenity=restaurant", 3)]
ROAD_TAGS = [("highway=residential", 30), ("highway=service", 20), ("highway=footway", 20), ("highway=track", 10),
             ("highway=unclassified", 7), ("highway=tertiary", 5), ("highway=secondary", 3),
             ("highway=primary", 2), ("highway=path", 2), ("highway=motorway", 1)]
LINE_TAGS = [("barrier=fence", 40), ("railway=rail", 20), ("power=line", 20), ("waterway=stream", 15),
             ("man_made=pipeline", 5)]
LAND_TAGS = [("landuse=farmland", 35), ("landuse=residential", 20), ("natural=wood", 15), ("leisure=park", 10),
             ("natural=water", 10), ("landuse=industrial", 10)]
MP_TAGS = [("type=multipolygon,natural=water", 25), ("type=multipolygon,landuse=forest", 30),
           ("type=multipolygon,building=yes", 15), ("type=multipolygon,leisure=park", 10),
           ("type=multipolygon,place=islet", 20)]

# per way: share of each kind (multipolygon members are 2 ways per relation)
_SHARE = {"building": 0.50, "road": 0.28, "line": 0.08, "land": 0.04, "mp": 0.05}
_NODES_PER = {"building": 4, "road": 7, "line": 6, "land": 8, "mp": 13}  # mp: per relation
_POI_PER_WAY = 0.6
_KINDS = ("poi", "building", "road", "line", "land", "mp", "route")
_ROUTES_PER_WAY = 0.003


def write_opl_pbf(lines: list[str], path: str | os.PathLike) -> Path:
    """Write OPL ``lines`` (sorted: nodes, ways, relations) to the ``.osm.pbf`` ``path``."""
    import osmium

    path = Path(path)
    with osmium.SimpleWriter(str(path), overwrite=True) as w:
        osmium.apply(osmium.io.FileBuffer(("\n".join(lines) + "\n").encode(), "opl"), w)
    return path


def _pick(rng: np.random.Generator, table: list, n: int) -> np.ndarray:
    w = np.array([p for _, p in table], dtype=float)
    return np.array([t for t, _ in table], dtype=object)[rng.choice(len(table), n, p=w / w.sum())]


def _node_lines(ids: np.ndarray, lon: np.ndarray, lat: np.ndarray, tags: np.ndarray | None = None) -> list[str]:
    if tags is None:
        return [f"n{i} x{x:.7f} y{y:.7f}" for i, x, y in zip(ids.tolist(), lon.tolist(), lat.tolist(), strict=True)]
    return [f"n{i} T{t} x{x:.7f} y{y:.7f}"
            for i, t, x, y in zip(ids.tolist(), tags.tolist(), lon.tolist(), lat.tolist(), strict=True)]


def _way_lines(ids: np.ndarray, refs: list[np.ndarray], tags: np.ndarray | None) -> list[str]:
    out = []
    for k, (i, r) in enumerate(zip(ids.tolist(), refs, strict=True)):
        nodes = ",".join(f"n{j}" for j in r.tolist())
        out.append(f"w{i} T{tags[k]} N{nodes}" if tags is not None else f"w{i} N{nodes}")
    return out


class _Plan:
    """Counts and id ranges of every kind of object for ``n_ways`` ways (plus their nodes and relations)."""

    def __init__(self, n_ways: int):
        self.count = {k: max(1, int(n_ways * _SHARE[k])) for k in ("building", "road", "line", "land")}
        self.count["mp"] = max(1, int(n_ways * _SHARE["mp"] / 2))  # relations, 2 member ways each
        self.count["poi"] = int(n_ways * _POI_PER_WAY)
        self.count["route"] = max(1, int(n_ways * _ROUTES_PER_WAY))
        # node ids: poi, then the vertices of each way kind in order; way ids likewise
        self.node0, self.way0, nid, wid = {}, {}, 1, 1
        self.node0["poi"] = nid
        nid += self.count["poi"]
        for k in ("building", "road", "line", "land", "mp"):
            self.node0[k] = nid
            nid += self.count[k] * _NODES_PER[k]
            self.way0[k] = wid
            wid += self.count[k] * (2 if k == "mp" else 1)
        self.n_nodes, self.n_ways = nid - 1, wid - 1
        self.n_relations = self.count["mp"] + self.count["route"]
        self.total = self.n_nodes + self.n_ways + self.n_relations

    @classmethod
    def for_total(cls, n_objects: int) -> _Plan:
        """The smallest plan (to within 0.1%) with at least ``n_objects`` objects."""
        n_ways = max(10, n_objects // 7)
        plan = cls(n_ways)
        while plan.total < n_objects:
            n_ways = int(n_ways * max(1.001, n_objects / plan.total)) + 1
            plan = cls(n_ways)
        return plan


def write_synthetic_pbf(path: str | os.PathLike, n_objects: int = 10_200_000, *, centre: tuple[float, float] = (8.0, 51.0),
                        extent_km: float = 200.0, seed: int = 0, chunk: int = 200_000) -> dict:
    """Write a synthetic extract of about ``n_objects`` OSM objects to the ``.osm.pbf`` ``path``.

    Returns the counts: ``nodes``, ``ways``, ``relations``, ``total`` and per kind (``building``,
    ``road``, ``line``, ``land``, ``mp`` (relations), ``route``, ``poi``). Deterministic for a seed.
    """
    import osmium

    plan = _Plan.for_total(n_objects)
    lon0, lat0 = centre
    m_lat = 1.0 / 111_320.0
    m_lon = 1.0 / (111_320.0 * np.cos(np.radians(lat0)))
    half = extent_km * 500.0

    def ll(x, y):
        return lon0 + x * m_lon, lat0 + y * m_lat

    def chunks(kind):
        n = plan.count[kind]
        for c, a in enumerate(range(0, n, chunk)):
            yield np.random.default_rng([seed, _KINDS.index(kind), c]), a, min(a + chunk, n)

    def ring(rng, n, k, r_lo, r_hi):
        """(n, k) x / y of jittered regular k-gons (counter-clockwise) of radius r_lo..r_hi."""
        c = rng.uniform(-half, half, (n, 2))
        r = rng.uniform(r_lo, r_hi, (n, 1)) * rng.uniform(0.85, 1.0, (n, k))
        a = np.linspace(0, 2 * np.pi, k, endpoint=False)[None, :] + rng.uniform(0, 2 * np.pi, (n, 1))
        return c[:, :1] + r * np.cos(a), c[:, 1:] + r * np.sin(a)

    tmp = Path(path).with_name(Path(path).name + ".part")
    w = osmium.SimpleWriter(osmium.io.File(str(tmp), "pbf"), overwrite=True)

    def emit(lines: list[str]) -> None:
        osmium.apply(osmium.io.FileBuffer(("\n".join(lines) + "\n").encode(), "opl"), w)

    try:
        # ---- nodes
        for rng, a, b in chunks("poi"):
            lon, lat = ll(rng.uniform(-half, half, b - a), rng.uniform(-half, half, b - a))
            emit(_node_lines(plan.node0["poi"] + np.arange(a, b), lon, lat, _pick(rng, POI_TAGS, b - a)))
        for rng, a, b in chunks("building"):
            n = b - a
            c = rng.uniform(-half, half, (n, 2))
            wh = rng.uniform(5, 20, (n, 2))
            sx, sy = np.array([-1, 1, 1, -1]), np.array([-1, -1, 1, 1])
            lon, lat = ll(c[:, :1] + sx * wh[:, :1], c[:, 1:] + sy * wh[:, 1:])
            emit(_node_lines(plan.node0["building"] + 4 * a + np.arange(4 * n), lon.ravel(), lat.ravel()))
        for kind in ("road", "line"):
            k = _NODES_PER[kind]
            for rng, a, b in chunks(kind):
                n = b - a
                start = rng.uniform(-half, half, (n, 1, 2))
                heading = rng.uniform(0, 2 * np.pi, (n, 1)) + np.cumsum(rng.normal(0, 0.3, (n, k)), axis=1)
                step = rng.uniform(30, 100, (n, k, 1)) * np.stack([np.cos(heading), np.sin(heading)], -1)
                step[:, 0] = 0
                xy = start + np.cumsum(step, axis=1)
                lon, lat = ll(xy[..., 0], xy[..., 1])
                emit(_node_lines(plan.node0[kind] + k * a + np.arange(k * n), lon.ravel(), lat.ravel()))
        for rng, a, b in chunks("land"):
            x, y = ring(rng, b - a, 8, 100, 600)
            lon, lat = ll(x, y)
            emit(_node_lines(plan.node0["land"] + 8 * a + np.arange(8 * (b - a)), lon.ravel(), lat.ravel()))
        for rng, a, b in chunks("mp"):
            n = b - a
            x, y = ring(rng, n, 8, 200, 1000)
            r_in = np.hypot(x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)).min(1, keepdims=True) * 0.4
            ang = np.linspace(0, 2 * np.pi, 5, endpoint=False)[None, :]
            xi, yi = x.mean(1, keepdims=True) + r_in * np.cos(ang), y.mean(1, keepdims=True) + r_in * np.sin(ang)
            lon, lat = ll(np.hstack([x, xi]), np.hstack([y, yi]))
            emit(_node_lines(plan.node0["mp"] + 13 * a + np.arange(13 * n), lon.ravel(), lat.ravel()))
        # ---- ways
        for rng, a, b in chunks("building"):
            ids = plan.way0["building"] + np.arange(a, b)
            base = plan.node0["building"] + 4 * np.arange(a, b)
            refs = list(base[:, None] + np.array([0, 1, 2, 3, 0])[None, :])
            emit(_way_lines(ids, refs, _pick(rng, BUILDING_TAGS, b - a)))
        for kind, table in (("road", ROAD_TAGS), ("line", LINE_TAGS)):
            k = _NODES_PER[kind]
            for rng, a, b in chunks(kind):
                ids = plan.way0[kind] + np.arange(a, b)
                base = plan.node0[kind] + k * np.arange(a, b)
                length = rng.integers(2, k + 1, b - a)  # 2..k of the way's k reserved vertices
                refs = [np.arange(s, s + m) for s, m in zip(base.tolist(), length.tolist(), strict=True)]
                emit(_way_lines(ids, refs, _pick(rng, table, b - a)))
        for rng, a, b in chunks("land"):
            ids = plan.way0["land"] + np.arange(a, b)
            base = plan.node0["land"] + 8 * np.arange(a, b)
            refs = list(base[:, None] + np.r_[np.arange(8), 0][None, :])
            emit(_way_lines(ids, refs, _pick(rng, LAND_TAGS, b - a)))
        for rng, a, b in chunks("mp"):
            n = b - a
            base = plan.node0["mp"] + 13 * np.arange(a, b)
            outer = base[:, None] + np.r_[np.arange(8), 0][None, :]
            broken = rng.random(n) < 0.01  # an unclosed outer ring: the relation cannot be assembled
            refs = []
            for j in range(n):
                refs.append(outer[j, :-1] if broken[j] else outer[j])
                refs.append(base[j] + np.r_[8:13, 8])
            ids = plan.way0["mp"] + 2 * a + np.arange(2 * n)
            emit(_way_lines(ids, refs, None))
        # ---- relations
        for rng, a, b in chunks("mp"):
            wid = plan.way0["mp"] + 2 * np.arange(a, b)
            tags = _pick(rng, MP_TAGS, b - a)
            emit([f"r{r} T{t} Mw{o}@outer,w{o + 1}@inner"
                  for r, t, o in zip((1 + np.arange(a, b)).tolist(), tags.tolist(), wid.tolist(), strict=True)])
        for rng, a, b in chunks("route"):
            members = plan.way0["road"] + rng.integers(0, plan.count["road"], (b - a, 5))
            emit([f"r{plan.count['mp'] + 1 + a + j} Ttype=route,route=bus M" + ",".join(f"w{i}@" for i in m)
                  for j, m in enumerate(members.tolist())])
    finally:
        w.close()
    os.replace(tmp, path)
    return {"nodes": plan.n_nodes, "ways": plan.n_ways, "relations": plan.n_relations, "total": plan.total,
            **plan.count}
