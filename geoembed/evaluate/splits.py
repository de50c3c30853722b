"""Cross-validation folds: random K-fold, spatial-block K-fold and leave-region-out.

Every function returns a fold array: ``fold[i]`` is the test fold of row i (0..K-1), or -1 for a row that
is never tested (always in training, e.g. outside a held-out bbox). Fold f's training set is
``fold != f``. Spatial blocks are assigned to folds whole, so a block never straddles train and test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    import geopandas as gpd

    try:
        gdf = gpd.read_file(cfg.polygon)
    except Exception as err:
        raise InputError(f"split.polygon: cannot read {cfg.polygon}: {err}") from None
    if gdf.crs is not None:
        gdf = gdf.to_crs("EPSG:4326")
    return shapely.union_all(gdf.geometry.to_numpy())


def make_blocks(table: pd.DataFrame, cfg: SplitConfig, lon_col: str, lat_col: str) -> np.ndarray | None:
    """Spatial block id per row for a ``spatial_block`` split (None for other kinds)."""
    if cfg.kind != "spatial_block":
        return None
    lon, lat = table[lon_col].to_numpy(float), table[lat_col].to_numpy(float)
    if cfg.block_method == "grid":
        return grid_blocks(lon, lat, cfg.block_size_m)
    if cfg.block_method == "h3":
        return h3_blocks(lon, lat, cfg.h3_resolution)
    if cfg.block_method == "kmeans":
        return kmeans_blocks(lon, lat, cfg.n_blocks or 4 * cfg.n_folds, cfg.seed)
    col = cfg.block_column
    if col not in table.columns:
        raise InputError(f"split.block_column {col!r} is not a column of the table")
    return pd.factorize(table[col])[0].astype(np.int64)


def assign_folds(table: pd.DataFrame, cfg: SplitConfig, lon_col: str = "lon",
                 lat_col: str = "lat") -> tuple[np.ndarray, np.ndarray | None]:
    """Fold id per row (see module doc) and the spatial block id per row (None unless spatial_block).

    Raises InputError when a fold would be empty or a needed column is missing.
    """
    n = len(table)
    blocks = None
    if cfg.kind == "random":
        fold = random_folds(n, cfg.n_folds, cfg.seed)
    elif cfg.kind == "spatial_block":
        blocks = make_blocks(table, cfg, lon_col, lat_col)
        fold = blocks_to_folds(blocks, cfg.n_folds, cfg.seed)
    elif cfg.region_column is not None:
        if cfg.region_column not in table.columns:
            raise InputError(f"split.region_column {cfg.region_column!r} is not a column of the table")
        fold = region_folds(table[cfg.region_column].to_numpy(), cfg.holdout_regions)
    elif cfg.bbox is not None:
        fold = bbox_folds(table[lon_col], table[lat_col], cfg.bbox)
    else:
        fold = polygon_folds(table[lon_col], table[lat_col], _load_polygon(cfg))
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
