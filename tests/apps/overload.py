"""Test app for the handling models, flow control and limits (tests/models.rs, tests/limits.rs).

/sleep?s=0.2       sleeps, counting how many requests run at once
/poll              waits (up to 20 s) on an event that /release sets: a long poll
/release           sets that event
/spin?s=0.02       computes (holds the GIL) that long, counted like /sleep
/stats             the most that ran at once since the last /stats?reset=1
/big?mib=50        a generator of 64 KiB chunks; its close() logs how far it got
/write             answers through the write() callable
/echo              the request body's length
/digest            the request body's length and CRC-32
/file              this file, through wsgi.file_wrapper (a real file: sendfile)
/filelike?mib=1    bytes through wsgi.file_wrapper over a BytesIO (iterated)
"""

import io
import sys
import threading
import time
import zlib
from urllib.parse import parse_qs

_lock = threading.Lock()
_running = 0
_peak = 0
CHUNK = 64 * 1024
_release = threading.Event()


def _param(environ, name, default):
    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return type(default)(values[0]) if values else default


class Big:
    """A response of `total` chunks that reports on close() how many were taken."""

    def __init__(self, total):
        self.total = total
        self.sent = 0
        self.chunk = b"x" * CHUNK

    def __iter__(self):
        return self

    def __next__(self):
        if self.sent >= self.total:
            raise StopIteration
        self.sent += 1
        return self.chunk

    def close(self):
        sys.stderr.write(f"big response closed after {self.sent} of {self.total} chunks\n")
        sys.stderr.flush()


def application(environ, start_response):
    global _running, _peak
    path = environ.get("PATH_INFO", "")
    if path == "/sleep":
        with _lock:
            _running += 1
            _peak = max(_peak, _running)
        try:
            time.sleep(_param(environ, "s", 0.2))
        finally:
            with _lock:
                _running -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept\n"]
    if path == "/poll":
        woken = _release.wait(20)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"released\n" if woken else b"timed out\n"]
    if path == "/release":
        _release.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"set\n"]
    if path == "/spin":
        with _lock:
            _running += 1
            _peak = max(_peak, _running)
        try:
            until = time.perf_counter() + _param(environ, "s", 0.02)
            while time.perf_counter() < until:
                pass
        finally:
            with _lock:
                _running -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"spun\n"]
    if path == "/stats":
        with _lock:
            peak = _peak
            if _param(environ, "reset", 0):
                _peak = 0
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{peak}\n".encode()]
    if path == "/big":
        total = int(_param(environ, "mib", 50.0) * 1024 * 1024) // CHUNK
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(total * CHUNK))],
        )
        return Big(total)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written\n")
        return []
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{len(body)}\n".encode()]
    if path == "/digest":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{len(body)} {zlib.crc32(body)}\n".encode()]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 8192)
    if path == "/filelike":
        size = int(_param(environ, "mib", 1.0) * 1024 * 1024)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"y" * size), CHUNK)
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]
