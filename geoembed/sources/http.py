"""HTTP for the remote sources: one request with bounded retries and exponential backoff, clear errors
naming the URL, and the on-disk cache folder.

Retried: connection failures, timeouts, bodies cut short, HTTP 429 and 5xx (a ``Retry-After`` of up to
five minutes is honoured). Not retried: other 4xx answers (the request itself is wrong). The cache
lives under ``$GEOEMBED_CACHE_DIR`` (default ``~/.cache/geoembed``), like the fingerprint cache.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from geoembed.errors import ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["RETRY_STATUS", "Retryable", "cache_dir", "fetch_once", "reason_text", "request", "retry_after_s", "retry_delay", "session",
           "with_retries"]

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_DELAY_S = 300.0
_local = threading.local()


def session() -> requests.Session:
    """This thread's HTTP session (keep-alive; sessions are not shared between threads)."""
    s = getattr(_local, "session", None)
    if s is None:
        import geoembed

        s = _local.session = requests.Session()
        s.headers["User-Agent"] = f"geoembed/{geoembed.__version__}"
    return s


def cache_dir(kind: str) -> Path:
    """``$GEOEMBED_CACHE_DIR/<kind>`` (default ``~/.cache/geoembed/<kind>``), created. An empty
    ``GEOEMBED_CACHE_DIR`` turns caching off, which remote sources cannot do without."""
    raw = os.environ.get("GEOEMBED_CACHE_DIR")
    if raw is not None and raw.strip() == "":
        raise ConfigError(f"GEOEMBED_CACHE_DIR is set empty (cache off), but {kind} sources keep their "
                          "downloads in that cache: set it to a folder")
    base = Path(raw).expanduser() if raw else Path.home() / ".cache" / "geoembed"
    path = base / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cache folder {path} cannot be created ({err.strerror or err}); set "
                          "GEOEMBED_CACHE_DIR to a writable folder") from None
    return path


class Retryable(Exception):
    """A failure worth retrying (network, timeout, 429/5xx, a body cut short, a server-side timeout);
    ``delay_s`` is the server's Retry-After when it gave one."""

    def __init__(self, message: str, delay_s: float | None = None):
        super().__init__(message)
        self.delay_s = delay_s


def retry_delay(attempt: int, backoff_s: float, server_delay_s: float | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``backoff_s * 2**attempt`` with up to 25%
    jitter, at least the server's Retry-After, at most five minutes."""
    delay = backoff_s * (2.0 ** attempt) * (1.0 + 0.25 * random.random())
    if server_delay_s is not None:
        delay = max(delay, server_delay_s)
    return min(delay, _MAX_DELAY_S)


def with_retries(fn: Callable[[], object], *, url: str, what: str, retries: int, backoff_s: float,
                 advice: str | Callable[[], str] = "check the URL and the network, or retry later"):
    """Call ``fn`` until it returns, retrying a :class:`Retryable` up to ``retries`` times with
    exponential backoff; then raise InputError naming ``what``, ``url``, the last failure and
    ``advice`` (text, or a function giving it then). Other exceptions pass through."""
    last = ""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Retryable as err:
            last = str(err)
            if attempt == retries:
                break
            delay = retry_delay(attempt, backoff_s, err.delay_s)
            log.warning("%s %s: %s; retry %d of %d in %.1f s", what, url, last, attempt + 1, retries, delay)
            time.sleep(delay)
    tries = "1 attempt" if retries == 0 else f"{retries + 1} attempts"
    raise InputError(f"{what} {url}: {last} ({tries}); {advice() if callable(advice) else advice}")


def retry_after_s(resp: requests.Response) -> float | None:
    """The answer's Retry-After in seconds (None when absent or an HTTP date)."""
    raw = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP date: our own backoff applies


def fetch_once(method: str, url: str, *, what: str, timeout_s: float,
               data: Mapping[str, str] | bytes | None = None, headers: Mapping[str, str] | None = None,
               advice: str = "check the URL") -> bytes:
    """The body of one request's successful (2xx) answer, read whole. Raises :class:`Retryable` for a
    failure worth retrying (module docstring) and InputError naming ``what`` and ``url`` for another
    4xx answer (with the start of its body). ``timeout_s`` bounds the connection and each wait for data.
    """
    try:
        resp = session().request(method, url, data=data, headers=dict(headers or {}),
                                 timeout=(min(timeout_s, 30.0), timeout_s))
        body = resp.content
    except requests.Timeout:
        raise Retryable(f"no answer within {timeout_s:g} s") from None
    except requests.ConnectionError as err:
        raise Retryable(f"connection failed or cut short ({reason_text(err)})") from None
    except requests.exceptions.ChunkedEncodingError as err:
        raise Retryable(f"the answer was cut short ({reason_text(err)})") from None
    if resp.status_code in RETRY_STATUS:
        raise Retryable(f"HTTP {resp.status_code} {resp.reason}", retry_after_s(resp))
    if not 200 <= resp.status_code < 300:
        snippet = body[:300].decode("utf-8", "replace").strip()
        raise InputError(f"{what} {url}: HTTP {resp.status_code} {resp.reason}"
                         + (f": {snippet}" if snippet else "") + f"; {advice}")
    return body


def request(method: str, url: str, *, what: str, timeout_s: float, retries: int, backoff_s: float,
            data: Mapping[str, str] | bytes | None = None, headers: Mapping[str, str] | None = None,
            advice: str = "check the URL and the network, or retry later") -> bytes:
    """:func:`fetch_once` retried ``retries`` times with exponential backoff (:func:`with_retries`)."""
    return with_retries(lambda: fetch_once(method, url, what=what, timeout_s=timeout_s, data=data,
                                           headers=headers, advice=advice),
                        url=url, what=what, retries=retries, backoff_s=backoff_s, advice=advice)


def reason_text(err: Exception) -> str:
    """The innermost useful text of a requests/urllib3 error (e.g. ``[Errno 111] Connection refused``)."""
    text = str(err)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if m:
        return m.group(0).strip()
    for marker in ("Caused by ", "due to "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()' ")[:200] or type(err).__name__
