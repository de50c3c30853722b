"""A per-user cache of the sha256 fingerprints of large input files, keyed by their identity on disk.

Hashing a 20 GB mosaic takes tens of seconds, and a build (or a resumed build) fingerprints every
source it reads. Here the hash of a file of at least ``MIN_BYTES`` is remembered across processes,
under (real path, size, modification time in ns, inode): a file written again gets a new
modification time and is hashed again, as ``make`` and ``rsync`` assume. The cache is one small JSON
file, ``$GEOEMBED_CACHE_DIR/fingerprints.json`` (default ``~/.cache/geoembed``; an empty
``GEOEMBED_CACHE_DIR`` turns it off). A cache that cannot be read or written is ignored: the file is
then hashed as before.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MIN_BYTES = 64 << 20  # smaller files hash in well under a tenth of a second
MAX_ENTRIES = 2000

__all__ = ["MIN_BYTES", "cache_file", "lookup", "remember"]


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
    from geoembed.io.atomic import atomic_write_json

    try:
        data = _load(path)
        data.pop(_key(real, st), None)
        data[_key(real, st)] = fingerprint  # newest last; the oldest are dropped first
        while len(data) > MAX_ENTRIES:
            data.pop(next(iter(data)))
        atomic_write_json(path, data)
    except OSError as err:
        log.debug("fingerprint cache %s not written: %s", path, err)
