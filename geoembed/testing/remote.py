"""A local HTTP server for tests of remote sources: files with HEAD, byte ranges and ETags (what GDAL's
``/vsicurl/`` and resumed downloads need), handlers for API routes, and scripted faults.

Faults are queued per path and each request to that path takes the next one:
``("status", 500)`` answers that status, ``("drop", n)`` announces the whole body but sends only ``n``
bytes and closes the connection, ``("hang", s)`` answers nothing for ``s`` seconds (or until the
server stops). Every request is logged (method, path, headers) in ``server.log`` (``raw`` is the path with its query string).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

__all__ = ["LocalServer", "Reply"]


@dataclass
class Reply:
    """A handler's answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[str, dict, bytes, dict], Reply]  # (method, query, body, headers) -> Reply


class LocalServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.routes: dict[str, Handler] = {}
        self.faults: dict[str, list[tuple[str, float]]] = {}
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ set-up
    def add_file(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path`` (with an ETag from its content); returns its URL."""
        self.files[path] = (bytes(data), '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        return self.url + path

    def add_route(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url + path

    def fail(self, path: str, *faults: tuple[str, float]) -> None:
        """Queue ``faults`` for the next requests to ``path`` (module docstring)."""
        with self._lock:
            self.faults.setdefault(path, []).extend(faults)

    def requests_to(self, path: str) -> list[dict]:
        return [r for r in self.log if r["path"] == path]

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> LocalServer:
        server = self

        class _Handler(_RequestHandler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _next_fault(self, path: str) -> tuple[str, float] | None:
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: LocalServer

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        srv = self.owner
        parts = urlsplit(self.path)
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        srv.log.append({"method": method, "path": path, "raw": self.path, "headers": dict(self.headers), "body": body})
        fault = srv._next_fault(path)
        if fault is not None and fault[0] == "hang":
            srv._stop.wait(fault[1])
            self.close_connection = True
            return
        if fault is not None and fault[0] == "status":
            return self._send(int(fault[1]), b"server error\n", "text/plain", {}, method)
        drop = int(fault[1]) if fault is not None and fault[0] == "drop" else None
        if path in srv.routes:
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            r = srv.routes[path](method, query, body, dict(self.headers))
            return self._send(r.status, r.body, r.content_type, r.headers, method, drop)
        if path not in srv.files:
            return self._send(404, b"not found\n", "text/plain", {}, method)
        data, etag = srv.files[path]
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if rng and (if_range is None or if_range == etag):
            m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip())
            if m:
                size = len(data)
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start, end = max(0, size - int(m.group(2))), size - 1
                if start >= size:
                    return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{size}"}, method)
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                return self._send(206, data[start:end + 1], "application/octet-stream", headers, method, drop)
        self._send(200, data, "application/octet-stream", headers, method, drop)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict, method: str, drop: int | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        if drop is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        self.wfile.write(body if drop is None else body[:drop])
        self.wfile.flush()
        if drop is not None:
            self.close_connection = True
