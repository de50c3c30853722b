"""Validated configuration: YAML in, pydantic models (unknown keys are errors), resolved YAML out.

A config file holds the sections a command needs; ``geoembed build`` needs ``locations`` and ``views``,
``geoembed train`` needs ``views`` and ``train``, ``geoembed evaluate`` needs ``evaluate``;
``geoembed run`` runs each stage whose sections are there (``enrich`` is its own).
Relative paths in a config are resolved against the config file's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from geoembed.config.base import Section
from geoembed.config.build import (
    AnyViewConfig,
    DaskConfig,
    LocationsConfig,
    OsmViewConfig,
    RasterViewConfig,
    RegionConfig,
    ViewConfig,
    WeightConfig,
)
from geoembed.config.enrich import EnrichConfig
from geoembed.config.evaluate import EvaluateConfig
from geoembed.config.train import TrainConfig
from geoembed.errors import ConfigError
from geoembed.io import gdalnames

__all__ = [
    "Config",
    "add_settings_argument",
    "apply_settings",
    "DaskConfig",
    "EnrichConfig",
    "EvaluateConfig",
    "LocationsConfig",
    "OsmViewConfig",
    "RasterViewConfig",
    "RegionConfig",
    "TrainConfig",
    "ViewConfig",
    "WeightConfig",
    "load_config",
    "parse_config",
    "save_resolved",
]


class Config(Section):
    """A whole geoembed run. ``workdir`` holds every artefact the run writes."""

    workdir: str = "runs/default"
    seed: int = 0
    dask: DaskConfig = Field(default_factory=DaskConfig)
    locations: LocationsConfig | None = None
    views: list[AnyViewConfig] = Field(default_factory=list)
    train: TrainConfig | None = None
    enrich: EnrichConfig | None = None
    evaluate: EvaluateConfig | None = None

    @field_validator("views")
    @classmethod
    def _unique_names(cls, views: list) -> list:
        names = [v.name for v in views]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"view names must be unique; repeated: {dup}")
        for n in names:
            if not n or not n.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"view name {n!r} must be letters, digits, '_' or '-'")
        return views

    def view(self, name: str) -> ViewConfig:
        for v in self.views:
            if v.name == name:
                return v
        raise ConfigError(f"no view named {name!r} in config (views: {[v.name for v in self.views]})")

    def require(self, *sections: str) -> None:
        """Raise a ConfigError unless every named section is present (non-empty)."""
        missing = [s for s in sections if not getattr(self, s)]
        if missing:
            raise ConfigError(f"config is missing section(s) {missing} needed by this command")

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)


_PATH_KEYS = frozenset({"polygon", "raster", "points", "source", "sources", "catalogue", "coverage", "workdir",
              "table", "bundle", "weights_file", "backbone_weights", "output", "input",
              "weight_raster"})
# keys naming rasters: GDAL dataset names there (subdatasets, /vsizip/ members) keep their form
_RASTER_KEYS = frozenset({"raster", "sources", "coverage", "weight_raster"})


def _resolve_paths(node: Any, base: Path, key: str | None = None, keys: frozenset[str] = _PATH_KEYS) -> Any:
    """Make relative file paths absolute against the config file's folder (in a view, also the fields
    its kind lists in ``path_fields``). In raster keys, only the file path inside a GDAL dataset name
    is (``NETCDF:"data/x.nc":t2m``, ``/vsizip/data/a.zip/b.tif``; see :mod:`geoembed.io.gdalnames`)."""
    if isinstance(node, dict):
        return {k: _resolve_paths(v, base, k, keys) for k, v in node.items()}
    if isinstance(node, list):
        if key == "views":
            return [_resolve_paths(v, base, None, _view_path_keys(v)) for v in node]
        return [_resolve_paths(v, base, key, keys) for v in node]
    if key in keys and isinstance(node, str):
        if key in _RASTER_KEYS:
            return gdalnames.absolute(node, base)
        if "://" not in node and not os.path.isabs(node):
            return str((base / node).resolve())
    return node


def _view_path_keys(view: Any) -> frozenset[str]:
    from geoembed.views.registry import view_kind

    try:
        return _PATH_KEYS | frozenset(view_kind(view.get("kind")).config_model.path_fields)
    except (AttributeError, ConfigError):  # not a mapping, or an unknown kind: validation says so
        return _PATH_KEYS


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden"
                     else f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict, origin: str = "<dict>", base: Path | None = None) -> Config:
    """Validate a config mapping; relative paths are resolved against ``base`` when given."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {origin}: the top level must be a mapping, got {type(data).__name__}")
    if base is not None:
        data = _resolve_paths(data, base)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats: ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3`` and
    PyYAML reads ``1e-3`` as text), so strict types do not refuse a learning rate written the usual way."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str):
    """Parse YAML text as configs are parsed (safe loader, YAML 1.2 floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def load_config(path: str | os.PathLike, overrides: dict | None = None,
                settings: list[str] | tuple[str, ...] = ()) -> Config:
    """Read and validate a YAML config file; paths in it are relative to the file's folder.
    ``overrides`` replaces top-level sections; ``settings`` are ``KEY=VALUE`` strings (``--set``, see
    :func:`apply_settings`) applied after them: a relative path given there is relative to the current
    folder, as a path typed on a command line is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = read_yaml(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
    if overrides:
        data = {**data, **overrides}
    base = p.resolve().parent
    if settings:  # the file's paths are relative to the file, those given with --set to the current folder
        data = apply_settings(_resolve_paths(data, base), settings)
        base = Path.cwd()
    origin = str(p) + "".join(f" --set {s}" for s in settings)
    return parse_config(data, origin=origin, base=base)


def apply_settings(data: dict, settings: list[str] | tuple[str, ...]) -> dict:
    """A copy of the config mapping ``data`` with ``KEY=VALUE`` settings applied: ``KEY`` is a dotted path
    (``train.ensemble``; a number indexes a list: ``train.views.0.out_dim``), ``VALUE`` is read as YAML
    (``[1, 2]``, ``{type: mlp}``, ``null``). Missing mappings on the path are created; whether the key
    exists is checked when the config is validated."""
    import copy

    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not k for k in key.split(".")):
            raise ConfigError(f"--set {item!r}: give KEY=VALUE with a dotted key, e.g. --set train.ensemble=4")
        try:
            value = read_yaml(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: the value {text!r} is not valid YAML: {err}") from None
        node: Any = out
        parts = key.split(".")
        for depth, k in enumerate(parts):
            where = ".".join(parts[:depth]) or "the config"
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is a list of {len(node)}; {k!r} is not an index of it")
                if last:
                    node[int(k)] = value
                else:
                    node = node[int(k)]
            elif isinstance(node, dict):
                if last:
                    node[k] = value
                else:
                    if node.get(k) is None:  # absent, or a section left empty (``train:``)
                        node[k] = {}
                    node = node[k]
            else:
                raise ConfigError(f"--set {key}: {where} is a value ({node!r}), not a section")
    return out


def add_settings_argument(parser) -> None:
    """``--set KEY=VALUE`` (repeatable) on a command that reads a config (:func:`apply_settings`)."""
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the config, e.g. --set train.ensemble=4 (the value is YAML; "
                             "repeatable)")


def save_resolved(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the fully resolved config (defaults filled in) as YAML, atomically."""
    from geoembed.io.atomic import atomic_write_text

    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return atomic_write_text(Path(path), text)
