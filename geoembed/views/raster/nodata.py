"""Checks of a raster's no-data value when a source is resolved (a raster view's sources, a region raster).

* :func:`check_nodata_override` - a configured ``nodata`` the band's data type cannot hold (-9999 or NaN
  for uint16, -1 or 300 for uint8, 1e39 for float32) is a ConfigError naming the source and band (no
  pixel could ever equal it); one that differs from the value the file declares is a warning naming
  both (the declared value is then data).
* :func:`warn_undeclared_fill` - a band without any nodata (none declared, none configured, no mask)
  whose pixels are, for a large share (:data:`FILL_FRACTION`), one value that files use to fill where
  there is no data: -9999, -32768, the most negative or positive value of a signed or float type; or
  0 or the largest value of an unsigned type when it also lines the raster's edges (a scene's frame).
  A warning names the value and the share and suggests ``nodata:``. Cheap: about :data:`CHECK_PIXELS`
  pixels per band, from overviews or evenly spread windows (:func:`_overview_or_mosaic`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from geoembed.errors import ConfigError
from geoembed.io.rasters import warn_once

__all__ = ["CHECK_PIXELS", "FILL_FRACTION", "check_nodata_override", "fill_candidates", "representable",
           "warn_undeclared_fill"]

log = logging.getLogger(__name__)

FILL_FRACTION = 0.05
CHECK_PIXELS = 512 * 512
_CONVENTIONAL = (-9999.0, -32768.0, -3.4028234663852886e38)


def representable(value: float, dtype) -> str | None:
    """Why a band of ``dtype`` cannot hold ``value`` (None when it can)."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        if math.isnan(value) or math.isinf(value):
            return f"an integer band cannot hold {value}"
        if value != math.floor(value):
            return "an integer band holds whole numbers only"
        info = np.iinfo(dt)
        if not info.min <= value <= info.max:
            return f"{dt.name} holds {info.min}..{info.max}"
        return None
    if dt.kind == "f" and math.isfinite(value):
        with np.errstate(over="ignore"):
            if not np.isfinite(dt.type(value)):
                return f"{dt.name} holds at most +-{float(np.finfo(dt).max):.7g}"
    return None


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:g}"


def check_nodata_override(ds, name: str, bands: Sequence[int], override: float | None, where: str) -> None:
    """Refuse an override the bands cannot hold (ConfigError naming ``where``, the source and the band);
    warn when it differs from the nodata a band declares."""
    if override is None:
        return
    for b in bands:
        why = representable(float(override), ds.dtypes[b - 1])
        if why:
            raise ConfigError(f"{where}: nodata {_fmt(float(override))} cannot occur in raster {name} band {b} "
                              f"({ds.dtypes[b - 1]}): {why}")
    differ = [b for b in bands if ds.nodatavals[b - 1] is not None
              and not _same(float(ds.nodatavals[b - 1]), float(override))]
    if differ:
        declared = sorted({_fmt(float(ds.nodatavals[b - 1])) for b in differ})
        warn_once(("nodata-override", name, _fmt(float(override))),
                  f"{where}: raster {name} band(s) {differ} declare nodata {', '.join(declared)} but the config "
                  f"says {_fmt(float(override))}; the config's value is used (pixels equal to "
                  f"{', '.join(declared)} count as data)", log)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def fill_candidates(dtype) -> list[tuple[float, bool]]:
    """Values files use as fill for ``dtype``, each with whether it needs the edge test (0 and the top
    of an unsigned type are also ordinary data)."""
    dt = np.dtype(dtype)
    out: list[tuple[float, bool]] = []
    if dt.kind == "u":
        out += [(0.0, True), (float(np.iinfo(dt).max), True)]
    elif dt.kind == "i":
        out += [(float(np.iinfo(dt).min), False), (float(np.iinfo(dt).max), False)]
    elif dt.kind == "f":
        out += [(float(np.finfo(dt).min), False), (float(np.finfo(dt).max), False)]
    for v in _CONVENTIONAL:
        if representable(v, dt) is None and all(v != c for c, _ in out):
            out.append((v, False))
    return out


def _overview_or_mosaic(ds, bands: list[int]) -> np.ndarray:
    """At most about CHECK_PIXELS pixels per band showing the whole raster, edges included: the raster
    itself when small, a decimated nearest read when it has overviews, else a mosaic of 8 x 8 windows
    of 64 x 64 pixels spread evenly from edge to edge (a decimated read of a large raster without
    overviews would decode all of it)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    h, w = ds.height, ds.width
    if h * w <= 4 * CHECK_PIXELS or ds.overviews(bands[0]):
        scale = max(1.0, math.sqrt(w * h / CHECK_PIXELS))
        shape = (len(bands), max(1, int(h / scale)), max(1, int(w / scale)))
        return ds.read(bands, out_shape=shape, resampling=Resampling.nearest)
    k, px = 8, 64
    ys = np.linspace(0, max(0, h - px), k).round().astype(int)
    xs = np.linspace(0, max(0, w - px), k).round().astype(int)
    rows = [np.concatenate([ds.read(bands, window=Window(int(x), int(y), min(px, w), min(px, h))) for x in xs], 2)
            for y in ys]
    return np.concatenate(rows, 1)


def warn_undeclared_fill(ds, name: str, bands: Sequence[int], override: float | None, where: str) -> None:
    """Warn (once per source and value) when bands that have no nodata at all look filled (see the module
    docstring)."""
    from rasterio.enums import MaskFlags

    if override is not None:
        return
    todo = [b for b in bands if ds.nodatavals[b - 1] is None
            and not ({MaskFlags.per_dataset, MaskFlags.alpha} & set(ds.mask_flag_enums[b - 1]))]
    if not todo:
        return
    try:
        arr = _overview_or_mosaic(ds, todo)
    except Exception as err:  # noqa: BLE001 - a check only: the read that matters reports errors itself
        log.debug("nodata check of %s skipped: %s", name, err)
        return
    found: dict[float, list[tuple[int, float]]] = {}
    for k, b in enumerate(todo):
        band = arr[k]
        edge = np.concatenate([band[0], band[-1], band[1:-1, 0], band[1:-1, -1]])
        for value, needs_edge in fill_candidates(band.dtype):
            frac = float(np.count_nonzero(band == value)) / band.size
            if frac < FILL_FRACTION:
                continue
            if needs_edge and np.count_nonzero(edge == value) < 0.5 * edge.size:
                continue
            found.setdefault(value, []).append((b, frac))
    for value, hits in found.items():
        share = max(f for _, f in hits)
        warn_once(("fill", name, value),
                  f"{where}: raster {name} band(s) {[b for b, _ in hits]} declare no nodata, but about {share:.0%} of "
                  f"the pixels are {_fmt(value)}, a usual fill value; if it marks no data, say so in the config "
                  f"(`nodata:` {_fmt(value)} for this raster)", log)
