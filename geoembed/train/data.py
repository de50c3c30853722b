"""Training data: locations and their views in memory, row-aligned, normalised, and split for validation.

:func:`load_training_data` reads ``<workdir>/locations.parquet`` and each configured view store
``<workdir>/views/<name>/`` (checked row-aligned by ``location_id``), scales every array per channel
(``train.views[].scale``: standardised by the store's statistics, or divided by fixed divisors as the
reference does; no data becomes 0 afterwards; the per-row ``valid`` flag says which rows carry a view at
all), and for ``resnet18_frozen`` views replaces the chips by frozen backbone features computed once and
cached under ``<workdir>/cache/``. :func:`spatial_split` holds out whole spatial blocks for validation,
:func:`random_split` a random share of locations (the reference's split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geoembed.config import Config
from geoembed.config.train import ViewEncoderConfig
from geoembed.errors import ConfigError, InputError
from geoembed.geo import grid_blocks
from geoembed.io.atomic import atomic_path
from geoembed.io.fingerprint import file_fingerprint, text_fingerprint
from geoembed.nn.views import backbone_features, load_resnet18

log = logging.getLogger(__name__)

__all__ = ["TrainData", "ViewData", "batch_inputs", "load_training_data", "normalise_array", "random_split",
           "spatial_split", "view_configs"]


@dataclass
class ViewData:
    """One view in memory: normalised arrays (missing values = 0) and the per-row valid flag."""

    name: str
    arrays: dict[str, torch.Tensor]
    valid: torch.Tensor
    fingerprint: str
    kind: str | None = None  # the store's view kind (its default encoder serves ``encoder: auto``)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.arrays.items()}


@dataclass
class TrainData:
    """Locations and views, row-aligned."""

    lon: torch.Tensor  # float64 degrees
    lat: torch.Tensor
    block_id: np.ndarray
    views: dict[str, ViewData]
    fingerprint: str
    location_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lon_dev: torch.Tensor | None = None  # copies on the training device (set by train())
    lat_dev: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.lon.shape[0])


def normalise_array(arr: np.ndarray, stats: dict | None, log1p: bool = False, *,
                    scale: str = "standardise", divide_by: float | list[float] | str | None = None,
                    where: str = "divide_by", copy: bool = True) -> np.ndarray:
    """Per-channel (axis 1) scaling; NaN (no data) becomes 0 afterwards.

    ``scale="standardise"``: by the store's stats (mean, std), or the data's own moments after ``log1p``.
    ``scale="divide"``: divided by ``divide_by``: one number, one per channel, or ``"max"`` (each
    channel's largest absolute value over all rows; 1 where that is 0). ``where`` names the setting in
    errors. ``copy=False`` lets a float32 ``arr`` that nothing else uses be scaled in place (no second
    array of the chips' size).
    """
    x = np.array(arr, dtype=np.float32, copy=copy or None)  # the arithmetic below is in place
    if scale == "divide":
        return _divide(np.sign(x) * np.log1p(np.abs(x)) if log1p else x, divide_by, where)
    if scale != "standardise":
        raise ConfigError(f"unknown input scaling {scale!r} (use standardise or divide)")
    if log1p:
        x = np.sign(x) * np.log1p(np.abs(x))
        mean, std = _moments(x)
    elif stats:
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    else:
        mean, std = _moments(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if x.ndim == 1:
        x, shape = x[:, None], (1, -1)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    x -= mean.reshape(shape)  # float32, as std: the arithmetic stays in float32
    x /= std.reshape(shape)
    return _zero_non_finite(x)


def _zero_non_finite(x: np.ndarray) -> np.ndarray:
    """NaN and infinities set to 0, in place (one pass: far faster than ``np.nan_to_num`` on chip arrays)."""
    x[~np.isfinite(x)] = 0.0
    return x


def _divide(x: np.ndarray, divide_by: float | list[float] | str | None, where: str) -> np.ndarray:
    channels = x.shape[1] if x.ndim > 1 else 1
    if isinstance(divide_by, str):
        if divide_by != "max":
            raise ConfigError(f"{where}: {divide_by!r} is no divisor (use a number, a list, or max)")
        flat = np.moveaxis(x if x.ndim > 1 else x[:, None], 1, 0).reshape(channels, -1)
        with np.errstate(all="ignore"):
            peak = np.nan_to_num(np.nanmax(np.abs(flat), axis=1)) if flat.size else np.zeros(channels)
        div = np.where(peak > 0, peak, 1.0)
    elif isinstance(divide_by, list | tuple):
        if len(divide_by) != channels:
            raise ConfigError(f"{where}: {len(divide_by)} divisors for an array of {channels} channels")
        div = np.asarray(divide_by, dtype=np.float64)
    elif divide_by is not None:
        div = np.full(channels, float(divide_by))
    else:
        raise ConfigError(f"{where}: scale divide needs divisors")
    if not np.all(div > 0):
        raise ConfigError(f"{where}: divisors must be positive, got {div.tolist()}")
    shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else (-1,)
    x /= div.astype(np.float32).reshape(shape)
    return _zero_non_finite(x)


def _scaling(vc: ViewEncoderConfig) -> dict:
    """The view's input scaling as keyword arguments of :func:`normalise_array`."""
    return {"scale": vc.scale, "divide_by": vc.divide_by, "where": f"train.views[{vc.view}].divide_by"}


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(x if x.ndim > 1 else x[:, None], 1, 0).reshape((x.shape[1] if x.ndim > 1 else 1), -1)
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.nanmean(flat, 1)), np.nan_to_num(np.nanstd(flat, 1), nan=1.0)


def _load_view(workdir: Path, vc: ViewEncoderConfig, location_ids: np.ndarray, device: str) -> ViewData:
    from geoembed.io.viewstore import ViewStore

    path = workdir / "views" / vc.view
    if not path.exists():
        raise InputError(f"view {vc.view!r}: store {path} does not exist (run `geoembed build` first?)")
    store = ViewStore.open(path)
    if store.n_rows != len(location_ids):
        raise InputError(f"view store {path} has {store.n_rows} rows but locations.parquet has "
                         f"{len(location_ids)}: rebuild the views")
    ids = store.read("location_id")
    if not np.array_equal(ids, location_ids):
        bad = int(np.flatnonzero(ids != location_ids)[0])
        raise InputError(f"view store {path}: row {bad} holds location_id {ids[bad]}, locations.parquet "
                         f"has {location_ids[bad]}: rebuild the views")
    names = vc.arrays or list(store.arrays)
    unknown = [n for n in names if n not in store.arrays]
    if unknown:
        raise ConfigError(f"train.views[{vc.view}].arrays: store {path} has no array(s) {unknown} "
                          f"(has {sorted(store.arrays)})")
    valid = store.read("valid").astype(bool)
    arrays: dict[str, torch.Tensor] = {}
    fp_parts = {"store": store.meta.get("build_fingerprint"), "arrays": names, "log1p": vc.log1p}
    if vc.scale != "standardise":  # only then: the fingerprints of standardised views stay as they were
        fp_parts["scale"] = {"scale": vc.scale, "divide_by": vc.divide_by}
    if vc.encoder == "resnet18_frozen":
        if len(names) != 1 or len(store.arrays[names[0]].shape) != 3:
            raise ConfigError(f"train.views[{vc.view}]: resnet18_frozen needs exactly one (C, H, W) array")
        arrays["features"] = torch.from_numpy(_frozen_features(workdir, vc, store, names[0], device))
        fp_parts["backbone"] = file_fingerprint(vc.backbone_weights)
    else:
        for name in names:
            arrays[name] = torch.from_numpy(
                normalise_array(store.read(name), store.stats.get(name), log1p=vc.log1p, copy=False,
                                **_scaling(vc)))
    return ViewData(vc.view, arrays, torch.from_numpy(valid), text_fingerprint(fp_parts), store.meta.get("kind"))


def _frozen_features(workdir: Path, vc: ViewEncoderConfig, store, array: str, device: str) -> np.ndarray:
    """Backbone features of every row, computed once in eval mode and cached as safetensors."""
    from safetensors.numpy import load_file, save_file

    parts = {"store": store.meta.get("build_fingerprint"), "weights": file_fingerprint(vc.backbone_weights),
             "bands": vc.backbone_bands, "size": vc.backbone_input_size, "array": array}
    if vc.scale != "standardise":  # only then: caches of standardised chips keep their names
        parts["scale"] = {"scale": vc.scale, "divide_by": vc.divide_by}
    key = text_fingerprint(parts)
    cache = workdir / "cache" / f"{vc.view}-resnet18-{key.split(':')[1][:16]}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["features"]
    model = load_resnet18(vc.backbone_weights)
    chips = store.read(array)
    nchan = chips.shape[1]
    if max(vc.backbone_bands) >= nchan:
        raise ConfigError(f"train.views[{vc.view}].backbone_bands {vc.backbone_bands}: chips have {nchan} channels")
    x = normalise_array(chips, store.stats.get(array), copy=False, **_scaling(vc))
    log.info("computing frozen ResNet-18 features of %d chips of view %s", len(x), vc.view)
    feats = backbone_features(model, x, bands=vc.backbone_bands, input_size=vc.backbone_input_size,
                              device=device)
    with atomic_path(cache, suffix=".safetensors") as tmp:
        save_file({"features": np.ascontiguousarray(feats, dtype=np.float32)}, str(tmp))
    return feats


def view_configs(cfg: Config) -> list[ViewEncoderConfig]:
    """The views to train on: ``train.views``, else every view of the config (or, without any, every
    complete store under ``<workdir>/views``) with the default encoder settings."""
    tc = cfg.train
    if tc.views:
        return list(tc.views)
    names = [v.name for v in cfg.views]
    if not names:
        vdir = cfg.workdir_path / "views"
        names = sorted(p.name for p in vdir.iterdir() if (p / "meta.json").is_file()) if vdir.is_dir() else []
    if not names:
        raise ConfigError("train: no views configured and none found under "
                          f"{cfg.workdir_path / 'views'}; list them in train.views")
    return [ViewEncoderConfig(view=n) for n in names]


def load_training_data(cfg: Config, device: str = "cpu") -> TrainData:
    """Read ``locations.parquet`` and the configured views of ``cfg.workdir`` (checked row-aligned)."""
    from geoembed.io.locations import read_locations

    workdir = cfg.workdir_path
    loc_path = workdir / "locations.parquet"
    locs = read_locations(loc_path)
    lon = locs["lon"].to_numpy(np.float64)
    lat = locs["lat"].to_numpy(np.float64)
    ids = locs["location_id"].to_numpy(np.int64)
    if "block_id" in locs.columns:
        blocks = locs["block_id"].to_numpy(np.int64)
    else:
        blocks = grid_blocks(lon, lat, cfg.train.block_size_m)
    views = {vc.view: _load_view(workdir, vc, ids, device) for vc in view_configs(cfg)}
    fp = text_fingerprint({"locations": file_fingerprint(loc_path),
                           "views": {k: v.fingerprint for k, v in views.items()}})
    return TrainData(torch.from_numpy(lon.copy()), torch.from_numpy(lat.copy()), blocks, views, fp, ids)


def spatial_split(block_id: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole spatial blocks (random block order) until ``val_fraction`` of rows is reached."""
    blocks, counts = np.unique(block_id, return_counts=True)
    if len(blocks) < 2:
        raise InputError("locations have a single spatial block: cannot hold out blocks for validation "
                         "(use a smaller block size)")
    order = np.random.default_rng(seed).permutation(len(blocks))
    target = val_fraction * len(block_id)
    cum = np.cumsum(counts[order])
    k = int(np.searchsorted(cum, target) + 1)
    k = min(max(k, 1), len(blocks) - 1)
    val_blocks = blocks[order[:k]]
    is_val = np.isin(block_id, val_blocks)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a random ``val_fraction`` of the ``n`` rows (rounded; at least 1, and at least 2 rows
    left for training), drawn with ``numpy.random.default_rng(seed)``; both index arrays sorted."""
    if n < 3:
        raise InputError(f"{n} locations are too few for a random validation split")
    k = min(max(int(round(val_fraction * n)), 1), n - 2)
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:k]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def batch_inputs(idx: torch.Tensor, dev_views: dict[str, tuple[dict[str, torch.Tensor], torch.Tensor]]
                 ) -> tuple[dict, dict]:
    """Rows ``idx`` of every view already on the device: ``({view: {array: x}}, {view: valid})``."""
    inputs = {n: {k: a.index_select(0, idx) for k, a in arrs.items()} for n, (arrs, _) in dev_views.items()}
    valid = {n: v.index_select(0, idx) for n, (_, v) in dev_views.items()}
    return inputs, valid
