"""A loopback static-file HTTP server that answers Range requests, as object stores do.

GDAL's ``/vsicurl/`` reads Cloud-Optimized GeoTIFFs with ``Range: bytes=a-b`` requests (after a
HEAD or a first ranged GET); Python's ``SimpleHTTPRequestHandler`` ignores Range and always
sends the whole file with 200, which is not what a COG reader meets in the wild. This handler
answers a single byte range with ``206 Partial Content`` and ``Content-Range``, an
unsatisfiable one with ``416``, and HEAD with the length and ``Accept-Ranges: bytes``.

Every connection has a socket timeout and the request threads are daemons, so a stuck client
can never keep a test (or the interpreter) alive; ``serve`` shuts the server down on exit.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` plus single-range ``Range`` support; records every request."""

    timeout = 10  # seconds of socket inactivity before the connection is dropped
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers (and what curl expects)

    def __init__(self, *args, log: list, **kwargs) -> None:
        self._log = log
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def send_head(self):
        self._log.append((self.command, self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            self.send_error(404, "File not found")
            return None
        size = os.path.getsize(path)
        spec = self.headers.get("Range")
        start, end = 0, size - 1
        status = 200
        if spec:
            match = _RANGE.match(spec.strip())
            if not match or match.groups() == ("", ""):
                self.send_error(416, "Only one byte range is supported")
                return None
            first, last = match.groups()
            if first == "":  # suffix range: the last N bytes
                start, end = max(0, size - int(last)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            status = 206
        f = open(path, "rb")
        f.seek(start)
        self.send_response(status)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        while remaining is None or remaining > 0:
            chunk = source.read(65536 if remaining is None else min(65536, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            if remaining is not None:
                remaining -= len(chunk)


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, list]]:
    """Serve ``root`` on ``127.0.0.1`` (free port): yields (base URL, request log)."""
    log: list = []
    with serving(functools.partial(RangeRequestHandler, directory=str(root), log=log)) as url:
        yield url, log


@contextlib.contextmanager
def serving(handler) -> Iterator[str]:
    """Run ``handler`` (a request handler class or factory) on ``127.0.0.1`` at a free port, in a
    thread, until the block ends: yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# GDAL against a loopback server: short timeouts, no directory listings, never through a proxy.
LOOPBACK_GDAL_ENV = {
    "GDAL_HTTP_TIMEOUT": "10",
    "GDAL_HTTP_CONNECTTIMEOUT": "5",
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def loopback_environment(monkeypatch, *unset: str, **gdal: str) -> None:
    """Set the environment for talking to loopback servers: the machine's proxies and ``unset``
    removed, ``LOOPBACK_GDAL_ENV`` with ``gdal`` on top applied."""
    for name in (*PROXY_VARIABLES, *unset):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**LOOPBACK_GDAL_ENV, **gdal}.items():
        monkeypatch.setenv(name, value)
