"""Where a raster has data: the valid-data area that ``region: raster`` samples and coverage filters by.

A point lies in a raster's area (:meth:`RasterArea.contains`) when it is inside the raster's footprint
and on a pixel where every band (all but an alpha band, as a raster view reads them) holds data: not
NaN or infinite, not the nodata value (the config's override, else the file's), not 0 in the dataset
mask or alpha band where no nodata is declared. A raster framed by no data (a rotated scene, a
country's DEM) thus has the shape of its data, not of its rectangle.

How it is computed, vectorised: the validity of a coarse grid of at most :data:`MAX_CELLS` cells (a
nearest-neighbour decimated read of the bands and masks; the pixels themselves when the raster has
no more pixels than that) gives the share of pixels with data and rules out points far from any
data; a point on or next to a coarse cell with data is then checked on its own pixel, read in small
windows grouped by :func:`~geoembed.views.raster.reading.plan_windows`. An integer raster with no
nodata, no mask and no alpha band is valid everywhere in its footprint and is not read at all.
Results depend only on the raster and the points, never on the other points of a call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from geoembed.errors import InputError
from geoembed.io.rasters import open_raster, raster_crs, raster_footprint
from geoembed.views.raster.geometry import lonlat_to_pixel
from geoembed.views.raster.nodata import check_nodata_override, warn_undeclared_fill
from geoembed.views.raster.reading import plan_windows, read_window
from geoembed.views.raster.sources import band_nodata, default_bands

__all__ = ["MAX_CELLS", "RasterArea", "RasterOptions", "raster_area"]

MAX_CELLS = 1 << 22
_WINDOW_PX = 1 << 16


class RasterOptions(NamedTuple):
    """The config's overrides for a raster: its CRS and nodata value (None: the file's), and where the
    config sets them (for messages, e.g. ``view dem: source 0``)."""

    crs: str | None = None
    nodata: float | None = None
    origin: str | None = None


@dataclass
class RasterArea:
    """The valid-data area of a raster (see the module docstring); ``fraction``: the share of its pixels
    holding data (of the coarse grid's cells for a large raster); ``footprint``: its rectangle in
    EPSG:4326."""

    path: str
    footprint: Any
    fraction: float
    crs: str | None = None
    _crs_wkt: str = ""
    _transform: Any = None
    _shape: tuple[int, int] = (0, 0)
    _bands: tuple[int, ...] = ()
    _nodata: list = field(default_factory=list)
    _use_mask: list = field(default_factory=list)
    _grid: np.ndarray | None = None  # None: valid everywhere in the footprint
    _exact: bool = True  # the grid is the pixels' validity; else coarse cells with data or next to one

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """True where a point lies on a pixel with data."""
        import shapely

        lon = np.asarray(lon, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        shapely.prepare(self.footprint)
        ok = shapely.contains_xy(self.footprint, lon, lat)
        if self._grid is None or not ok.any():
            return ok
        idx = np.flatnonzero(ok)
        h, w = self._shape
        col, row = lonlat_to_pixel(self._crs_wkt, self._transform, lon[idx], lat[idx], width=w)
        with np.errstate(invalid="ignore"):
            c, r = np.floor(col), np.floor(row)
            inside = np.isfinite(c) & np.isfinite(r) & (c >= 0) & (r >= 0) & (c < w) & (r < h)
        c = np.where(inside, c, 0).astype(np.int64)
        r = np.where(inside, r, 0).astype(np.int64)
        ch, cw = self._grid.shape
        good = inside & self._grid[(r * ch) // h, (c * cw) // w]
        if not self._exact:
            todo = np.flatnonzero(good)
            if len(todo):
                good[todo] = self._pixels_valid(c[todo], r[todo])
        ok[idx] = good
        return ok

    def _pixels_valid(self, c: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Validity of pixels (c, r), read window by window."""
        out = np.zeros(len(c), dtype=bool)
        with open_raster(self.path, crs=self.crs) as ds:
            for gidx, box in plan_windows(c, c + 1, r, r + 1, _WINDOW_PX, 16.0):
                data, mask, _ = read_window(ds, self.path, self._bands, self._nodata, self._use_mask, box, 1)
                valid = _valid(data, mask, self._nodata)
                out[gidx] = valid[r[gidx] - box[1], c[gidx] - box[0]]
        return out


def raster_area(path: str, options: RasterOptions | None = None, where: str | None = None) -> RasterArea:
    """The valid-data area of a raster; ``options``: the config's CRS and nodata overrides; ``where``
    (the setting that names the raster) prefixes errors and warnings. Refuses a nodata override the
    bands cannot hold and warns of an undeclared fill (:mod:`~geoembed.views.raster.nodata`)."""
    from rasterio.enums import MaskFlags

    options = options or RasterOptions()
    where = where or f"raster {path}"
    footprint = raster_footprint(path, crs=options.crs)
    with open_raster(path, crs=options.crs) as ds:
        crs = raster_crs(ds, options.crs, where)
        bands = default_bands(ds)
        check_nodata_override(ds, path, bands, options.nodata, where)
        warn_undeclared_fill(ds, path, bands, options.nodata, where)
        nodata, use_mask = band_nodata(ds, bands, options.nodata)
        nodata = [_as_stored(v, ds.dtypes[b - 1]) for v, b in zip(nodata, bands, strict=True)]
        area = RasterArea(path, footprint, 1.0, options.crs, crs.to_wkt(), ds.transform, (ds.height, ds.width),
                          tuple(bands), nodata, use_mask)
        flags_valid = all(MaskFlags.all_valid in ds.mask_flag_enums[b - 1] for b in bands)
        ints = all(np.dtype(ds.dtypes[b - 1]).kind in "iub" for b in bands)
        if ints and flags_valid and all(v is None for v in nodata):
            return area  # every pixel holds data
        coarse, area._exact = _coarse_validity(ds, area)
    area.fraction = float(coarse.mean())
    area._grid = coarse if area._exact else _dilate(coarse)
    if area.fraction == 0.0:
        raise InputError(f"{where}: raster {path} has no pixel with data (all nodata, NaN or masked)")
    return area


def _as_stored(v: float | None, dtype) -> float | None:
    """A nodata value as the band stores it (a float32 band holds -9999.9 as -9999.900390625)."""
    if v is None or math.isnan(v):
        return None if v is None else v
    dt = np.dtype(dtype)
    return float(dt.type(v)) if dt.kind == "f" else float(v)


def _coarse_validity(ds, area: RasterArea) -> tuple[np.ndarray, bool]:
    """Validity on a grid of at most MAX_CELLS cells (nearest read), and whether it is the pixels."""
    from rasterio.enums import Resampling

    h, w = area._shape
    factor = max(1, math.ceil(math.sqrt(h * w / MAX_CELLS)))
    shape = (-(-h // factor), -(-w // factor))
    kw = {} if factor == 1 else {"out_shape": shape, "resampling": Resampling.nearest}
    valid = np.ones(shape, dtype=bool)
    for k, b in enumerate(area._bands):
        band = ds.read(b, **kw)
        mask = ds.read_masks(b, **kw) if area._use_mask[k] else None
        valid &= _valid(band[None], None if mask is None else mask[None], [area._nodata[k]])
    return valid, factor == 1


def _valid(data: np.ndarray, mask: np.ndarray | None, nodata) -> np.ndarray:
    """Pixels where every band (axis 0) holds data."""
    out = np.ones(data.shape[1:], dtype=bool)
    for k in range(data.shape[0]):
        band = data[k]
        if band.dtype.kind in "fc":
            out &= np.isfinite(band)
        v = nodata[k]
        if v is not None and not math.isnan(v):
            out &= band != v
        if mask is not None:
            out &= mask[k] != 0
    return out


def _dilate(grid: np.ndarray) -> np.ndarray:
    """Cells with data or next to one (8-neighbourhood): where a point may lie on a pixel with data."""
    out = grid.copy()
    out[1:] |= grid[:-1]
    out[:-1] |= grid[1:]
    tmp = out.copy()
    out[:, 1:] |= tmp[:, :-1]
    out[:, :-1] |= tmp[:, 1:]
    return out
