"""The schema of a bundle's ``geoembed.json``: every field checked for type and range.

:func:`validate_meta` runs on every :func:`geoembed.io.bundle.load_bundle` (and on what
:func:`~geoembed.io.bundle.save_bundle` is about to write), before anything is built. Errors are
InputError naming the file and the key path, e.g. ``bundle runs/x/bundle/geoembed.json: embedding_dim:
expected a positive integer, got "8"``. Nothing is coerced: a text ``"8"`` is not ``8``.

Fields (schema version 2; version 1, before the seal, is read as well):

============================  ===============================================================
``schema_version``            integer, 1 (no seal) or 2
``encoder``                   the coordinate-encoder spec, checked by the code that builds it
                              (:func:`geoembed.nn.networks.check_coordinate_spec`)
``coordinate_order``          ``["lon", "lat"]``
``crs``                       ``"EPSG:4326"``
``embedding_dim``             positive integer: the encoder's ``embedding_dim``, or the
                              reduction's ``n_components`` when the bundle has one
``raw_embedding_dim``         with a reduction only: the encoder's ``embedding_dim``
``footprint``                 GeoJSON Polygon or MultiPolygon in lon/lat degrees, valid, non-empty
``normalisation``             the encodings' data-dependent constants (:func:`normalisation`)
``data_fingerprint``          string
``package_version``           string
``out_of_support_km``         finite number >= 0 (0: any distance from the footprint is outside;
                              global imported encoders have a whole-Earth footprint)
``model_card``                optional: :func:`validate_card`
``reduction``                 optional: method, n_components, raw_embedding_dim, n_samples,
                              explained_variance_ratio, info
``seal``                      schema 2: hashes of the fields and of the weights (:mod:`geoembed.io.seal`)
============================  ===============================================================
"""

from __future__ import annotations

import json
import math
from typing import Any

from geoembed.errors import ConfigError, InputError
from geoembed.nn.specs import describe_value

__all__ = ["CARD_FIELDS", "SCHEMA_VERSION", "SUPPORTED_SCHEMAS", "normalisation", "validate_card",
           "validate_meta"]

#: The schema written now (2: sealed); :data:`SUPPORTED_SCHEMAS` are read.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMAS = (1, 2)
#: Fields every model card has (others may follow).
CARD_FIELDS = ("source", "version", "licence", "training_data", "output_dim", "effective_resolution")
_REQUIRED_V1 = ("schema_version", "encoder", "coordinate_order", "embedding_dim", "footprint", "out_of_support_km")
_REQUIRED = (*_REQUIRED_V1, "crs", "normalisation", "data_fingerprint", "package_version", "seal")
_OPTIONAL = ("raw_embedding_dim", "model_card", "reduction")
_REDUCTION_KEYS = ("method", "n_components", "raw_embedding_dim", "n_samples", "explained_variance_ratio", "info")


class _Bad(Exception):
    """A field problem: ``key`` (a path) and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def _int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise _Bad(key, f"expected {kind}, got {describe_value(value)}")
    return value


def _number(value: Any, key: str, minimum: float = 0.0) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and value >= minimum
    except OverflowError:
        ok = False
    if not ok:
        raise _Bad(key, f"expected a finite number >= {minimum:g}, got {describe_value(value)}")
    return float(value)


def _object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(key, f"expected a JSON object, got {describe_value(value)}")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Bad(key, f"expected a string, got {describe_value(value)}")
    return value


def normalisation(spec: dict) -> dict:
    """The data-dependent constants of the encodings (also inside ``spec``), listed for readers."""
    out: dict[str, Any] = {}
    for i, enc in enumerate(spec.get("encodings", [])):
        if enc.get("type") == "local_multiscale":
            out[f"encoding_{i}"] = {
                "projection": "azimuthal_equidistant (spherical, R=6371008.8 m)",
                "center_lon": enc["center_lon"],
                "center_lat": enc["center_lat"],
                "min_wavelength_m": enc["min_wavelength_m"],
                "max_wavelength_m": enc["max_wavelength_m"],
                "xy_scale_m": enc["max_wavelength_m"],
            }
        elif enc.get("type") == "spherical_harmonics":
            out[f"encoding_{i}"] = {"polar_angle": "90 - lat (degrees)", "azimuth": "lon (degrees)"}
    return out


def validate_card(card: Any, origin: str = "model card") -> dict:
    """A model card as plain JSON: a mapping with every :data:`CARD_FIELDS` entry filled in
    (``output_dim`` a positive integer). Raises InputError naming ``origin`` and the field."""
    if not isinstance(card, dict):
        raise InputError(f"{origin} must be a mapping of fields, got {type(card).__name__}")
    try:
        card = json.loads(json.dumps(card, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise InputError(f"{origin} is not plain JSON data: {err}") from None
    for key in CARD_FIELDS:
        value = card.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InputError(f"{origin} lacks the field {key!r} (a card has {', '.join(CARD_FIELDS)})")
    if isinstance(card["output_dim"], bool) or not isinstance(card["output_dim"], int) or card["output_dim"] < 1:
        raise InputError(f"{origin}: output_dim must be a positive integer, got {card['output_dim']!r}")
    return card


def _footprint(value: Any) -> None:
    """A GeoJSON Polygon/MultiPolygon of closed rings of [lon, lat] positions; valid and not empty."""
    import shapely
    import shapely.geometry
    import shapely.validation

    fp = _object(value, "footprint")
    kind = fp.get("type")
    if kind not in ("Polygon", "MultiPolygon"):
        raise _Bad("footprint.type", f"expected \"Polygon\" or \"MultiPolygon\", got {describe_value(kind)}")
    extra = sorted(set(fp) - {"type", "coordinates", "bbox"})
    if extra:
        raise _Bad(f"footprint.{extra[0]}", "unknown key of a GeoJSON polygon")
    coords = fp.get("coordinates")
    polygons = [coords] if kind == "Polygon" else coords
    base = "footprint.coordinates"
    if not isinstance(polygons, list) or not polygons:
        raise _Bad(base, f"expected a non-empty list, got {describe_value(coords)}")
    for p, rings in enumerate(polygons):
        at = base if kind == "Polygon" else f"{base}[{p}]"
        if not isinstance(rings, list) or not rings:
            raise _Bad(at, f"expected a non-empty list of rings, got {describe_value(rings)}")
        for r, ring in enumerate(rings):
            if not isinstance(ring, list) or len(ring) < 4:
                raise _Bad(f"{at}[{r}]", f"expected a ring of at least 4 [lon, lat] positions, got "
                                         f"{describe_value(ring)}")
            for i, pos in enumerate(ring):
                if not (isinstance(pos, list) and len(pos) == 2
                        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos)
                        and all(math.isfinite(v) for v in pos)):
                    raise _Bad(f"{at}[{r}][{i}]", f"expected a [lon, lat] pair of finite numbers, got "
                                                  f"{describe_value(pos)}")
                if not (-180 - 1e-9 <= pos[0] <= 180 + 1e-9 and -90 - 1e-9 <= pos[1] <= 90 + 1e-9):
                    raise _Bad(f"{at}[{r}][{i}]", f"{describe_value(pos)} is not [lon, lat] in degrees "
                                                  f"(lon -180..180, lat -90..90)")
            if ring[0] != ring[-1]:
                raise _Bad(f"{at}[{r}]", "the ring is not closed (its first and last positions differ)")
    geom = shapely.geometry.shape(fp)
    if not geom.is_valid:
        raise _Bad("footprint", f"not a valid polygon: {shapely.validation.explain_validity(geom)}")
    if geom.is_empty or not geom.area > 0:
        raise _Bad("footprint", "the polygon covers no area")


def _reduction(red: Any, k: int, raw: int) -> None:
    from geoembed.io.reduction import METHODS

    red = _object(red, "reduction")
    for key in red:
        if key not in _REDUCTION_KEYS:
            raise _Bad(f"reduction.{key}", f"unknown key (a reduction has {', '.join(_REDUCTION_KEYS)})")
    for key in ("method", "n_components", "raw_embedding_dim"):
        if key not in red:
            raise _Bad(f"reduction.{key}", "missing")
    if red["method"] not in METHODS:
        raise _Bad("reduction.method", f"expected one of {', '.join(METHODS)}, got {describe_value(red['method'])}")
    if _int(red["n_components"], "reduction.n_components") != k:
        raise _Bad("reduction.n_components", f"{red['n_components']} is not the bundle's embedding_dim {k}")
    if _int(red["raw_embedding_dim"], "reduction.raw_embedding_dim") != raw:
        raise _Bad("reduction.raw_embedding_dim", f"{red['raw_embedding_dim']} is not the encoder's "
                                                  f"embedding_dim {raw}")
    if k > raw:
        raise _Bad("reduction.n_components", f"{k} components of a {raw}-dimensional encoder")
    _int(red.get("n_samples", 0), "reduction.n_samples", minimum=0)
    ratio = red.get("explained_variance_ratio")
    if ratio is not None:
        if not isinstance(ratio, list) or len(ratio) != k:
            raise _Bad("reduction.explained_variance_ratio", f"expected null or a list of {k} numbers, got "
                                                             f"{describe_value(ratio)}")
        for i, v in enumerate(ratio):
            _number(v, f"reduction.explained_variance_ratio[{i}]")
    _object(red.get("info", {}), "reduction.info")


def _check(meta: Any) -> None:
    from geoembed.nn.networks import check_coordinate_spec
    from geoembed.nn.specs import SpecError

    if not isinstance(meta, dict):
        raise _Bad("(top level)", f"expected a JSON object, got {describe_value(meta)}")
    if "schema_version" not in meta:
        raise _Bad("schema_version", "missing: this is not a geoembed bundle file")
    version = meta["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Bad("schema_version", f"expected an integer, got {describe_value(version)}")
    if version not in SUPPORTED_SCHEMAS:
        raise _Bad("schema_version", f"bundle schema {version} is not one this geoembed reads "
                                     f"({', '.join(map(str, SUPPORTED_SCHEMAS))}); a newer geoembed wrote it?")
    known = (*_REQUIRED, *_OPTIONAL)
    for key in meta:
        if key not in known:
            raise _Bad(str(key), f"unknown key (a bundle has {', '.join(known)})")
    for key in _REQUIRED if version >= 2 else _REQUIRED_V1:
        if key not in meta and key != "seal":  # a missing seal: geoembed.io.seal.verify_seal says more
            raise _Bad(key, "missing")
    try:
        check_coordinate_spec(meta["encoder"])
    except SpecError as err:
        raise _Bad(f"encoder.{err.key}" if err.key else "encoder", err.problem) from None
    except ConfigError as err:  # pragma: no cover - check_coordinate_spec raises SpecError
        raise _Bad("encoder", str(err)) from None
    raw = meta["encoder"]["embedding_dim"]
    if meta["coordinate_order"] != ["lon", "lat"]:
        raise _Bad("coordinate_order", f"expected [\"lon\", \"lat\"], got {describe_value(meta['coordinate_order'])}")
    if "crs" in meta and meta["crs"] != "EPSG:4326":
        raise _Bad("crs", f"expected \"EPSG:4326\", got {describe_value(meta['crs'])}")
    k = _int(meta["embedding_dim"], "embedding_dim")
    red = meta.get("reduction")
    if red is None:
        if "raw_embedding_dim" in meta:
            raise _Bad("raw_embedding_dim", "set, but the bundle has no reduction")
        if k != raw:
            raise _Bad("embedding_dim", f"{k} is not the encoder's output dimension {raw} (encoder.embedding_dim)")
    else:
        _object(red, "reduction")
        if "raw_embedding_dim" not in meta:
            raise _Bad("raw_embedding_dim", "missing (the bundle has a reduction)")
        if _int(meta["raw_embedding_dim"], "raw_embedding_dim") != raw:
            raise _Bad("raw_embedding_dim", f"{meta['raw_embedding_dim']} is not the encoder's output dimension "
                                            f"{raw} (encoder.embedding_dim)")
        _reduction(red, k, raw)
    _footprint(meta["footprint"])
    _number(meta["out_of_support_km"], "out_of_support_km")
    if "normalisation" in meta and _object(meta["normalisation"], "normalisation") != normalisation(meta["encoder"]):
        raise _Bad("normalisation", "does not match the encoder spec's constants (encoder.encodings)")
    for key in ("data_fingerprint", "package_version"):
        if key in meta:
            _string(meta[key], key)
    card = meta.get("model_card")
    if card is not None:
        try:
            card = validate_card(card, origin="model_card")
        except InputError as err:
            raise _Bad("model_card", str(err).removeprefix("model_card").lstrip(": ")) from None
        if card["output_dim"] != raw:
            raise _Bad("model_card.output_dim", f"{card['output_dim']} is not the encoder's output dimension {raw}")


def validate_meta(meta: Any, origin: str) -> None:
    """Check a parsed ``geoembed.json`` (see the module docstring); InputError ``"{origin}: {key}: ..."``.
    The seal itself is checked by :func:`geoembed.io.seal.verify_seal`."""
    try:
        _check(meta)
    except _Bad as bad:
        raise InputError(f"{origin}: {bad.key}: {bad.problem}") from None
