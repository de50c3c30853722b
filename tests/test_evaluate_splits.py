"""Fold assignment: random, spatial blocks (grid / H3 / k-means) and leave-region-out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geoembed.config.evaluate import SplitConfig
from geoembed.errors import InputError
from geoembed.evaluate import splits as S
from geoembed.evaluate.synthetic import make_risk_table


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return make_risk_table(n=600, seed=5)


def test_random_folds_balanced_and_seeded():
    f = S.random_folds(103, 5, seed=1)
    assert sorted(np.bincount(f).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(f, S.random_folds(103, 5, seed=1))
    assert not np.array_equal(f, S.random_folds(103, 5, seed=2))


def test_grid_blocks_are_square_cells_in_metres():
    from geoembed import geo

    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-0.05, 0.05, 500), rng.uniform(-0.05, 0.05, 500)  # ~11 x 11 km at the equator
    b = S.grid_blocks(lon, lat, 1000.0)
    x, y = geo.project_local(lon, lat)
    cell = np.floor((x - x.min()) / 1000.0) * 100_000 + np.floor((y - y.min()) / 1000.0)
    # same block exactly when the same 1 km cell of the local projection
    assert np.array_equal(b[:, None] == b[None, :], cell[:, None] == cell[None, :])
    assert 100 <= len(np.unique(b)) <= 144
    assert len(np.unique(S.grid_blocks(lon, lat, 100_000.0))) == 1


def test_grid_blocks_across_the_antimeridian():
    # 400 points within 0.05 degrees of 180: the same blocks as the locations stage, a few km each
    rng = np.random.default_rng(1)
    lon = np.where(rng.random(400) < 0.5, rng.uniform(179.95, 180.0, 400), rng.uniform(-180.0, -179.95, 400))
    lat = rng.uniform(-17.05, -16.95, 400)
    b = S.grid_blocks(lon, lat, 2000.0)
    assert len(np.unique(b)) <= 40
    from geoembed.geo import project_local

    x, _ = project_local(lon, lat)
    assert np.ptp(x) < 12_000  # one continuous projection, not +-12,755 km


@pytest.mark.parametrize("method,extra", [("grid", {"block_size_m": 1500}), ("h3", {"h3_resolution": 7}),
                                          ("kmeans", {"n_blocks": 15})])
def test_blocks_never_straddle_train_and_test(table, method, extra):
    cfg = SplitConfig(kind="spatial_block", n_folds=4, block_method=method, **extra)
    fold, blocks = S.assign_folds(table, cfg)
    assert blocks is not None and len(np.unique(blocks)) >= 4
    # each block maps to exactly one fold, so for every fold no block is on both sides
    per_block = pd.Series(fold).groupby(blocks).nunique()
    assert (per_block == 1).all()
    for f in range(4):
        test_blocks = set(blocks[fold == f])
        train_blocks = set(blocks[fold != f])
        assert not test_blocks & train_blocks
    counts = np.bincount(fold)
    assert len(counts) == 4 and counts.min() > 0.5 * counts.max()  # balanced by rows


def test_h3_blocks_match_h3_parent_cells(table):
    import h3

    b = S.h3_blocks(table["lon"].to_numpy(), table["lat"].to_numpy(), 6)
    i = 17
    cell = h3.latlng_to_cell(table["lat"].iloc[i], table["lon"].iloc[i], 6)
    assert b[i] == np.int64(h3.str_to_int(cell))


def test_too_few_blocks_is_a_clear_error(table):
    cfg = SplitConfig(kind="spatial_block", n_folds=5, block_method="grid", block_size_m=50_000)
    with pytest.raises(InputError, match="only 1 non-empty blocks for 5 folds"):
        S.assign_folds(table, cfg)


def test_leave_region_out_by_column(table):
    cfg = SplitConfig(kind="leave_region_out", region_column="region")
    fold, _ = S.assign_folds(table, cfg)
    assert len(np.unique(fold)) == 4
    for f in range(4):
        assert table["region"][fold == f].nunique() == 1
    hold = SplitConfig(kind="leave_region_out", region_column="region", holdout_regions=["WS"])
    fold, _ = S.assign_folds(table, hold)
    assert set(table["region"][fold == 0]) == {"WS"}
    assert "WS" not in set(table["region"][fold == -1])
    with pytest.raises(InputError, match=r"holdout region\(s\) \['XX'\] not found"):
        S.assign_folds(table, SplitConfig(kind="leave_region_out", region_column="region",
                                          holdout_regions=["XX"]))
    with pytest.raises(InputError, match="split.region_column 'nope'"):
        S.assign_folds(table, SplitConfig(kind="leave_region_out", region_column="nope"))


def test_leave_region_out_bbox_and_polygon(table):
    bbox = (4.30, 50.80, 4.375, 50.85)
    fold, _ = S.assign_folds(table, SplitConfig(kind="leave_region_out", bbox=bbox))
    inside = (table.lon <= 4.375) & (table.lat <= 50.85)
    assert np.array_equal(fold == 0, inside.to_numpy())
    wkt = "POLYGON ((4.30 50.80, 4.375 50.80, 4.375 50.85, 4.30 50.85, 4.30 50.80))"
    fold2, _ = S.assign_folds(table, SplitConfig(kind="leave_region_out", wkt=wkt))
    assert np.array_equal(fold, fold2)
    with pytest.raises(InputError, match="no test rows"):
        S.assign_folds(table, SplitConfig(kind="leave_region_out", bbox=(0.0, 0.0, 1.0, 1.0)))


def test_polygon_file(tmp_path, table):
    import geopandas as gpd
    from shapely.geometry import box

    path = tmp_path / "hold.geojson"
    gpd.GeoDataFrame(geometry=[box(4.30, 50.80, 4.375, 50.85)], crs="EPSG:4326").to_file(path)
    fold, _ = S.assign_folds(table, SplitConfig(kind="leave_region_out", polygon=str(path)))
    assert (fold == 0).sum() == ((table.lon <= 4.375) & (table.lat <= 50.85)).sum()


def test_inner_folds_are_blocked(table):
    blocks = S.grid_blocks(table.lon, table.lat, 1500)
    tr = np.arange(0, 600, 2)
    ids = S.inner_folds(tr, blocks, 3, seed=0)
    assert len(ids) == len(tr) and set(ids) == {0, 1, 2}
    for k in range(3):
        assert not set(blocks[tr][ids == k]) & set(blocks[tr][ids != k])
    rnd = S.inner_folds(tr, None, 4, seed=0)
    assert sorted(np.bincount(rnd).tolist()) == [75, 75, 75, 75]


def test_split_config_errors_name_the_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="exactly one of split.region_column"):
        SplitConfig(kind="leave_region_out")
    with pytest.raises(ValidationError, match="split.block_column"):
        SplitConfig(kind="spatial_block", block_method="column")
