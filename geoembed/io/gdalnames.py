"""GDAL dataset names that are not plain file paths, and the local files behind them.

GDAL opens more than paths: a subdataset (``NETCDF:"file.nc":t2m``, ``HDF5:file.h5://group/ds``,
``HDF4_EOS:EOS_GRID:"file.hdf":grid:field``, ``GTIFF_DIR:2:file.tif``), a member of an archive or a
compressed file (``/vsizip/data/a.zip/b.tif``, ``/vsigzip/x.tif.gz``, ``/vsitar/...``), a remote object
(``/vsicurl/https://...``, ``/vsis3/bucket/key``, ``https://...``) or another driver's connection string.
These helpers let config paths, existence checks and fingerprints treat such names properly:

* :func:`split` - a name as ``prefix + inner + suffix``, ``inner`` being the embedded file path (itself
  possibly a GDAL name, e.g. ``NETCDF:"/vsizip/a.zip/x.nc":t2m``), or None when no local file is named;
* :func:`absolute` - the name with only its file path made absolute (``NETCDF:"data/x.nc":t2m`` ->
  ``NETCDF:"/abs/data/x.nc":t2m``, ``/vsizip/data/a.zip/b.tif`` -> ``/vsizip//abs/data/a.zip/b.tif``);
  URLs, remote and absolute names are left alone;
* :func:`local_files` - the local files whose bytes a name reads (an archive, not its member);
* :func:`is_remote` - no local file at all (URLs, ``/vsicurl/``, ``/vsis3/`` ..., ``/vsimem/``).

A plain path is anything else; a relative path that exists as a file is always a plain path, so a file
named ``a:b.tif`` stays one. An unquoted subdataset path is recognised for the drivers whose names
hold a file (:data:`FILE_SUBDATASET_DRIVERS`); quote it (``DRIVER:"path":...``) for any other driver.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["FILE_SUBDATASET_DRIVERS", "absolute", "is_gdal_name", "is_remote", "local_files", "split",
           "template"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DRIVER = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", re.S)
# /vsi handlers reading a local file given right after the prefix
_ARCHIVES = ("/vsizip/", "/vsigzip/", "/vsitar/", "/vsi7z/", "/vsirar/", "/vsisubfile/")
FILE_SUBDATASET_DRIVERS = frozenset({
    "NETCDF", "HDF5", "HDF5IMAGE", "HDF4", "HDF4_SDS", "HDF4_EOS", "HDF4_GR", "HDF4_IMAGE", "GTIFF_DIR",
    "GTIFF_RAW", "NITF_IM", "PDF", "ZARR", "GPKG", "RASTERLITE", "TILEDB", "KEA", "JP2OPENJPEG",
    "SENTINEL2_L1B", "SENTINEL2_L1C", "SENTINEL2_L2A", "SENTINEL2_L1C_TILE", "SENTINEL1_CALIB",
    "RADARSAT_2_CALIB", "RCM_CALIB", "GRIB", "MBTILES",
})


def split(name: str) -> tuple[str, str | None, str]:
    """``(prefix, inner, suffix)`` with ``prefix + inner + suffix == name``: ``inner`` is the file path
    inside a GDAL name (None for a URL, a remote ``/vsi`` name or an unknown driver string); for a
    plain path, ``("", name, "")``."""
    if _URL.match(name):
        return name, None, ""
    if name.startswith("/vsi"):
        for pre in _ARCHIVES:
            if name.startswith(pre):
                rest = name[len(pre):]
                if pre == "/vsisubfile/":  # /vsisubfile/offset_size,path
                    comma = rest.find(",")
                    if comma < 0:
                        return name, None, ""
                    pre, rest = pre + rest[:comma + 1], rest[comma + 1:]
                if not rest:
                    return name, None, ""
                if rest.startswith("{") and "}" in rest:  # /vsizip/{path/to/a.zip}/member
                    end = rest.index("}")
                    return pre + "{", rest[1:end], rest[end:]
                return pre, rest, ""
        return name, None, ""  # /vsicurl/, /vsis3/, /vsimem/ ...: nothing local (or not a file)
    m = _DRIVER.match(name)
    if m is None or len(m.group(1)) < 2:
        return "", name, ""
    driver, rest = m.group(1), m.group(2)
    head = f"{driver}:"
    if '"' in rest:
        i = rest.index('"')
        j = rest.find('"', i + 1)
        if j > i:
            return head + rest[:i + 1], rest[i + 1:j], rest[j:]
    if driver.upper() not in FILE_SUBDATASET_DRIVERS:
        return name, None, ""
    tokens = rest.split(":")
    for k, tok in enumerate(tokens):
        if k + 1 < len(tokens) and tok.startswith("/vsi") and tokens[k + 1].startswith("//"):
            continue  # never split a /vsi name at its own '://'
        if tok and ("/" in tok or "." in tok) and not tok.startswith("//"):
            pre = head + "".join(t + ":" for t in tokens[:k])
            suf = "".join(":" + t for t in tokens[k + 1:])
            return pre, tok, suf
    return name, None, ""


def is_gdal_name(name: str, base: str | os.PathLike | None = None) -> bool:
    """True for a name that is not a plain file path (see the module docstring). With ``base``, a
    relative name that exists as a file under ``base`` is a plain path."""
    prefix, inner, suffix = split(name)
    if not prefix and not suffix:
        return False
    if base is not None and not os.path.isabs(name) and (Path(base) / name).is_file():
        return False
    return True


def is_remote(name: str) -> bool:
    """True when the name reads no local file (a URL, ``/vsicurl/``, ``/vsis3/``, ``/vsimem/`` ...)."""
    prefix, inner, _ = split(name)
    if inner is None:
        return True
    return bool(prefix) and is_remote(inner)


def absolute(name: str, base: str | os.PathLike | None = None) -> str:
    """The name with its file path made absolute against ``base`` (default: the working directory),
    as :meth:`pathlib.Path.resolve` does for a plain path; URLs and remote names are unchanged."""
    base = Path.cwd() if base is None else Path(base)
    if not is_gdal_name(name, base):
        return name if os.path.isabs(name) else str((base / name).resolve())
    prefix, inner, suffix = split(name)
    if inner is None:
        return name
    return prefix + absolute(inner, base) + suffix


def template(name: str) -> str:
    """The name with its local file paths replaced by ``{file}`` (what a fingerprint records of it)."""
    prefix, inner, suffix = split(name)
    if inner is None:
        return name
    if not prefix and not suffix:
        return "{file}"
    if prefix.startswith("/vsi") and not inner.startswith("/vsi"):
        container = _container(inner)
        if container is not None:
            return prefix + "{file}" + inner[len(container):] + suffix
    return prefix + template(inner) + suffix


def local_files(name: str) -> list[str]:
    """The local files a name reads: itself for a plain path, the archive for a ``/vsizip/`` member
    (the first existing file along its path), the file of a subdataset; [] when remote. A missing file
    is returned as named (the caller reports it)."""
    prefix, inner, suffix = split(name)
    if inner is None:
        return []
    if not prefix and not suffix:
        return [name]
    if prefix.startswith("/vsi") and not inner.startswith("/vsi"):
        return [_container(inner) or inner]
    return local_files(inner)


def _container(path: str) -> str | None:
    """The first existing regular file along ``path`` (``/d/a.zip`` of ``/d/a.zip/sub/b.tif``)."""
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        head = "/".join(parts[:k])
        if head and os.path.isfile(head):
            return head
    return None
