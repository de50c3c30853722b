"""The OSM view of the build stage: per-location OpenStreetMap features.

For every location the view stores

* ``hex`` (C_hex, 7, 7) float32: the paper's H3 tensor, counts of features of each hex category
  (default: health, shops, tourism, food_and_drink, education, public_services) per H3 cell of the
  3-ring disk around the location's cell at ``h3_resolution``, on the 7 x 7 axial layout of
  :mod:`geoembed.views.osm_geom` (``attrs["hex_mask"]`` marks the 37 cells; the 12 other positions
  are 0). Lines and polygons count once, at their representative point.
* ``radius`` (F,) float32: per radius ``r`` in ``radii_m`` and per category, depending on its
  measures: ``<cat>_count_r<r>`` (features whose representative point is within ``r``),
  ``<cat>_length_m_r<r>`` (metres of line inside the disk), ``<cat>_area_m2_r<r>`` (square metres of
  polygon inside the disk) and ``<cat>_share_r<r>`` (that area / disk area; overlapping polygons of
  one category add up). Names are in ``attrs["radius_features"]``.
* ``distance`` (K,) float32: metres to the nearest feature of each category (0 inside a polygon),
  capped at ``max_distance_m``; the cap is also the value when there is none within it.

Geometry is computed in a local metric projection (the UTM zone of the locations). A location is
``valid`` (valid_fraction 1) when it lies inside the data extent: the convex hull of all features
read from a file, or the box an Overpass API was asked for; outside it the source says nothing, so
the row is ``valid = False``, ``valid_fraction = 0`` and its arrays are NaN (never silent zeros).

Radius aggregates are exact (grid prefix sums inside each disk plus closed forms on its rim, see
:mod:`geoembed.views.osm_geom`); distances are exact too (point features through a KD-tree, other
geometries through a shapely STRtree nearest query). The hex tensor joins H3 cell ids of features
and of each location's 37 neighbours with ``np.searchsorted``; H3 calls happen once per distinct
cell.

Sources (:meth:`OsmView.resolve`): a local file; an http(s) URL (e.g. a country extract), downloaded
once into ``$GEOEMBED_CACHE_DIR/downloads`` with resume and an optional ``source_sha256`` check
(:func:`geoembed.sources.cached_download`), fingerprinted by the file's sha256; or ``overpass:``, the
catalogue's tags over the locations' extent padded by the view's reach (the largest of
``max_distance_m``, the radii and the H3 disk) from an Overpass API, in tiles, cached on disk
(:func:`geoembed.sources.overpass_features`), fingerprinted by the queries and the answers.

Entry point: :class:`OsmView` (kind ``osm``), built by :func:`geoembed.views.driver.build_view_store`.
It checks and fingerprints the source and catalogue, then, when chunks remain to compute, reads,
categorises and projects the features once (:func:`prepare_osm`); Dask tasks run the pure per-chunk
:func:`compute_osm_chunk`. The kernels are numpy glue that holds the GIL (``OsmView.gil_bound``), so
the driver runs large local builds in worker processes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from geoembed.config.build import OsmViewConfig
from geoembed.errors import InputError
from geoembed.geo import h3_cells, h3_disk_reach_m, utm_crs
from geoembed.io.fingerprint import source_fingerprint, text_fingerprint
from geoembed.io.viewstore import ArraySpec
from geoembed.views.base import Chunk, Resolved, View
from geoembed.views.osm_catalogue import Catalogue, load_catalogue
from geoembed.views.osm_geom import (
    HEX_MASK,
    HEX_STENCIL,
    DiskIndex,
    NearestIndex,
    hex_tensor,
    line_segments,
    polygon_edges,
    representative_points,
    tune_malloc,
)
from geoembed.views.osm_read import osm_reader, read_osm_features

log = logging.getLogger(__name__)

__all__ = [
    "HEX_MASK",
    "HEX_STENCIL",
    "OsmView",
    "PreparedOsm",
    "compute_osm_chunk",
    "prepare_osm",
]

VIEW_VERSION = 1
#: Default longest line segment / polygon edge, in grid cells (see :func:`prepare_osm`).
MAX_PART_CELLS = 1.0


@dataclass
class PreparedOsm:
    """Categorised, projected features ready for :func:`compute_osm_chunk` (built by :func:`prepare_osm`).

    Holds only arrays and shapely geometries: threads share one copy; it pickles for worker processes.
    """

    catalogue: Catalogue
    crs_wkt: str
    h3_resolution: int
    radii_m: list[float]
    max_distance_m: float
    counts: DiskIndex
    lengths: DiskIndex
    areas: DiskIndex
    hex_cells: np.ndarray
    hex_counts: np.ndarray
    dist_points: list[np.ndarray]
    dist_geoms: list[np.ndarray]
    max_part_m: float
    hull: object
    token: str
    n_features: int
    _trees: dict = field(default_factory=dict, repr=False)
    _hex_cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __dask_tokenize__(self) -> str:
        return self.token

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_trees"] = {}
        state["_hex_cache"] = {}
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def trees(self, k: int) -> tuple:
        """(KD-tree of category ``k``'s point features, :class:`NearestIndex` of its other geometries);
        each None when empty. Built once, lazily, shared by threads."""
        with self._lock:
            if k not in self._trees:
                from scipy.spatial import cKDTree

                pts, geoms = self.dist_points[k], self.dist_geoms[k]
                self._trees[k] = (cKDTree(pts) if len(pts) else None,
                                  NearestIndex(geoms, self.max_part_m) if len(geoms) else None)
            return self._trees[k]


def prepare_osm(
    features: gpd.GeoDataFrame,
    catalogue: Catalogue,
    crs,
    *,
    h3_resolution: int = 9,
    radii_m: list[float] = (250.0, 1000.0),
    max_distance_m: float = 5000.0,
    cell_m: float | None = None,
    max_part_m: float | None = None,
    token: str = "",
    extent=None,
) -> PreparedOsm:
    """Categorise features (tag columns + ``gtype``), project them to ``crs`` and build the indexes.

    ``cell_m`` is the grid cell of the disk indexes (default: smallest radius / 5.5, at least 5 m;
    measured best for 250 / 1000 m radii over a city of lines and polygons).
    ``max_part_m`` bounds the length of line segments and polygon edges (default: ``MAX_PART_CELLS``
    cells): longer parts mean fewer primitives near each circle (the rim holds parts within their
    half-length of it plus a cell), at the price of a wider band of parts classified one by one.
    ``extent`` (a lon/lat shapely geometry) is where the features are complete, e.g. the box an
    Overpass API was asked for; default: the convex hull of all ``features``.
    """
    names = catalogue.names
    member = catalogue.match(features, features["gtype"].to_numpy())
    used = member.any(1)
    feats = features[used]
    member = member[used]
    log.info("%d of %d OSM features fall in a catalogue category", len(feats), len(features))
    geom_ll = np.asarray(feats.geometry.values, dtype=object)
    geom = np.asarray(gpd.GeoSeries(geom_ll, crs=features.crs).to_crs(crs).values, dtype=object)
    gtype = feats["gtype"].to_numpy()
    radii = [float(r) for r in radii_m]
    cell = float(cell_m) if cell_m else max(min(radii) / 5.5, 5.0)
    max_part = float(max_part_m) if max_part_m else MAX_PART_CELLS * cell
    fi, ci = np.nonzero(member)  # (feature, category) pairs

    # counts: representative points
    count_cats = catalogue.with_measure("count")
    rep = representative_points(geom) if len(geom) else np.empty((0, 2))
    ccol = {names.index(c): j for j, c in enumerate(count_cats)}
    sel = np.isin(ci, list(ccol))
    count_spec = {"kind": "count", "data": rep[fi[sel]], "cat": np.array([ccol[c] for c in ci[sel]], dtype=np.int64),
                  "n_cat": len(count_cats)}
    # lengths: line segments
    len_cats = catalogue.with_measure("length")
    lcol = {names.index(c): j for j, c in enumerate(len_cats)}
    sel = np.isin(ci, list(lcol)) & (gtype[fi] == "line")
    lines = np.unique(fi[sel])
    seg, owner = line_segments(geom[lines], max_part) if len(lines) else (np.empty((0, 4)), np.empty(0, int))
    seg_data, seg_cat = _explode(seg, lines[owner] if len(owner) else owner, fi[sel], ci[sel], lcol)
    length_spec = {"kind": "length", "data": seg_data, "cat": seg_cat, "n_cat": len(len_cats)}
    # areas: oriented polygon edges (Green's theorem) + the valid polygons for winding counts
    area_cats = catalogue.with_measure("area")
    acol = {names.index(c): j for j, c in enumerate(area_cats)}
    sel = np.isin(ci, list(acol)) & (gtype[fi] == "polygon")
    polys = np.unique(fi[sel])
    if len(polys):
        edges, eowner, parts, powner = polygon_edges(geom[polys], max_part)
    else:
        edges, eowner, parts, powner = np.empty((0, 4)), np.empty(0, int), np.empty(0, object), np.empty(0, int)
    e_data, e_cat = _explode(edges, polys[eowner] if len(eowner) else eowner, fi[sel], ci[sel], acol)
    p_rows, p_cat = _explode(np.arange(len(parts)), polys[powner] if len(powner) else powner, fi[sel], ci[sel],
                             acol)
    area_spec = {"kind": "area", "data": e_data, "cat": e_cat, "n_cat": len(area_cats),
                 "polygons": parts[p_rows], "polygon_cat": p_cat}
    counts = DiskIndex.build(cell=_count_cell(count_spec["data"], min(radii)) if cell_m is None else cell,
                             **count_spec)
    lengths = DiskIndex.build(cell=cell, **length_spec)
    areas = DiskIndex.build(cell=cell, **area_spec)
    # hex: H3 cell of each hex-category feature's representative point (lon/lat)
    hex_cats = catalogue.hex_categories
    hcol = {names.index(c): j for j, c in enumerate(hex_cats)}
    sel = np.isin(ci, list(hcol))
    if sel.any():
        hf = np.unique(fi[sel])
        rep_ll = representative_points(geom_ll[hf])
        cell_of = np.zeros(len(geom), dtype=np.int64)
        cell_of[hf] = h3_cells(rep_ll[:, 0], rep_ll[:, 1], h3_resolution)
        key = cell_of[fi[sel]]
        hex_cells, inv = np.unique(key, return_inverse=True)
        hex_counts = np.zeros((len(hex_cells), len(hex_cats)), dtype=np.float32)
        np.add.at(hex_counts, (inv, np.array([hcol[c] for c in ci[sel]], dtype=np.int64)), 1.0)
    else:
        hex_cells, hex_counts = np.empty(0, np.int64), np.zeros((0, len(hex_cats)), np.float32)
    # distances: points in a KD-tree, other geometries in an STRtree, per category
    is_pt = shapely.get_type_id(geom) == 0
    dist_points = [rep[fi[(ci == k) & is_pt[fi]]] for k in range(len(names))]
    dist_geoms = [geom[fi[(ci == k) & ~is_pt[fi]]] for k in range(len(names))]
    # data extent: given, else the convex hull of every feature read (in lon/lat, densified, then projected)
    if extent is None:
        extent = shapely.convex_hull(shapely.multipoints(shapely.get_coordinates(features.geometry.values)))
    hull_ll = shapely.segmentize(extent, 0.001)
    hull = gpd.GeoSeries([hull_ll], crs=features.crs).to_crs(crs).values[0]
    shapely.prepare(hull)
    from pyproj import CRS

    return PreparedOsm(
        catalogue=catalogue, crs_wkt=CRS.from_user_input(crs).to_wkt(), h3_resolution=int(h3_resolution),
        radii_m=radii, max_distance_m=float(max_distance_m), counts=counts, lengths=lengths, areas=areas,
        hex_cells=hex_cells, hex_counts=hex_counts, dist_points=dist_points, dist_geoms=dist_geoms,
        max_part_m=max_part, hull=hull,
        token=token or text_fingerprint([len(features), radii, h3_resolution, max_distance_m, cell, max_part]),
        n_features=int(len(feats)),
    )


def _count_cell(pts: np.ndarray, r_min: float) -> float:
    """Grid cell for point counts: about two points per cell (rim work grows with R * s * density,
    row work with R / s), kept within [r_min / 64, r_min / 4]."""
    if len(pts) < 2:
        return r_min / 8
    ext = np.maximum(pts.max(0) - pts.min(0), 1.0)
    s = 1.5 / np.sqrt(len(pts) / (ext[0] * ext[1]))
    return float(np.clip(s, r_min / 64, r_min / 4))


def _explode(parts: np.ndarray, part_feature: np.ndarray, pair_f: np.ndarray, pair_c: np.ndarray,
             col: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Repeat each primitive once per (feature, category) membership of its feature."""
    if len(parts) == 0:
        return parts, np.empty(0, dtype=np.int64)
    order = np.argsort(pair_f, kind="stable")
    pf, pc = pair_f[order], np.array([col[c] for c in pair_c[order]], dtype=np.int64)
    start = np.searchsorted(pf, part_feature, "left")
    stop = np.searchsorted(pf, part_feature, "right")
    k = stop - start
    rep = np.repeat(np.arange(len(parts)), k)
    j = np.arange(len(rep)) - np.repeat(np.cumsum(k) - k, k) + np.repeat(start, k)
    return parts[rep], pc[j]


def compute_osm_chunk(
    prep: PreparedOsm, x: np.ndarray, y: np.ndarray, lon: np.ndarray, lat: np.ndarray,
    *, parts: tuple[str, ...] = ("hex", "radius", "distance"),
) -> dict[str, np.ndarray]:
    """Pure per-chunk computation for locations at metric ``x, y`` (in ``prep``'s CRS) and ``lon, lat``.

    Returns ``hex`` (n, C_hex, 7, 7), ``radius`` (n, F), ``distance`` (n, K) float32 and ``valid``
    (n,) bool (inside the data extent); rows outside the extent are NaN. ``parts`` selects what to
    compute (the others are returned NaN), for benchmarking.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    cat = prep.catalogue
    valid = shapely.intersects_xy(prep.hull, x, y) if n else np.zeros(0, bool)
    out: dict[str, np.ndarray] = {}
    n_hex = len(cat.hex_categories)
    n_rad = len(cat.radius_feature_names(prep.radii_m))
    n_cat = len(cat.names)
    if "hex" in parts:
        out["hex"] = hex_tensor(h3_cells(lon, lat, prep.h3_resolution), prep.hex_cells, prep.hex_counts,
                                cache=prep._hex_cache)
    else:
        out["hex"] = np.full((n, n_hex, 7, 7), np.nan, np.float32)
    if "radius" in parts:
        cols = []
        cc, lc, ac = cat.with_measure("count"), cat.with_measure("length"), cat.with_measure("area")
        for r in prep.radii_m:
            cnt, ln, ar = (prep.counts.query(x, y, r), prep.lengths.query(x, y, r), prep.areas.query(x, y, r))
            disk = np.pi * r * r
            for name, c in cat.categories.items():
                if "count" in c.measures:
                    cols.append(cnt[:, cc.index(name)])
                if "length" in c.measures:
                    cols.append(ln[:, lc.index(name)])
                if "area" in c.measures:
                    a = np.maximum(ar[:, ac.index(name)], 0.0)  # clear -1e-11 rounding
                    cols += [a, a / disk]
        out["radius"] = (np.stack(cols, axis=1) if cols else np.zeros((n, 0))).astype(np.float32)
        assert out["radius"].shape[1] == n_rad
    else:
        out["radius"] = np.full((n, n_rad), np.nan, np.float32)
    if "distance" in parts:
        dist = np.full((n, n_cat), prep.max_distance_m, dtype=np.float64)
        for k in range(n_cat):
            kd, near = prep.trees(k)
            if kd is not None:
                d, _ = kd.query(np.column_stack([x, y]), k=1, distance_upper_bound=prep.max_distance_m)
                np.minimum(dist[:, k], d, out=dist[:, k])  # inf beyond the cap
            if near is not None:
                np.minimum(dist[:, k], near.distance(x, y, prep.max_distance_m), out=dist[:, k])
        out["distance"] = np.minimum(dist, prep.max_distance_m).astype(np.float32)
    else:
        out["distance"] = np.full((n, n_cat), np.nan, np.float32)
    for k in ("hex", "radius", "distance"):
        out[k][~valid] = np.nan
    out["valid"] = valid
    return out


_local = threading.local()


def _to_metric(crs_wkt: str, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat projected to the prepared features' CRS (one cached transformer per thread)."""
    from pyproj import Transformer

    cache = getattr(_local, "transformers", None)
    if cache is None:
        cache = _local.transformers = {}
    tr = cache.get(crs_wkt)
    if tr is None:
        tr = cache[crs_wkt] = Transformer.from_crs("EPSG:4326", crs_wkt, always_xy=True)
    x, y = tr.transform(lon, lat)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


class OsmView(View):
    """Per-location OSM features (see the module docstring)."""

    kind = "osm"
    config_model = OsmViewConfig
    gil_bound = True
    cfg: OsmViewConfig

    def reach_m(self) -> float:
        """How far from a location its features count: the largest of ``max_distance_m``, the radii and
        the H3 disk's reach (the padding of an Overpass extent)."""
        cfg = self.cfg
        return max(cfg.max_distance_m, max(cfg.radii_m), h3_disk_reach_m(cfg.h3_resolution, 3))

    def _source(self, lon: np.ndarray, lat: np.ndarray, catalogue: Catalogue) -> tuple[Path, str, dict, object]:
        """(local file, its fingerprint, attrs that say where it came from, the lon/lat extent where
        its features are complete or None for the hull of the features)."""
        cfg = self.cfg
        try:
            if cfg.overpass is not None:
                from geoembed.sources import extent_around, overpass_features
                from geoembed.sources.extent import bbox_parts

                bbox = extent_around(lon, lat, self.reach_m())
                res = overpass_features(cfg.overpass, bbox, catalogue)
                extent = shapely.union_all([shapely.box(*b) for b in bbox_parts(bbox)])
                where = {"overpass": {"url": cfg.overpass.url, "extent": [float(v) for v in bbox],
                                      "tiles": len(res.tiles)}}
                return res.path, res.fingerprint, where, extent
            if cfg.source.startswith(("http://", "https://")):
                from urllib.parse import urlparse

                from geoembed.sources import cached_download
                from geoembed.views.osm_read import source_format

                source_format(urlparse(cfg.source).path or cfg.source)  # a known format before downloading
                path = cached_download(cfg.source, cfg.source_sha256)
                return path, source_fingerprint(path), {"url": cfg.source, "local_path": str(path)}, None
        except InputError as err:
            raise InputError(f"OSM view {cfg.name!r}: {err}") from None
        src = Path(cfg.source)
        if not src.is_file():
            raise InputError(f"OSM source {src} (view {cfg.name!r}) does not exist")
        return src, source_fingerprint(src), {}, None

    def resolve(self, lon: np.ndarray, lat: np.ndarray) -> Resolved:
        cfg = self.cfg
        catalogue = load_catalogue(cfg.catalogue)
        src, source_fp, where, extent = self._source(lon, lat, catalogue)
        crs = utm_crs(lon, lat)
        radius_names = catalogue.radius_feature_names(cfg.radii_m)
        attrs = {
            "source": where.get("url", str(src)),
            **where,
            "source_fingerprint": source_fp,
            "crs": crs.to_string(),
            "categories": catalogue.names,
            "hex_categories": catalogue.hex_categories,
            "distance_categories": catalogue.names,
            "radius_features": radius_names,
            "hex_mask": HEX_MASK.astype(int).tolist(),
            "hex_stencil": HEX_STENCIL.astype(int).tolist(),
            "hex_layout": "hex[c, 3 + di, 3 + dj] for H3 local IJ offset (di, dj) from the location's cell",
            "h3_resolution": cfg.h3_resolution,
            "radii_m": [float(r) for r in cfg.radii_m],
            "max_distance_m": cfg.max_distance_m,
            "catalogue": catalogue.to_dict(),
            "validity": ("valid = inside the box asked of the Overpass API; else NaN rows" if extent is not None
                         else "valid = inside the convex hull of all features of the source; else NaN rows"),
            "view_version": VIEW_VERSION,
        }
        arrays = {
            "hex": ArraySpec((len(catalogue.hex_categories), 7, 7), "float32"),
            "radius": ArraySpec((len(radius_names),), "float32"),
            "distance": ArraySpec((len(catalogue.names),), "float32"),
        }
        inputs = {"catalogue": catalogue.to_dict(), "source": source_fp, "version": VIEW_VERSION}
        reader = osm_reader(src)  # the libosmium and GDAL readers differ slightly: part of the fingerprint
        if reader != "parquet":
            inputs["reader"] = reader
        return Resolved(arrays=arrays, attrs=attrs, inputs=inputs, context=(src, catalogue, crs, extent))

    def prepare(self, resolved: Resolved, lon: np.ndarray, lat: np.ndarray) -> PreparedOsm:
        """Read the source's features, categorise and project them, build the indexes."""
        src, catalogue, crs, extent = resolved.context
        cfg = self.cfg
        feats = read_osm_features(src, catalogue.keys, catalogue=catalogue)
        prep = prepare_osm(feats, catalogue, crs, h3_resolution=cfg.h3_resolution, radii_m=cfg.radii_m,
                           max_distance_m=cfg.max_distance_m, token=text_fingerprint(resolved.inputs),
                           extent=extent)
        x, y = _to_metric(prep.crs_wkt, lon, lat)
        if len(lon) and not shapely.intersects_xy(prep.hull, x, y).any():
            w, s, e, n = (float(v) for v in feats.total_bounds)
            raise InputError(f"OSM source {src} (view {cfg.name!r}) holds no features where the locations are: "
                             f"its features cover lon {w:.4f}..{e:.4f}, lat {s:.4f}..{n:.4f}, the locations lie in "
                             f"lon {np.min(lon):.4f}..{np.max(lon):.4f}, lat {np.min(lat):.4f}..{np.max(lat):.4f} "
                             "(use an extract of the locations' region)")
        return prep

    def compute_chunk(self, prepared: PreparedOsm, lon: np.ndarray, lat: np.ndarray) -> Chunk:
        tune_malloc()
        x, y = _to_metric(prepared.crs_wkt, lon, lat)
        res = compute_osm_chunk(prepared, x, y, lon, lat)
        return Chunk(res, valid=res.pop("valid"))
