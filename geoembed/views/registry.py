"""The view-kind registry: ``kind`` -> (config model, :class:`~geoembed.views.base.View`, default encoder).

A config's ``views`` entries are validated by the model their ``kind`` registered, ``geoembed build``
builds them with the registered View, and ``geoembed train`` encodes a store with the kind's default
encoder when the config says ``encoder: auto``. The built-in kinds (``raster``, ``osm``, ``embedding``)
register themselves below by ``"module:attribute"`` names, so that reading a config imports no view code
(a config with an ``embedding`` view imports that kind's module, which holds its settings); a
kind added from outside registers its classes directly::

    from geoembed.views.registry import register_view_kind
    register_view_kind("my_kind", config=MyViewConfig, view=MyView, encoder="mlp")

This module imports nothing from geoembed but :mod:`geoembed.errors` (the config layer imports it).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any

from geoembed.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "ViewKind", "register_view_kind", "view_kind", "view_kinds"]

#: Entry points of this group name modules that register view kinds (and their encoders) when imported.
ENTRY_POINT_GROUP = "geoembed.views"


def _load(ref: Any) -> Any:
    """A class given as itself or as ``"package.module:Name"`` (imported on first use)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class ViewKind:
    """One registered view kind. ``config`` and ``view`` may be ``"module:Name"`` strings until first used."""

    kind: str
    config: Any
    view: Any
    encoder: str

    @property
    def config_model(self) -> type:
        """The :class:`~geoembed.config.build.ViewConfig` subclass that validates this kind's settings."""
        self.config = _load(self.config)
        return self.config

    @property
    def view_class(self) -> type:
        """The :class:`~geoembed.views.base.View` subclass that builds this kind's stores."""
        self.view = _load(self.view)
        return self.view


_KINDS: dict[str, ViewKind] = {}


def register_view_kind(kind: str, *, config: type | str, view: type | str, encoder: str,
                       replace: bool = False) -> ViewKind:
    """Register a view kind: its config model, its View class and the name of its default encoder
    (one of :func:`geoembed.nn.views.encoder_names`, checked when a model is built).

    Registering a kind twice is an error unless ``replace`` is set. Returns the registry entry.
    """
    if not isinstance(kind, str) or not kind or not kind.replace("_", "").isalnum():
        raise ValueError(f"view kind {kind!r} must be a non-empty name of letters, digits and '_'")
    if kind in _KINDS and not replace:
        raise ValueError(f"view kind {kind!r} is already registered (pass replace=True to replace it)")
    for ref, what in ((config, "config"), (view, "view")):
        if isinstance(ref, str) and ":" not in ref:
            raise ValueError(f"view kind {kind!r}: {what} {ref!r} is not a class or a 'module:Name' string")
    entry = ViewKind(kind, config, view, str(encoder))
    _KINDS[kind] = entry
    return entry


_PLUGINS_LOCK = threading.RLock()
_plugins_loaded = False


def _load_plugins() -> None:
    """Import the modules named by ``geoembed.views`` entry points (once per process)."""
    global _plugins_loaded
    with _PLUGINS_LOCK:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as err:  # noqa: BLE001 - any failure of a plugin is named
                raise ConfigError(f"view kind plugin {ep.name!r} ({ep.value}, entry point group "
                                  f"{ENTRY_POINT_GROUP}) cannot be loaded: {err}") from err


def view_kinds() -> list[str]:
    """The registered view kinds (entry-point plugins included), sorted."""
    _load_plugins()
    return sorted(_KINDS)


def view_kind(kind: str) -> ViewKind:
    """The registry entry of ``kind``; a ConfigError listing the registered kinds when there is none."""
    entry = _KINDS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        _load_plugins()
        entry = _KINDS.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise ConfigError(f"unknown view kind {kind!r} (registered kinds: {', '.join(view_kinds())})")
    return entry


# The built-in kinds (by name: nothing is imported until a config or a build needs it).
register_view_kind("raster", config="geoembed.config.build:RasterViewConfig",
                   view="geoembed.views.raster:RasterView", encoder="cnn")
register_view_kind("osm", config="geoembed.config.build:OsmViewConfig",
                   view="geoembed.views.osm:OsmView", encoder="hex")
register_view_kind("embedding", config="geoembed.views.embedding:EmbeddingViewConfig",
                   view="geoembed.views.embedding:EmbeddingView", encoder="embedding")
