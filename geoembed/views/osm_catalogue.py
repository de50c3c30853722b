"""The OSM tag-to-category catalogue: which tags make a feature a member of which category, and which
measures (count / length / area) each category aggregates.

The default catalogue (``osm_catalogue.yaml`` beside this module) holds the paper's six POI categories
(health, shops, tourism, food_and_drink, education, public_services, the channels of the hex tensor)
plus risk-relevant ones: emergency services, buildings (count and footprint area), roads by class
(length), water (length and area) and land-use / green shares (area).

YAML layout::

    version: 1
    categories:
      <name>:
        tags: {<key>: "*" | <value> | [<value>, ...], ...}   # any key matching is enough
        geometry: [point, line, polygon]                     # optional, default all
        measures: [count | length | area, ...]               # optional, default [count]
        hex: false                                           # channel of the H3 hex tensor?

``"*"`` matches any value except ``"no"``. Errors name the file and the offending key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geoembed.errors import ConfigError

DEFAULT_CATALOGUE = Path(__file__).with_name("osm_catalogue.yaml")
GEOMETRY_TYPES = ("point", "line", "polygon")
MEASURES = ("count", "length", "area")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Category(BaseModel):
    """One category: its tag filter, accepted geometry types, measures and hex flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tags: dict[str, str | list[str]] = Field(min_length=1)
    geometry: list[Literal["point", "line", "polygon"]] = Field(default_factory=lambda: list(GEOMETRY_TYPES),
                                                                 min_length=1)
    measures: list[Literal["count", "length", "area"]] = Field(default_factory=lambda: ["count"], min_length=1)
    hex: bool = False

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict) -> dict:
        out = {}
        for k, v in tags.items():
            vals = [v] if isinstance(v, str) else list(v)
            if not k or not vals or any(not isinstance(x, str) or not x for x in vals):
                raise ValueError(f"tag {k!r} needs a non-empty value or list of values")
            if "*" in vals and len(vals) > 1:
                raise ValueError(f"tag {k!r}: '*' cannot be combined with other values")
            out[k] = "*" if vals == ["*"] else vals
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Category:
        if "length" in self.measures and "line" not in self.geometry:
            raise ValueError("measure 'length' needs geometry 'line'")
        if "area" in self.measures and "polygon" not in self.geometry:
            raise ValueError("measure 'area' needs geometry 'polygon'")
        if len(set(self.measures)) != len(self.measures):
            raise ValueError(f"measures repeat: {self.measures}")
        return self


class Catalogue(BaseModel):
    """An ordered mapping of category name -> :class:`Category`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    categories: dict[str, Category] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _names(cls, cats: dict) -> dict:
        for name in cats:
            if not _NAME.match(name):
                raise ValueError(f"category name {name!r} must be lower-case letters, digits and '_'")
        return cats

    # ------------------------------------------------------------------ derived lists
    @property
    def names(self) -> list[str]:
        return list(self.categories)

    @property
    def hex_categories(self) -> list[str]:
        return [n for n, c in self.categories.items() if c.hex]

    def with_measure(self, measure: str) -> list[str]:
        """Names of categories that aggregate ``measure``, in catalogue order."""
        return [n for n, c in self.categories.items() if measure in c.measures]

    @property
    def keys(self) -> list[str]:
        """Every tag key the catalogue reads (sorted)."""
        return sorted({k for c in self.categories.values() for k in c.tags})

    def radius_feature_names(self, radii_m: list[float]) -> list[str]:
        """Names of the radius aggregates, radius-major: ``<cat>_count_r250``, ``<cat>_length_m_r250``,
        ``<cat>_area_m2_r250``, ``<cat>_share_r250``."""
        out = []
        for r in radii_m:
            rs = radius_label(r)
            for name, cat in self.categories.items():
                if "count" in cat.measures:
                    out.append(f"{name}_count_r{rs}")
                if "length" in cat.measures:
                    out.append(f"{name}_length_m_r{rs}")
                if "area" in cat.measures:
                    out += [f"{name}_area_m2_r{rs}", f"{name}_share_r{rs}"]
        return out

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    # ------------------------------------------------------------------ matching
    def match(self, tags: pd.DataFrame, gtype: np.ndarray) -> np.ndarray:
        """Boolean membership matrix (n_features, n_categories).

        ``tags`` has one column per tag key (missing keys count as absent; values are strings or
        null); ``gtype`` holds ``"point"``, ``"line"`` or ``"polygon"`` per feature.
        """
        n = len(tags)
        gtype = np.asarray(gtype)
        out = np.zeros((n, len(self.categories)), dtype=bool)
        cache: dict[str, pd.Series] = {}
        for j, cat in enumerate(self.categories.values()):
            hit = np.zeros(n, dtype=bool)
            for key, vals in cat.tags.items():
                if key not in tags.columns:
                    continue
                if key not in cache:
                    cache[key] = tags[key].astype("object").where(tags[key].notna(), None)
                col = cache[key]
                if vals == "*":
                    hit |= (col.notna() & (col != "no")).to_numpy(dtype=bool)
                else:
                    hit |= col.isin(vals).to_numpy(dtype=bool)
            out[:, j] = hit & np.isin(gtype, cat.geometry)
        return out


def radius_label(r: float) -> str:
    """``250.0 -> "250"``, ``12.5 -> "12p5"``: a radius as it appears in feature names."""
    return str(int(r)) if float(r).is_integer() else str(r).replace(".", "p")


def _format(err: ValidationError, origin: str) -> str:
    lines = [f"invalid OSM catalogue {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_catalogue(data: object, origin: str = "<dict>") -> Catalogue:
    """Validate a catalogue mapping; errors name ``origin`` and the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid OSM catalogue {origin}: the top level must be a mapping")
    try:
        return Catalogue.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, origin)) from None


def load_catalogue(path: str | os.PathLike | None = None) -> Catalogue:
    """Read a catalogue YAML (``None`` = the built-in default)."""
    p = Path(path) if path is not None else DEFAULT_CATALOGUE
    if not p.is_file():
        raise ConfigError(f"OSM catalogue file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"OSM catalogue {p} is not valid YAML: {err}") from None
    return parse_catalogue(data, str(p))
