"""Fingerprints: sha256 of files, of input sources and of JSON-able objects, and a per-user cache of the
fingerprints of large files.

* :func:`file_fingerprint` - ``sha256:<hex>`` of a file's bytes.
* :func:`source_fingerprint` - an input source: ``remote:<url>`` for GDAL remote paths, the files behind
  a GDAL dataset name (:mod:`geoembed.io.gdalnames`), else the file's sha256, computed once per process
  for a given (path, size, mtime) and, for large files, remembered across processes (below).
* :func:`text_fingerprint` - sha256 of a JSON-serialisable object in canonical form.

The cache: hashing a 20 GB mosaic takes tens of seconds, and a build (or a resumed build) fingerprints
every source it reads. The hash of a file of at least ``MIN_BYTES`` is remembered under (real path, size,
modification time in ns, inode): a file written again gets a new modification time and is hashed again,
as ``make`` and ``rsync`` assume. The cache is one small JSON file, ``$GEOEMBED_CACHE_DIR/fingerprints.json``
(default ``~/.cache/geoembed``; an empty ``GEOEMBED_CACHE_DIR`` turns it off). A cache that cannot be read
or written is ignored: the file is then hashed as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from geoembed.errors import InputError
from geoembed.io import gdalnames
from geoembed.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

MIN_BYTES = 64 << 20  # smaller files hash in well under a tenth of a second
MAX_ENTRIES = 2000

__all__ = ["MIN_BYTES", "cache_file", "file_fingerprint", "lookup", "remember", "source_fingerprint",
           "text_fingerprint"]


def file_fingerprint(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, as ``sha256:<hex>``. Names the file if it cannot be read."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
    except FileNotFoundError:
        raise InputError(f"{p} does not exist") from None
    except OSError as err:
        raise InputError(f"cannot read {p}: {err.strerror or err}") from None
    return "sha256:" + h.hexdigest()


_FINGERPRINTS: dict[tuple, str] = {}  # this process's memo: (real path, size, mtime_ns) -> fingerprint


def source_fingerprint(path: str | os.PathLike) -> str:
    """Fingerprint of an input source: ``remote:<url>`` for GDAL remote paths (``s3://``, ``/vsicurl/``
    ...), else the file's sha256, computed once per process for a given (path, size, mtime) and, for
    large files, remembered across processes (:func:`lookup`, :func:`remember`). A GDAL name over
    local files (``NETCDF:"x.nc":t2m``, ``/vsizip/a.zip/b.tif``) combines its form with the
    fingerprints of those files (:mod:`geoembed.io.gdalnames`)."""
    p = str(path)
    if gdalnames.is_remote(p):
        return f"remote:{p}"
    if not os.path.isfile(p) and gdalnames.is_gdal_name(p):  # a subdataset, a /vsizip/ member: its files
        return text_fingerprint({"name": gdalnames.template(p),
                                 "files": [source_fingerprint(f) for f in gdalnames.local_files(p)]})
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{p} does not exist") from None
    real = os.path.realpath(p)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        fp = lookup(real, st)
        if fp is None:
            fp = file_fingerprint(p)
            remember(real, st, fp)
        _FINGERPRINTS[key] = fp
    return _FINGERPRINTS[key]


def text_fingerprint(obj) -> str:
    """sha256 of a JSON-serialisable object in canonical form."""
    data = json.dumps(obj, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ the on-disk cache

def cache_file() -> Path | None:
    """The cache's JSON file, or None when caching is turned off."""
    raw = os.environ.get("GEOEMBED_CACHE_DIR")
    if raw is not None and raw.strip() == "":
        return None
    base = Path(raw).expanduser() if raw else Path.home() / ".cache" / "geoembed"
    return base / "fingerprints.json"


def _key(real: str, st: os.stat_result) -> str:
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(real: str, st: os.stat_result) -> str | None:
    """The remembered fingerprint of the file at ``real`` with status ``st``, or None."""
    path = cache_file()
    if path is None or st.st_size < MIN_BYTES:
        return None
    value = _load(path).get(_key(real, st))
    return value if isinstance(value, str) and value.startswith("sha256:") else None


def remember(real: str, st: os.stat_result, fingerprint: str) -> None:
    """Store a fingerprint (best effort: an unwritable cache is skipped with a debug message)."""
    path = cache_file()
    if path is None or st.st_size < MIN_BYTES:
        return
    try:
        data = _load(path)
        data.pop(_key(real, st), None)
        data[_key(real, st)] = fingerprint  # newest last; the oldest are dropped first
        while len(data) > MAX_ENTRIES:
            data.pop(next(iter(data)))
        atomic_write_json(path, data)
    except OSError as err:
        log.debug("fingerprint cache %s not written: %s", path, err)
