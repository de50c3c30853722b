"""Cross-validation folds: random K-fold, spatial-block K-fold and leave-region-out.

Every function returns a fold array: ``fold[i]`` is the test fold of row i (0..K-1), or -1 for a row that
is never tested (always in training, e.g. outside a held-out bbox). Fold f's training set is
``fold != f``. Spatial blocks are assigned to folds whole, so a block never straddles train and test.

:class:`SpatialBlockKFold` and :class:`LeaveRegionOut` are scikit-learn splitters (``BaseCrossValidator``)
built on these functions; :func:`make_splitter` makes one from a ``split:`` config section, and
``geoembed evaluate`` takes its folds from it, so the command and a user's ``cross_val_predict`` see the
same folds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

from geoembed import geo
from geoembed.config.evaluate import SplitConfig
from geoembed.errors import ConfigError, InputError


def grid_blocks(lon, lat, size_m: float) -> np.ndarray:
    """Block id of each point: its cell in a square grid of ``size_m`` metres starting at the south-west
    corner of the points (:func:`geoembed.geo.grid_blocks` with ``anchor="extent"``; safe across the
    antimeridian)."""
    if not size_m > 0:
        raise ConfigError(f"split.block_size_m must be > 0, got {size_m}")
    return geo.grid_blocks(lon, lat, size_m, anchor="extent")


def h3_blocks(lon, lat, resolution: int) -> np.ndarray:
    """Block id of each point: the int64 id of its H3 cell at ``resolution``."""
    return geo.h3_cells(lon, lat, resolution)


def kmeans_blocks(lon, lat, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Block id of each point: its k-means cluster (``n_blocks`` clusters of projected coordinates)."""
    from sklearn.cluster import KMeans

    x, y = geo.project_local(lon, lat)
    xy = np.column_stack([x, y])
    n_unique = len(np.unique(xy, axis=0))
    if n_unique < n_blocks:
        raise InputError(f"k-means blocks: {n_blocks} blocks requested but only {n_unique} distinct locations")
    from threadpoolctl import threadpool_limits

    km = KMeans(n_clusters=n_blocks, n_init=4, random_state=seed)
    with threadpool_limits(limits=1):  # OpenMP threads on a few thousand points only cost time
        return km.fit_predict(xy).astype(np.int64)


def random_folds(n: int, n_folds: int, seed: int = 0) -> np.ndarray:
    """Random K-fold: a balanced random fold id per row."""
    if n < n_folds:
        raise InputError(f"random K-fold: {n} rows cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    fold = np.arange(n) % n_folds
    rng.shuffle(fold)
    return fold.astype(np.int64)


def blocks_to_folds(blocks, n_folds: int, seed: int = 0) -> np.ndarray:
    """Assign whole blocks to K folds, balancing row counts (largest block first to the lightest fold).

    Blocks are shuffled with ``seed`` before the stable size sort, so equal-size blocks are spread randomly.
    """
    blocks = np.asarray(blocks)
    uniq, inverse, counts = np.unique(blocks, return_inverse=True, return_counts=True)
    if len(uniq) < n_folds:
        raise InputError(f"spatial blocks: only {len(uniq)} non-empty blocks for {n_folds} folds; "
                         "use smaller blocks (split.block_size_m, split.h3_resolution) or more k-means blocks")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    order = perm[np.argsort(-counts[perm], kind="stable")]
    block_fold = np.empty(len(uniq), dtype=np.int64)
    load = np.zeros(n_folds, dtype=np.int64)
    for b in order:  # loop over blocks, not rows
        f = int(np.argmin(load))
        block_fold[b] = f
        load[f] += counts[b]
    return block_fold[inverse.ravel()]


def region_folds(regions, holdout=None) -> np.ndarray:
    """Leave-region-out: one fold per region value, or a single test fold of the ``holdout`` values."""
    reg = pd.Series(np.asarray(regions)).astype(str).to_numpy()
    if holdout is not None:
        hold = {str(h) for h in holdout}
        missing = sorted(hold - set(reg))
        if missing:
            raise InputError(f"leave-region-out: holdout region(s) {missing} not found in the region column")
        return np.where(np.isin(reg, list(hold)), 0, -1).astype(np.int64)
    uniq, inverse = np.unique(reg, return_inverse=True)
    if len(uniq) < 2:
        raise InputError(f"leave-region-out: the region column has {len(uniq)} distinct value(s); need >= 2")
    return inverse.ravel().astype(np.int64)


def bbox_folds(lon, lat, bbox) -> np.ndarray:
    """Rows inside ``bbox`` = (min_lon, min_lat, max_lon, max_lat) are the test fold 0; the rest train (-1)."""
    lon = np.asarray(lon, float)
    lat = np.asarray(lat, float)
    inside = (lon >= bbox[0]) & (lon <= bbox[2]) & (lat >= bbox[1]) & (lat <= bbox[3])
    return np.where(inside, 0, -1).astype(np.int64)


def polygon_folds(lon, lat, geometry) -> np.ndarray:
    """Rows inside (or on) the shapely ``geometry`` (lon/lat degrees) are test fold 0; the rest train (-1)."""
    import shapely

    pts = shapely.points(np.asarray(lon, float), np.asarray(lat, float))
    shapely.prepare(geometry)
    inside = shapely.intersects(geometry, pts)
    return np.where(inside, 0, -1).astype(np.int64)


def _load_polygon(cfg: SplitConfig):
    import shapely

    if cfg.wkt is not None:
        try:
            return shapely.from_wkt(cfg.wkt)
        except Exception as err:  # shapely raises GEOSException
            raise ConfigError(f"split.wkt is not valid WKT: {err}") from None
    return _read_polygon(cfg.polygon)


def _read_polygon(path) -> object:
    """The union of a vector file's geometries in EPSG:4326."""
    import geopandas as gpd
    import shapely

    try:
        gdf = gpd.read_file(path)
    except Exception as err:
        raise InputError(f"split.polygon: cannot read {path}: {err}") from None
    if gdf.crs is not None:
        gdf = gdf.to_crs("EPSG:4326")
    return shapely.union_all(gdf.geometry.to_numpy())


class SpatialBlockKFold(BaseCrossValidator):
    """K-fold over spatial blocks: every row's block (grid cell, H3 cell, k-means cluster or a given id) goes
    whole to one test fold, so a block never straddles train and test.

    Folds are balanced as scikit-learn's ``GroupKFold`` does it (largest block first, to the fold with the
    fewest rows), with the blocks shuffled by ``random_state`` before the stable size sort so that blocks of
    equal size are spread at random (``GroupKFold`` without shuffle breaks such ties by block order, and with
    shuffle gives up the balancing). Usable with any scikit-learn CV tool::

        cross_val_predict(GLMRegressor(exposure="years"), X, y, cv=SpatialBlockKFold(5, block_size_m=1500))

    Parameters
    ----------
    n_splits : number of folds.
    block_method : "grid" (square cells of ``block_size_m`` metres, :func:`grid_blocks`), "h3" (cells at
        ``h3_resolution``), "kmeans" (``n_blocks`` clusters of projected coordinates, default 4 x n_splits) or
        "column" (the ids in ``block_column``). ``groups`` given to ``split`` are block ids and win over all.
    lon_col, lat_col : coordinate columns of X (degrees, EPSG:4326).
    random_state : seed of the tie shuffle (and of k-means).
    """

    def __init__(self, n_splits: int = 5, *, block_method: str = "grid", block_size_m: float = 2000.0,
                 h3_resolution: int = 7, n_blocks: int | None = None, block_column: str | None = None,
                 lon_col: str = "lon", lat_col: str = "lat", random_state: int = 0):
        self.n_splits = n_splits
        self.block_method = block_method
        self.block_size_m = block_size_m
        self.h3_resolution = h3_resolution
        self.n_blocks = n_blocks
        self.block_column = block_column
        self.lon_col = lon_col
        self.lat_col = lat_col
        self.random_state = random_state

    def blocks(self, X, groups=None) -> np.ndarray:
        """Block id per row of X (``groups`` when given)."""
        if groups is not None:
            return np.asarray(groups)
        if self.block_method == "column":
            if self.block_column not in X.columns:
                raise InputError(f"split.block_column {self.block_column!r} is not a column of the table")
            return pd.factorize(X[self.block_column])[0].astype(np.int64)
        lon, lat = _lonlat(X, self.lon_col, self.lat_col)
        if self.block_method == "grid":
            return grid_blocks(lon, lat, self.block_size_m)
        if self.block_method == "h3":
            return h3_blocks(lon, lat, self.h3_resolution)
        if self.block_method == "kmeans":
            return kmeans_blocks(lon, lat, self.n_blocks or 4 * self.n_splits, self.random_state)
        raise ConfigError(f"block_method must be grid, h3, kmeans or column, got {self.block_method!r}")

    def fold_ids(self, X, y=None, groups=None) -> np.ndarray:
        """Test fold (0..n_splits-1) of every row."""
        return blocks_to_folds(self.blocks(X, groups), self.n_splits, self.random_state)

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield (train, test) row positions, one pair per fold."""
        yield from _split(self.fold_ids(X, y, groups))


class LeaveRegionOut(BaseCrossValidator):
    """Leave-region-out: each region is a test fold in turn; or one test fold of held-out regions, of the
    rows inside a bbox or inside a polygon, the other rows always training.

    Parameters
    ----------
    region_col : column of X with region labels (or pass the labels as ``groups`` to ``split``).
    holdout : with regions, only these labels form the (single) test fold.
    bbox : (min_lon, min_lat, max_lon, max_lat): the rows inside are the test fold.
    polygon : a shapely geometry in lon/lat degrees, or the path of a vector file: the rows inside are the
        test fold.
    lon_col, lat_col : coordinate columns of X for bbox / polygon.
    """

    def __init__(self, region_col: str | None = None, *, holdout=None, bbox=None, polygon=None,
                 lon_col: str = "lon", lat_col: str = "lat"):
        self.region_col = region_col
        self.holdout = holdout
        self.bbox = bbox
        self.polygon = polygon
        self.lon_col = lon_col
        self.lat_col = lat_col

    def fold_ids(self, X, y=None, groups=None) -> np.ndarray:
        """Test fold of every row (0..K-1), -1 for rows that are never tested."""
        if self.bbox is not None:
            return bbox_folds(*_lonlat(X, self.lon_col, self.lat_col), self.bbox)
        if self.polygon is not None:
            geom = self.polygon
            if isinstance(geom, str | Path):
                geom = _read_polygon(geom)
            return polygon_folds(*_lonlat(X, self.lon_col, self.lat_col), geom)
        if groups is None:
            if self.region_col is None:
                raise ConfigError("LeaveRegionOut needs region_col, bbox, polygon or groups")
            if self.region_col not in X.columns:
                raise InputError(f"split.region_column {self.region_col!r} is not a column of the table")
            groups = X[self.region_col].to_numpy()
        return region_folds(groups, self.holdout)

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        if self.bbox is not None or self.polygon is not None or self.holdout is not None:
            return 1
        if X is None and groups is None:
            raise ValueError("LeaveRegionOut.get_n_splits needs X (or groups) to count the regions")
        return int(self.fold_ids(X, y, groups).max()) + 1

    def split(self, X, y=None, groups=None):
        """Yield (train, test) row positions, one pair per test fold."""
        yield from _split(self.fold_ids(X, y, groups))


def _lonlat(X, lon_col: str, lat_col: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [c for c in (lon_col, lat_col) if c not in X.columns]
    if missing:
        raise InputError(f"the table lacks coordinate column(s) {missing}")
    return X[lon_col].to_numpy(float), X[lat_col].to_numpy(float)


def _split(fold: np.ndarray):
    check_folds(fold)
    for f in np.unique(fold[fold >= 0]):
        yield np.flatnonzero(fold != f), np.flatnonzero(fold == f)


def make_splitter(cfg: SplitConfig, lon_col: str = "lon", lat_col: str = "lat") -> BaseCrossValidator:
    """The scikit-learn splitter of a ``split:`` config section (what ``geoembed evaluate`` uses):
    ``KFold(shuffle=True)`` for ``random``, :class:`SpatialBlockKFold`, or :class:`LeaveRegionOut`."""
    if cfg.kind == "random":
        from sklearn.model_selection import KFold

        return KFold(cfg.n_folds, shuffle=True, random_state=cfg.seed)
    if cfg.kind == "spatial_block":
        return SpatialBlockKFold(cfg.n_folds, block_method=cfg.block_method, block_size_m=cfg.block_size_m,
                                 h3_resolution=cfg.h3_resolution, n_blocks=cfg.n_blocks,
                                 block_column=cfg.block_column, lon_col=lon_col, lat_col=lat_col,
                                 random_state=cfg.seed)
    polygon = _load_polygon(cfg) if (cfg.polygon is not None or cfg.wkt is not None) else None
    return LeaveRegionOut(cfg.region_column, holdout=cfg.holdout_regions, bbox=cfg.bbox, polygon=polygon,
                          lon_col=lon_col, lat_col=lat_col)


def fold_ids(splitter, X, y=None, groups=None) -> np.ndarray:
    """Test fold of every row under any scikit-learn splitter (-1 for rows never tested)."""
    if hasattr(splitter, "fold_ids"):
        return np.asarray(splitter.fold_ids(X, y, groups), dtype=np.int64)
    fold = np.full(len(X), -1, dtype=np.int64)
    for f, (_, test) in enumerate(splitter.split(X, y, groups)):
        fold[test] = f
    return fold


def assign_folds(table: pd.DataFrame, cfg: SplitConfig, lon_col: str = "lon",
                 lat_col: str = "lat") -> tuple[np.ndarray, np.ndarray | None]:
    """Fold id per row under the config's splitter (:func:`make_splitter`; see module doc) and the spatial
    block id per row (None unless spatial_block). Raises InputError when a fold would be empty or a needed
    column is missing."""
    if cfg.kind == "random" and len(table) < cfg.n_folds:
        raise InputError(f"random K-fold: {len(table)} rows cannot fill {cfg.n_folds} folds")
    splitter = make_splitter(cfg, lon_col, lat_col)
    blocks = splitter.blocks(table) if isinstance(splitter, SpatialBlockKFold) else None
    fold = blocks_to_folds(blocks, cfg.n_folds, cfg.seed) if blocks is not None else fold_ids(splitter, table)
    check_folds(fold)
    return fold, blocks


def check_folds(fold: np.ndarray) -> None:
    """Raise InputError if some fold has no test rows or no training rows."""
    ids = np.unique(fold[fold >= 0])
    if len(ids) == 0:
        raise InputError("the split leaves no test rows (empty held-out region?)")
    expected = np.arange(int(ids.max()) + 1)
    empty = sorted(set(expected.tolist()) - set(ids.tolist()))
    if empty:
        raise InputError(f"fold(s) {empty} have no test rows")
    for f in ids:
        if np.all(fold == f):
            raise InputError(f"fold {int(f)} holds every row, leaving no training rows")


def inner_folds(train_idx: np.ndarray, blocks: np.ndarray | None, n_folds: int = 3,
                seed: int = 0) -> np.ndarray:
    """Inner K-fold ids (0..K-1) of the training rows ``train_idx``, for early stopping.

    Whole spatial blocks when ``blocks`` is given and the training rows span at least ``n_folds`` blocks,
    so the inner validation is as spatially honest as the outer one; random rows otherwise.
    """
    train_idx = np.asarray(train_idx)
    if blocks is not None and len(np.unique(blocks[train_idx])) >= n_folds:
        return blocks_to_folds(blocks[train_idx], n_folds, seed)
    return random_folds(len(train_idx), min(n_folds, max(len(train_idx), 1)), seed)
