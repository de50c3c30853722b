"""The one place where remote sources call the raster chip sampler
(:func:`geoembed.views.raster.extract_chips`): re-point these two functions when the sampler moves.

The sampler reprojects (per-location azimuthal-equidistant chips), reads COGs block by block (also
through ``/vsicurl/``) and gives NaN for no data; nothing is copied from it here. GDAL's remote reads
get a timeout and retries and do not list the folder of each file (``GDAL_DISABLE_READDIR_ON_OPEN``),
unless the user set those options.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["sample_chips", "sample_classes"]


def _env(timeout_s: float) -> dict[str, str]:
    opts = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_TIMEOUT": str(max(1, round(timeout_s))),
            "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1",
            "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504"}
    return {k: v for k, v in opts.items() if k not in os.environ}


def sample_chips(paths: Sequence[str], lon: np.ndarray, lat: np.ndarray, *, chip_size: int, resolution_m: float,
                 resampling: str, nodata: float | None, timeout_s: float) -> np.ndarray:
    """float32 chips (n, C, S, S) of the files ``paths`` (GDAL paths) stacked band-wise, NaN = no data;
    ``nodata`` overrides the files' (None = what they declare)."""
    import rasterio

    from geoembed.views.raster import RasterSource, extract_chips

    sources = [RasterSource(p, None, nodata) for p in paths]
    with rasterio.Env(**_env(timeout_s)):
        chips, _ = extract_chips(sources, lon, lat, chip_size=chip_size, resolution_m=resolution_m,
                                 resampling=resampling)
    return chips


def sample_classes(path: str, lon: np.ndarray, lat: np.ndarray, *, chip_size: int, resolution_m: float,
                   timeout_s: float) -> np.ndarray:
    """Class chips (n, S, S) of band 1 of a classification raster: the nearest source pixel's class,
    never an average of classes (NaN = outside the raster or NaN in it).

    The sampler averages source pixels when a chip pixel spans several of them, except for a source
    with a nodata override; the override (NaN, which no integer class equals) keeps every read at
    full resolution, so each chip pixel takes the class of one source pixel. A class raster's own
    nodata value is then an ordinary class, which is dropped unless it is listed in ``keep``.
    """
    import rasterio

    from geoembed.views.raster import RasterSource, extract_chips

    with rasterio.Env(**_env(timeout_s)):
        chips, _ = extract_chips([RasterSource(path, (1,), float("nan"))], lon, lat, chip_size=chip_size,
                                 resolution_m=resolution_m, resampling="nearest")
    return chips[:, 0]
