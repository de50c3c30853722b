"""A download cache for http(s) sources (e.g. a country's .osm.pbf extract): downloaded once, resumed
after an interruption, verified, and only then given its final name.

Layout under ``$GEOEMBED_CACHE_DIR/downloads/<sha256(url)[:16]>/``: ``<name>`` (complete and verified:
its presence is the commit point), ``<name>.json`` (URL, size, sha256, ETag / Last-Modified),
``<name>.part`` (bytes so far) with ``<name>.part.json`` (the validator and total size it belongs to)
and ``<name>.lock`` (one downloader at a time, across processes).

A ``.part`` is resumed with an HTTP ``Range`` request guarded by ``If-Range`` (a server whose file
changed answers with the whole new file, which replaces the part). The length is checked against
``Content-Length`` / ``Content-Range`` and, when given, the sha256; a truncated download keeps its
``.part`` for the next run, a checksum mismatch removes it. Nothing incomplete ever has the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import urllib3

from geoembed.errors import ConfigError, InputError
from geoembed.io.atomic import atomic_write_json
from geoembed.io.fingerprint import file_fingerprint
from geoembed.sources.http import (
    RETRY_STATUS,
    Retryable,
    cache_dir,
    reason_text,
    retry_after_s,
    session,
    with_retries,
)

log = logging.getLogger(__name__)

__all__ = ["cached_download", "download_paths"]

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def download_paths(url: str) -> tuple[Path, Path]:
    """(final file, partial file) of ``url`` in the cache. The name keeps the URL's file name, so
    that readers that pick a format by extension (``.osm.pbf``) see it."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url!r} is not an http(s) URL")
    name = Path(unquote(urlparse(url).path)).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    folder = cache_dir("downloads") / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name, folder / (name + ".part")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    hexa = sha256.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", hexa):
        raise ConfigError(f"sha256 {sha256!r} is not 64 hexadecimal digits")
    return "sha256:" + hexa


def cached_download(url: str, sha256: str | None = None, *, timeout_s: float = 60.0, retries: int = 4,
                    backoff_s: float = 2.0) -> Path:
    """The local path of ``url``'s content, downloaded into the cache on first use.

    ``sha256`` (hex, with or without ``sha256:``) is checked when given; a cached file that does not
    match it is downloaded again. Interruptions (connection lost, timeout, 429/5xx, a body cut short)
    are retried ``retries`` times with exponential backoff, each retry resuming where the last one
    stopped. Raises InputError naming the URL on an HTTP error, a download that stays truncated (its
    ``.part`` is kept: rerun to resume) or a checksum mismatch.
    """
    expected = _normalise_sha256(sha256)
    final, part = download_paths(url)
    meta_path = final.with_name(final.name + ".json")
    with _locked(final.with_name(final.name + ".lock")):
        if final.is_file():
            meta = _read_json(meta_path)
            if expected is None or (meta.get("sha256") == expected and meta.get("size") == final.stat().st_size):
                return final
            actual = file_fingerprint(final)
            if actual == expected:
                return final
            log.warning("cached %s has %s, not the expected %s: downloading it again", final, actual, expected)
            final.unlink()
        state: dict = {}
        with_retries(lambda: _fetch(url, part, state, timeout_s), url=url, what="download of", retries=retries,
                     backoff_s=backoff_s,
                     advice=lambda: f"the partial file {part} is kept: rerun to resume" if _size(part) else
                     "check the URL and the network, or retry later")
        actual = file_fingerprint(part)
        if expected is not None and actual != expected:
            part.unlink()
            _part_meta(part).unlink(missing_ok=True)
            raise InputError(f"download of {url}: sha256 is {actual}, expected {expected}; the file was "
                             "removed. Check the URL and the checksum (the server may hold a newer file)")
        atomic_write_json(meta_path, {"url": url, "size": part.stat().st_size, "sha256": actual,
                                      "etag": state.get("etag"), "last_modified": state.get("last_modified")})
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, final)
        _part_meta(part).unlink(missing_ok=True)
        log.info("downloaded %s to %s (%d bytes)", url, final, final.stat().st_size)
        return final


def _part_meta(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _fetch(url: str, part: Path, state: dict, timeout_s: float) -> None:
    """One attempt: resume (or start) ``part`` and read to the end. Raises Retryable when it should be
    tried again, InputError when not."""
    have = part.stat().st_size if part.is_file() else 0
    pmeta = _read_json(_part_meta(part)) if have else {}
    headers = {"Accept-Encoding": "identity"}  # byte offsets are those of the file itself
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = pmeta.get("etag") or pmeta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    started = False
    try:
        with session().get(url, headers=headers, stream=True, timeout=(min(timeout_s, 30.0), timeout_s)) as resp:
            started = True
            total = _start(url, resp, have, part, pmeta)
            if total is not None and total == have and resp.status_code == 416:
                return  # the part was already whole
            mode = "ab" if resp.status_code == 206 else "wb"
            state.update(etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified"))
            if mode == "wb" or pmeta.get("total") != total:
                atomic_write_json(_part_meta(part), {"url": url, "total": total, "etag": state["etag"],
                                                     "last_modified": state["last_modified"]})
            with open(part, mode) as fh:
                # read1: whatever has arrived, so that the bytes before a cut are kept
                while chunk := resp.raw.read1(_CHUNK):
                    fh.write(chunk)
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise Retryable(f"no data within {timeout_s:g} s at {_size(part)} bytes") from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
            ConnectionError) as err:
        if not started:
            raise Retryable(f"connection failed ({reason_text(err)})") from None
        raise Retryable(f"cut short at {_size(part)} of {_total_text(total_of(part))} bytes "
                        f"({reason_text(err)})") from None
    except OSError as err:  # the disk, not the network
        raise InputError(f"download of {url}: cannot write {part} ({err.strerror or err}); free some disk space "
                         "or set GEOEMBED_CACHE_DIR to another folder") from None
    size = _size(part)
    total = total_of(part)
    if total is not None and size < total:
        raise Retryable(f"cut short at {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise InputError(f"download of {url}: got {size} bytes but the server announced {total}; the partial "
                         "file was removed, rerun to download it again")


def total_of(part: Path) -> int | None:
    """The total size the server announced for the download held in ``part`` (None if unknown)."""
    total = _read_json(_part_meta(part)).get("total")
    return int(total) if isinstance(total, int) else None


def _size(part: Path) -> int:
    return part.stat().st_size if part.is_file() else 0


def _total_text(total: int | None) -> str:
    return "?" if total is None else str(total)


def _start(url: str, resp: requests.Response, have: int, part: Path, pmeta: dict) -> int | None:
    """Check the status of a (ranged) answer; returns the file's total size (None if unknown)."""
    code = resp.status_code
    if code in RETRY_STATUS:
        raise Retryable(f"HTTP {code} {resp.reason}", retry_after_s(resp))
    if code == 416 and have:  # nothing left past our offset: whole if the sizes agree, else start again
        m = re.match(r"^bytes \*/(\d+)$", resp.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == have:
            return have
        part.unlink()
        _part_meta(part).unlink(missing_ok=True)
        raise Retryable("the partial file does not match the server's file; starting again")
    if code == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if not m or int(m.group(1)) != have:
            part.unlink()
            _part_meta(part).unlink(missing_ok=True)
            raise Retryable("the server answered another byte range than asked; starting again")
        total = None if m.group(3) == "*" else int(m.group(3))
        if pmeta.get("total") is not None and total is not None and total != pmeta["total"]:
            part.unlink()
            _part_meta(part).unlink(missing_ok=True)
            raise Retryable("the server's file changed size since the partial download; starting again")
        return total
    if code == 200:
        length = resp.headers.get("Content-Length")
        return int(length) if length is not None and length.isdigit() else None
    snippet = resp.text[:200].strip() if code < 500 else ""
    raise InputError(f"download of {url}: HTTP {code} {resp.reason}" + (f": {snippet}" if snippet else "")
                     + "; check the URL")
