"""The app the frontend tests serve: it reports what it was given, and a few special pages.

The report is one `KEY=VALUE` line per item, values as the environ's Latin-1 bytes, so
the test sees exactly the bytes the app got.
"""

import hashlib
import sys
import time
from wsgiref.util import request_uri

BLOCK = b"0123456789abcdef" * 4096  # 64 KiB


def report(environ, start_response):
    body = environ["wsgi.input"].read()
    items = [
        ("SCRIPT_NAME", environ["SCRIPT_NAME"]),
        ("PATH_INFO", environ["PATH_INFO"]),
        ("QUERY_STRING", environ.get("QUERY_STRING", "")),
        ("REQUEST_METHOD", environ["REQUEST_METHOD"]),
        ("HTTP_HOST", environ.get("HTTP_HOST", "")),
        ("URL", request_uri(environ)),
        ("BODY_LEN", str(len(body))),
        ("BODY_SHA256", hashlib.sha256(body).hexdigest()),
    ]
    out = b"".join(k.encode() + b"=" + v.encode("latin-1") + b"\n" for k, v in items)
    start_response("200 OK", [("Content-Type", "text/plain; charset=iso-8859-1"), ("Content-Length", str(len(out)))])
    return [out]


def cookies(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")])
    return [b"two cookies\n"]


def big(environ, start_response):
    # No Content-Length: each frontend chunks or buffers it its own way.
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    n = int(environ.get("QUERY_STRING") or "320")
    return (BLOCK for _ in range(n))


class Endless:
    """A response that streams until the client goes away; close() says so on stderr."""

    def __init__(self):
        self.sent = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.sent += 1
        if self.sent > 6000:
            raise StopIteration
        time.sleep(0.01)
        return BLOCK

    def close(self):
        sys.stderr.write("endless response closed after %d blocks\n" % self.sent)
        sys.stderr.flush()


def endless(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Endless()


def error(environ, start_response):
    raise RuntimeError("the app failed on purpose")


def slow(environ, start_response):
    """Sleeps QUERY_STRING seconds, then answers SLOW_BLOCKS blocks (a drain must wait for it)."""
    sys.stderr.write("slow request started\n")
    sys.stderr.flush()
    time.sleep(float(environ.get("QUERY_STRING") or "2"))
    body = BLOCK * SLOW_BLOCKS
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
    return [body]


SLOW_BLOCKS = 4


def chunks(environ, start_response):
    """Five pieces 0.2 s apart: a streamed response, each piece as soon as it is made.

    With QUERY_STRING=buffered it asks nginx to buffer it after all (X-Accel-Buffering)."""
    headers = [("Content-Type", "text/plain")]
    if environ.get("QUERY_STRING") == "buffered":
        headers.append(("X-Accel-Buffering", "yes"))
    start_response("200 OK", headers)

    def pieces():
        for i in range(5):
            if i:
                time.sleep(0.2)
            yield b"chunk-%d\n" % i

    return pieces()


def flask_app(environ, start_response):
    # Imported on first use: only the Host test needs Flask.
    from frontends_flask import app

    return app(environ, start_response)


PAGES = {"/cookies": cookies, "/big": big, "/endless": endless, "/error": error, "/slow": slow, "/chunks": chunks}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/flask/"):
        return flask_app(environ, start_response)
    return PAGES.get(path, report)(environ, start_response)
