"""Polygon enrichment: one embedding per polygon, the mean of the embeddings of points sampled uniformly in
its area (or weighted by a density raster), with the number of points used and the share out of support.

Per polygon (any CRS; :func:`embed_polygons` for evaluate, :class:`PolygonSampler` for the file driver
and ``LocationEmbedder``):

1. **Checks** (a hygiene code per row, :mod:`geoembed.enrich.hygiene`): null -> ``missing``, unreadable
   -> ``invalid_geometry``, a line or a collection -> ``not_polygon`` (a point among polygons is embedded
   as itself, one point), empty -> ``empty``; a polygon that is
   invalid only by self-intersection (a bow-tie, a ring touching itself) is repaired with
   ``shapely.make_valid`` and counted (``repaired``); other invalid ones (a hole outside its shell, ...)
   are ``invalid_geometry`` with GEOS's reason; one outside [-180, 180] x [-90, 90] once in lon/lat is
   ``out_of_range``; one without area is ``zero_area``.
2. **Sampling**, uniform in area: the polygon goes to lon/lat (edges of a lon/lat polygon densified to
   0.05 degrees, one across the antimeridian made continuous), then to a global cylindrical equal-area
   projection (:data:`geoembed.geo.EQUAL_AREA_PROJ`), where it is cut into triangles (GEOS constrained
   Delaunay). Each point picks a triangle with probability proportional to its area and a uniform
   position in it. The random numbers are a counter-based hash (splitmix64) of the seed, the polygon's
   own WKB (in a canonical form: coordinates to 0.1 mm, normalised rings, a one-part multipolygon as its
   polygon) and the
   point's number: a polygon gets the same points whatever the other rows, their order, the chunk size
   or the file format, and all polygons of a chunk are sampled at once (no loop over polygons). Geopandas'
   ``sample_points`` draws from one generator for all shapes, so a polygon's points would depend on
   the rows before it.
3. **Embedding**: all points of a chunk go through the :class:`~geoembed.enrich.enricher.Enricher` in
   large batches; the mean per polygon is a segment sum (``np.add.reduceat``) in float64. With a weight
   raster (population, exposure; nodata and outside count 0, negative values are an error) it is the
   weighted mean; ``geoembed_points`` counts the points with a positive weight, and a polygon whose
   points all weigh 0 is ``zero_weight``.
4. **QA**: ``geoembed_support_km`` = the smallest distance of its points to the training footprint
   (0 when any is inside), ``geoembed_out_of_support`` = every point beyond the bundle's threshold,
   ``geoembed_out_of_support_share`` = the (weighted) share of points beyond it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from geoembed.enrich import hygiene as hy
from geoembed.errors import InputError
from geoembed.geo import equal_area_transformers, wrap_lon
from geoembed.geo.lon import east_of_antimeridian
from geoembed.io.tables import projected_like

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_POINTS", "PolygonResult", "PolygonSampler", "WeightRaster", "embed_polygons"]

DEFAULT_POINTS = 1000
#: Points per embedding pass (memory: points x embedding width x 12 bytes).
MAX_POINTS = 262_144
_DENSIFY_DEG = 0.05
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_REPAIRABLE = ("Self-intersection", "Ring Self-intersection")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _uniform(keys: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 from (key, counter) pairs: the same pair gives the same number everywhere."""
    z = _mix(keys ^ _mix(counter.astype(np.uint64)))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def polygon_keys(geoms: np.ndarray, seed: int) -> np.ndarray:
    """A uint64 per geometry from its WKB and ``seed`` (the polygon's own random stream)."""
    import shapely

    wkb = shapely.to_wkb(geoms, byte_order=1)
    h = np.array([int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") for b in wkb],
                 dtype=np.uint64)
    return _mix(h ^ _mix(np.full(len(h), int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)))


# ------------------------------------------------------------------------------------------- weights

class WeightRaster:
    """A density raster read at points (band 1; nodata, masked and outside pixels weigh 0)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from pyproj import Transformer

        from geoembed.io.rasters import open_raster

        self.path = str(path)
        self.ds = open_raster(path)
        self._to_raster = Transformer.from_crs("EPSG:4326", self.ds.crs, always_xy=True)
        self._inv = ~self.ds.transform
        self.block = self.ds.block_shapes[0]

    def fingerprint(self) -> str:
        from geoembed.io.rasters import raster_fingerprint

        return raster_fingerprint(self.path, files=list(self.ds.files))

    def values(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """Weights at (lon, lat): the pixel value, 0 where nodata or outside; InputError if negative."""
        from rasterio.windows import Window

        x, y = self._to_raster.transform(lon, lat)
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        a, b, c, d, e, f = tuple(self._inv)[:6]
        fcol, frow = a * x + b * y + c, d * x + e * y + f
        col = np.floor(np.nan_to_num(fcol, nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
        row = np.floor(np.nan_to_num(frow, nan=-1.0, posinf=-1.0, neginf=-1.0)).astype(np.int64)
        out = np.zeros(len(lon), dtype=np.float64)
        ok = (col >= 0) & (row >= 0) & (col < self.ds.width) & (row < self.ds.height)
        if not ok.any():
            return out
        bh, bw = self.block
        per_row = (self.ds.width + bw - 1) // bw
        idx = np.flatnonzero(ok)
        block_id = (row[idx] // bh) * per_row + col[idx] // bw
        order = np.argsort(block_id, kind="stable")
        ids, starts = np.unique(block_id[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        for b, s, e in zip(ids, starts, ends, strict=True):  # one read per raster block the points touch
            pts = idx[order[s:e]]
            r0, c0 = (int(b) // per_row) * bh, (int(b) % per_row) * bw
            win = Window(c0, r0, min(bw, self.ds.width - c0), min(bh, self.ds.height - r0))
            data = self.ds.read(1, window=win, masked=True)
            vals = data[row[pts] - r0, col[pts] - c0]
            v = np.ma.filled(vals.astype(np.float64), 0.0)
            v[~np.isfinite(v)] = 0.0
            if (v < 0).any():
                k = pts[int(np.argmax(v < 0))]
                raise InputError(f"weight raster {self.path}: negative value {float(v[v < 0][0])!r} at lon "
                                 f"{lon[k]:.6f}, lat {lat[k]:.6f}; a density must be >= 0")
            out[pts] = v
        return out

    def close(self) -> None:
        self.ds.close()


# ------------------------------------------------------------------------------------------ sampling

@dataclass
class PolygonResult:
    """One chunk's polygons, enriched (arrays of the chunk's length)."""

    codes: np.ndarray  # uint8 hygiene code per row
    details: list  # per row: why it is invalid (None when valid)
    emb: np.ndarray  # (n, k) float32 mean embedding (reduced when the enricher has a reduction); NaN rows
    n_points: np.ndarray  # int32 points used
    support_km: np.ndarray  # float64 smallest distance of its points to the footprint
    oos_share: np.ndarray  # float32 (weighted) share of points beyond the threshold
    repaired: list[int] = field(default_factory=list)  # rows repaired by make_valid
    projected: int = 0  # rows whose lon/lat bounds look like projected units
    projected_example: tuple | None = None
    readable: int = 0  # rows with a polygon that has coordinates (denominator of the projected verdict)
    point_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # valid point rows
    point_lon: np.ndarray = field(default_factory=lambda: np.zeros(0))
    point_lat: np.ndarray = field(default_factory=lambda: np.zeros(0))


class PolygonSampler:
    """Samples points uniformly in polygons and averages their embeddings (see module docs)."""

    def __init__(self, points: int = DEFAULT_POINTS, seed: int = 0,
                 weight: str | os.PathLike | WeightRaster | None = None) -> None:
        if int(points) < 1:
            raise InputError(f"points per polygon must be at least 1, got {points}")
        self.points = int(points)
        self.seed = int(seed)
        self.weight = WeightRaster(weight) if isinstance(weight, str | os.PathLike) else weight
        self._fwd, self._inv = equal_area_transformers()

    def settings(self) -> dict:
        """What the output metadata records (and what decides a polygon's result)."""
        w = None if self.weight is None else {"path": os.path.abspath(self.weight.path),
                                              "fingerprint": self.weight.fingerprint()}
        return {"points_per_polygon": self.points, "seed": self.seed, "weight_raster": w}

    def close(self) -> None:
        if self.weight is not None:
            self.weight.close()

    # ------------------------------------------------------------------------ geometry checks
    def prepare(self, geoms: np.ndarray, transformer, geographic: bool, null: np.ndarray | None = None
                ) -> tuple[np.ndarray, list, np.ndarray, np.ndarray, PolygonResult]:
        """Check and project one chunk's geometries (shapely, in their CRS; ``transformer`` to lon/lat or
        None; ``null``: rows null in the file). Returns (codes, details, keys, equal-area polygons, a
        partial result holding the repair and projected counts)."""
        import shapely

        n = len(geoms)
        codes = np.zeros(n, dtype=np.uint8)
        details: list = [None] * n
        missing = shapely.is_missing(geoms)
        if null is None:
            null = missing
        codes[missing] = hy.MISSING
        unreadable = missing & ~null  # a value in the file that does not decode
        codes[unreadable] = hy.INVALID_GEOMETRY
        for i in np.flatnonzero(unreadable):
            details[i] = "unreadable WKB"
        for i in np.flatnonzero(missing & ~unreadable):
            details[i] = "null geometry"
        tid = shapely.get_type_id(geoms)
        poly = (codes == hy.OK) & np.isin(tid, (3, 6))
        point = (codes == hy.OK) & (tid == 0)
        for i in np.flatnonzero((codes == hy.OK) & ~poly & ~point):
            codes[i] = hy.NOT_POLYGON
            details[i] = geoms[i].geom_type
        empty = (poly | point) & shapely.is_empty(geoms)
        codes[empty] = hy.EMPTY
        for i in np.flatnonzero(empty):
            details[i] = f"{geoms[i].geom_type} EMPTY"
        res = PolygonResult(codes, details, None, None, None, None)
        self._points(geoms, np.flatnonzero(point & ~empty), transformer, res)
        ok = (codes == hy.OK) & poly
        geoms = geoms.copy()
        invalid = np.flatnonzero(ok & ~shapely.is_valid(geoms))
        for i in invalid:
            reason = shapely.is_valid_reason(geoms[i])
            if reason.startswith(_REPAIRABLE):
                geoms[i] = _polygonal(shapely.make_valid(geoms[i]))
                if shapely.is_empty(geoms[i]):
                    codes[i] = hy.ZERO_AREA
                    details[i] = f"no area once its self-intersections are repaired ({reason})"
                else:
                    res.repaired.append(int(i))
            else:
                codes[i] = hy.INVALID_GEOMETRY
                details[i] = reason
        idx = np.flatnonzero((codes == hy.OK) & poly)
        g = _canonical(geoms[idx], 1e-9 if geographic else 1e-4)
        keys = np.zeros(n, dtype=np.uint64)
        keys[idx] = polygon_keys(g, self.seed)
        if len(idx):
            if geographic:
                g = shapely.segmentize(g, _DENSIFY_DEG)
            if transformer is not None:
                g = shapely.transform(g, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
            b = shapely.bounds(g)
            res.readable += int(np.isfinite(b).all(axis=1).sum())
            outside = ~np.isfinite(b).all(axis=1) | (b[:, 0] < -180) | (b[:, 2] > 180) | (b[:, 1] < -90) | (b[:, 3] > 90)
            like = projected_like(b[:, 0], b[:, 1]) & outside
            if like.any():
                k = int(np.argmax(like))
                res.projected += int(like.sum())
                res.projected_example = res.projected_example or (float(b[k, 0]), float(b[k, 1]))
            for j in np.flatnonzero(outside):
                codes[idx[j]] = hy.OUT_OF_RANGE
                details[idx[j]] = f"lon/lat bounds {np.round(b[j], 6).tolist()}"
            across = np.flatnonzero(~outside & (b[:, 0] <= -180 + 1e-9) & (b[:, 2] >= 180 - 1e-9))
            for j in across:
                g[j] = east_of_antimeridian(g[j])
            fwd = self._fwd
            g = shapely.transform(g, lambda xy: np.column_stack(fwd.transform(xy[:, 0], xy[:, 1])))
            area = shapely.area(g)
            flat = ~outside & ~(area > 0)
            for j in np.flatnonzero(flat):
                codes[idx[j]] = hy.ZERO_AREA
                details[idx[j]] = f"{geoms[idx[j]].geom_type} of zero area"
        ea = np.empty(n, dtype=object)
        ea[idx] = g
        return codes, details, keys, ea, res

    @staticmethod
    def _points(geoms: np.ndarray, rows: np.ndarray, transformer, res: PolygonResult) -> None:
        """Point rows of a polygon table: their own lon/lat (one point each), with the point hygiene codes."""
        import shapely

        x, y = shapely.get_x(geoms[rows]), shapely.get_y(geoms[rows])
        lon, lat = (x, y) if transformer is None else (np.asarray(v) for v in transformer.transform(x, y))
        c = hy.classify(lon, lat, hy._float_codes(lon), hy._float_codes(lat))
        c[(c == hy.INFINITE) & np.isfinite(x) & np.isfinite(y)] = hy.OUT_OF_RANGE
        res.codes[rows] = c
        for j in np.flatnonzero(c != hy.OK):
            res.details[rows[j]] = f"POINT ({x[j]!r} {y[j]!r})"
        res.readable += int((np.isfinite(lon) & np.isfinite(lat)).sum())
        like = np.flatnonzero((c == hy.OUT_OF_RANGE) & projected_like(lon, lat))
        if len(like):
            res.projected += len(like)
            res.projected_example = res.projected_example or (float(lon[like[0]]), float(lat[like[0]]))
        ok = c == hy.OK
        res.point_rows, res.point_lon, res.point_lat = rows[ok], lon[ok], lat[ok]

    # ------------------------------------------------------------------------------- points
    def sample(self, polys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``self.points`` points per equal-area polygon: lon/lat arrays, grouped by polygon in order."""
        import shapely

        m, n = len(polys), self.points
        tris = shapely.constrained_delaunay_triangles(polys)
        parts, owner = shapely.get_parts(tris, return_index=True)
        if len(np.unique(owner)) != m:  # pragma: no cover - GEOS triangulates any valid polygon with area
            raise InputError("a polygon could not be cut into triangles")
        xy = shapely.get_coordinates(parts).reshape(len(parts), 4, 2)[:, :3]
        a, b, c = xy[:, 0], xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
        areas = 0.5 * np.abs(b[:, 0] * c[:, 1] - b[:, 1] * c[:, 0])
        counts = np.bincount(owner, minlength=m)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pt_owner = np.repeat(np.arange(m), n)
        j = np.tile(np.arange(n, dtype=np.uint64), m) * np.uint64(3)
        k = keys[pt_owner]
        u0, u1, u2 = _uniform(k, j), _uniform(k, j + np.uint64(1)), _uniform(k, j + np.uint64(2))
        tri = first[pt_owner] + _pick(areas, owner, counts, pt_owner, u0)
        flip = u1 + u2 > 1.0
        u1, u2 = np.where(flip, 1.0 - u1, u1), np.where(flip, 1.0 - u2, u2)
        px = a[tri, 0] + u1 * b[tri, 0] + u2 * c[tri, 0]
        py = a[tri, 1] + u1 * b[tri, 1] + u2 * c[tri, 1]
        lon, lat = self._inv.transform(px, py)
        return wrap_lon(np.asarray(lon)), np.clip(np.asarray(lat), -90.0, 90.0)

    # ------------------------------------------------------------------------------ embed
    def embed_geoms(self, enricher, geoms: np.ndarray, transformer, geographic: bool,
                    null: np.ndarray | None = None) -> PolygonResult:
        """Check, sample and embed one chunk of polygons (shapely, in their CRS) with ``enricher``."""
        codes, details, keys, ea, res = self.prepare(geoms, transformer, geographic, null)
        n = len(geoms)
        k = len(enricher.names)
        res.emb = np.full((n, k), np.nan, dtype=np.float32)
        res.n_points = np.zeros(n, dtype=np.int32)
        res.support_km = np.full(n, np.nan)
        res.oos_share = np.full(n, np.nan, dtype=np.float32)
        ok = np.flatnonzero((codes == hy.OK) & ~np.isin(np.arange(n), res.point_rows))
        step = max(1, MAX_POINTS // self.points)
        for s in range(0, len(ok), step):
            rows = ok[s:s + step]
            self._embed_rows(enricher, rows, ea[rows], keys[rows], res)
        if len(res.point_rows):  # a point among polygons: its own embedding, one point
            rows, lon, lat = res.point_rows, res.point_lon, res.point_lat
            emb = enricher.embed_valid(lon, lat)
            res.emb[rows] = emb if enricher.reduction is None else enricher.reduction.transform(emb)
            res.n_points[rows] = 1
            res.support_km[rows] = enricher.support.distance_km(lon, lat)
            res.oos_share[rows] = (res.support_km[rows] > enricher.threshold_km).astype(np.float32)
        return res

    def _embed_rows(self, enricher, rows: np.ndarray, polys: np.ndarray, keys: np.ndarray,
                    res: PolygonResult) -> None:
        lon, lat = self.sample(polys, keys)
        n = self.points
        emb = enricher.embed_valid(lon, lat)
        inside = enricher.support.contains(lon, lat)
        dist = enricher.support.distance_km(lon, lat, inside)
        w = np.ones(len(lon)) if self.weight is None else self.weight.values(lon, lat)
        starts = np.arange(0, len(lon), n)
        wsum = np.add.reduceat(w, starts)
        used = np.add.reduceat((w > 0).astype(np.int64), starts)
        zero = ~(wsum > 0)
        res.codes[rows[zero]] = hy.ZERO_WEIGHT
        for r in rows[zero]:
            res.details[r] = f"all {n} points weigh 0 in {self.weight.path}"
        good = ~zero
        if not good.any():
            return
        mean = np.add.reduceat(emb.astype(np.float64) * w[:, None], starts)[good] / wsum[good, None]
        if enricher.reduction is not None:
            mean = enricher.reduction.transform(mean.astype(np.float32))
        res.emb[rows[good]] = mean.astype(np.float32)
        res.n_points[rows[good]] = used[good]
        near = np.where(w > 0, dist, np.inf)
        res.support_km[rows[good]] = np.minimum.reduceat(near, starts)[good]
        far = (dist > enricher.threshold_km) & (w > 0)
        res.oos_share[rows[good]] = (np.add.reduceat(w * far, starts)[good] / wsum[good]).astype(np.float32)


def _pick(areas: np.ndarray, owner: np.ndarray, counts: np.ndarray, pt_owner: np.ndarray,
          u: np.ndarray) -> np.ndarray:
    """Per point, the index (within its polygon) of the triangle whose cumulative area first exceeds
    ``u`` x the polygon's area. Polygons are grouped by their triangle count rounded up to a power of two;
    in each group the cumulative sums are taken row by row of a zero-padded matrix (exact per polygon,
    whatever other polygons share the chunk), and the search is a vectorised bisection."""
    m = len(counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    width = np.left_shift(1, np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64))
    out = np.zeros(len(u), dtype=np.int64)
    row_of = np.full(m, -1, dtype=np.int64)
    for w in np.unique(width):
        polys = np.flatnonzero(width == w)
        row_of[polys] = np.arange(len(polys))
        tri = np.flatnonzero(width[owner] == w)
        mat = np.zeros((len(polys), int(w)))
        mat[row_of[owner[tri]], tri - first[owner[tri]]] = areas[tri]
        cum = np.cumsum(mat, axis=1)
        pts = np.flatnonzero(width[pt_owner] == w)
        r = row_of[pt_owner[pts]]
        target = u[pts] * cum[r, -1]
        lo = np.zeros(len(pts), dtype=np.int64)
        hi = counts[pt_owner[pts]].astype(np.int64) - 1
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            right = cum[r, mid] <= target
            lo = np.where(active & right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        out[pts] = lo
    return out


def _canonical(geoms: np.ndarray, grid: float) -> np.ndarray:
    """The same polygon written any way gives the same geometry (so the same points): coordinates on a
    ``grid`` of 0.1 mm (a GeoJSON file keeps 15 digits; the triangles of a rectangle, whose corners lie on
    one circle, would flip with its last bit), rings oriented and started canonically
    (``shapely.normalize``), a one-part multipolygon as its polygon (a GeoPackage or a shapefile often
    stores polygons as multipolygons; a shapefile reorients rings)."""
    import shapely

    g = shapely.transform(geoms, lambda xy: np.round(xy / grid) * grid)
    for i in np.flatnonzero(~shapely.is_valid(g)):  # features under 0.1 mm that the grid made touch
        g[i] = _polygonal(shapely.make_valid(g[i]))
    g = shapely.normalize(g)
    single = (shapely.get_type_id(g) == 6) & (shapely.get_num_geometries(g) == 1)
    if single.any():
        g[single] = shapely.get_geometry(g[single], 0)
    return g


def _polygonal(geom):
    """The polygonal part of a repaired geometry (make_valid may add lines or points)."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def embed_polygons(bundle, gdf, n: int = DEFAULT_POINTS, seed: int = 0, weight=None, *,
                   on_invalid: str = "error", origin: str = "polygons") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of the polygons of ``gdf`` (a GeoDataFrame or GeoSeries with a CRS): the mean over ``n``
    points sampled uniformly in each polygon's area (deterministic for ``seed``), or weighted by the
    density raster ``weight`` (a path). Returns ``(emb (m, d) float32, n_points (m,) int32,
    out_of_support_share (m,) float32)``; invalid polygons are an InputError naming the rows, or NaN
    rows with ``on_invalid="null"``. ``bundle``: a loaded bundle, a bundle path or an Enricher."""
    from geoembed.enrich.enricher import Enricher, load_bundle_cached
    from geoembed.io.geocolumn import lonlat_transformer

    geom = getattr(gdf, "geometry", gdf)
    if getattr(geom, "crs", None) is None:
        raise InputError(f"{origin}: the polygons have no CRS; set one (gdf.set_crs('EPSG:XXXX'))")
    own = not isinstance(bundle, Enricher)
    enricher = bundle if not own else Enricher(
        load_bundle_cached(bundle) if isinstance(bundle, str | os.PathLike) else bundle, on_invalid=on_invalid)
    sampler = PolygonSampler(n, seed, weight)
    try:
        res = sampler.embed_geoms(enricher, np.asarray(geom.values, dtype=object), lonlat_transformer(geom.crs),
                                  geom.crs.is_geographic)
    finally:
        sampler.close()
        if own:
            enricher.close()
    report = hy.HygieneReport(kind="polygon")
    report.add(res.codes, 0, res.details, None)
    if report.invalid and on_invalid == "error":
        raise InputError(report.invalid_message(origin, "geometry", ""))
    if res.repaired:
        log.warning("%s: %d self-intersecting polygon(s) repaired with make_valid (rows %s)", origin,
                    len(res.repaired), res.repaired[:10])
    return res.emb, res.n_points, res.oos_share
