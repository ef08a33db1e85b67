"""Test app for the bridge: each path exercises one part of the server.

Served with -A (``application``) or through ``wmain(*args)``.
"""

import json
import logging
import os
import sys
import time

log = logging.getLogger("bridgeapp")


def _json(start_response, data, status="200 OK"):
    body = json.dumps(data, ensure_ascii=True, sort_keys=True).encode("ascii")
    start_response(status, [("Content-Type", "application/json")])
    return [body]


def _hex(value):
    return value.hex() if isinstance(value, bytes) else repr(value)


def _environ(environ, start_response):
    report = {}
    for key, value in environ.items():
        if isinstance(value, str):
            # Code points tell Latin-1 decoding apart from UTF-8 decoding.
            report[key] = {"str": value, "latin1_hex": value.encode("latin-1").hex()}
        else:
            report[key] = {"type": type(value).__name__, "repr": repr(value)}
    report["_errors_is_stderr"] = environ["wsgi.errors"] is sys.stderr
    return _json(start_response, report)


def _input(environ, start_response):
    stream = environ["wsgi.input"]
    op = environ.get("QUERY_STRING", "")
    if op == "read":
        result = [_hex(stream.read()), _hex(stream.read())]
    elif op == "read-n":
        result = [_hex(stream.read(3)), _hex(stream.read(4)), _hex(stream.read(1000)), _hex(stream.read(5))]
    elif op == "read-none":
        result = [_hex(stream.read(None)), _hex(stream.read(-1))]
    elif op == "readline":
        result = [_hex(stream.readline()) for _ in range(5)]
    elif op == "readline-n":
        result = [_hex(stream.readline(2)), _hex(stream.readline(100)), _hex(stream.readline(-1)), _hex(stream.readline())]
    elif op == "readlines":
        result = [_hex(line) for line in stream.readlines()]
    elif op == "readlines-hint":
        result = [_hex(line) for line in stream.readlines(5)] + ["|"] + [_hex(stream.read())]
    elif op == "iter":
        result = [_hex(line) for line in stream]
    elif op == "size":
        data = stream.read()
        result = [len(data), _hex(data[:16]), _hex(data[-16:]), _hex(stream.read())]
    else:
        result = ["unknown op " + op]
    return _json(start_response, result)


def _interp(environ, start_response):
    info = {
        "prefix": sys.prefix,
        "base_prefix": sys.base_prefix,
        "version": sys.version,
        "executable": sys.executable,
        "path": sys.path,
        "argv": sys.argv,
    }
    try:
        import flask

        info["flask_file"] = flask.__file__
    except ImportError as e:
        info["flask_file"] = "ImportError: %s" % e
    try:
        import venvonly

        info["venvonly"] = venvonly.MARK
    except ImportError:
        info["venvonly"] = None
    try:
        import pip_only_mark

        info["pip_only"] = pip_only_mark.MARK
    except ImportError:
        info["pip_only"] = None
    return _json(start_response, info)


def _fail_before(environ, start_response):
    raise ValueError("deliberate failure before the response")


def _fail_after(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part\n"
    raise RuntimeError("deliberate failure mid-response")


class _Closing:
    closed = []

    def __init__(self, fail):
        self.fail = fail

    def __iter__(self):
        yield b"one "
        if self.fail:
            raise KeyError("mid-iteration")
        yield b"two"

    def close(self):
        _Closing.closed.append(self.fail)


def _closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing(environ.get("QUERY_STRING") == "fail")


def _closed_count(environ, start_response):
    return _json(start_response, _Closing.closed)


def _sleep(environ, start_response):
    seconds = float(environ.get("QUERY_STRING") or "0.5")
    time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept %.2f\n" % seconds]


def _log(environ, start_response):
    log.info("hello from the app")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged\n"]


def _bad_header(environ, start_response):
    which = environ.get("QUERY_STRING", "")
    value = {"crlf": "a\r\nInjected: yes", "lf": "a\nInjected: yes", "nul": "a\x00b", "nonlatin": "caf\u20ac"}[which]
    try:
        start_response("200 OK", [("X-Test", value)])
    except (ValueError, TypeError) as e:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("refused: %s" % type(e).__name__).encode()]
    return [b"accepted"]


def _headers_then_empty(environ, start_response):
    start_response("204 No Content", [("X-Empty", "yes")])
    return []


def _pid(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


ROUTES = {
    "/env": _environ,
    "/input": _input,
    "/interp": _interp,
    "/fail-before": _fail_before,
    "/fail-after": _fail_after,
    "/closing": _closing,
    "/closed": _closed_count,
    "/sleep": _sleep,
    "/log": _log,
    "/bad-header": _bad_header,
    "/empty": _headers_then_empty,
    "/pid": _pid,
}

ARGS = ()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/args":
        return _json(start_response, list(ARGS))
    handler = ROUTES.get(path)
    if handler is None:
        return _json(start_response, {"error": "no route", "path": path}, "404 Not Found")
    return handler(environ, start_response)


def wmain(*args):
    global ARGS
    ARGS = args
    return application
