"""Synthetic GeoTIFF makers for tests and benchmarks.

The central one is :func:`rowcol_raster`: band 1 holds each pixel's row index and band 2 its column
index, so a chip read from it proves exactly which source pixels were sampled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine, from_origin

__all__ = [
    "Affine",
    "from_origin",
    "large_uint8_raster",
    "random_bytes_file",
    "rowcol_raster",
    "write_geotiff",
]


def write_geotiff(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    crs,
    transform: Affine,
    nodata: float | None = None,
    tiled: bool = True,
    blocksize: int = 256,
    compress: str | None = None,
) -> Path:
    """Write ``data`` (bands, rows, cols) as a GeoTIFF; ``crs=None`` writes one without a CRS."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "transform": transform,
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    if tiled and height >= 16 and width >= 16:
        bs = max(16, min(blocksize, 16 * (min(height, width) // 16)))
        profile.update(tiled=True, blockxsize=bs, blockysize=bs)
    if compress:
        profile["compress"] = compress
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GTIFF_SRS_SOURCE="EPSG"), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def rowcol_raster(
    path: str | os.PathLike,
    height: int,
    width: int,
    *,
    crs,
    transform: Affine,
    dtype: str = "float32",
    extra_bands: int = 0,
    nodata: float | None = None,
) -> Path:
    """A raster whose band 1 = pixel row and band 2 = pixel column (plus ``extra_bands`` of row+col).

    With an integer ``dtype`` the values wrap at the type's range, so keep the grid small enough.
    """
    rows, cols = np.indices((height, width), dtype=np.float64)
    bands = [rows, cols] + [rows + cols] * extra_bands
    data = np.stack(bands).astype(dtype)
    return write_geotiff(path, data, crs=crs, transform=transform, nodata=nodata)


def large_uint8_raster(
    path: str | os.PathLike,
    size: int = 10_000,
    bands: int = 3,
    *,
    crs="EPSG:32633",
    origin: tuple[float, float] = (400_000.0, 6_000_000.0),
    res: float = 10.0,
    blocksize: int = 512,
    compress: str | None = "deflate",
    seed: int = 0,
) -> Path:
    """A ``size`` x ``size`` tiled uint8 GeoTIFF written strip by strip (bounded memory).

    Values are a smooth pattern plus noise so that compression behaves like on imagery.
    Returns ``path`` unchanged if it already exists with the same shape.
    """
    path = Path(path)
    if path.exists():
        with rasterio.open(path) as ds:
            if ds.width == size and ds.height == size and ds.count == bands:
                return path
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint8",
        "crs": crs, "transform": from_origin(origin[0], origin[1], res, res),
        "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
    }
    if compress:
        profile["compress"] = compress
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.tif")
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(tmp, "w", **profile) as dst:
        for y0 in range(0, size, blocksize):
            h = min(blocksize, size - y0)
            rows = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
            strip = np.empty((bands, h, size), dtype=np.uint8)
            for b in range(bands):
                base = 96 + 60 * np.sin(rows / (150.0 + 40 * b)) * np.cos(cols / (210.0 - 30 * b))
                strip[b] = np.clip(base + rng.normal(0, 12, size=(h, size)), 0, 255).astype(np.uint8)
            dst.write(strip, window=rasterio.windows.Window(0, y0, size, h))
    os.replace(tmp, path)
    return path


def random_bytes_file(path: str | os.PathLike, n: int = 4096, seed: int = 0) -> Path:
    """A file of random bytes (a corrupt ``.tif`` for error tests)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path
