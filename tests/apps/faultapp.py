"""Test app for fault injection: each path misbehaves in one way.

Served with -A. Requests that block wait on named events that /release sets, so tests
never depend on timing.
"""

import collections
import threading
import time

_events = {}
_events_lock = threading.Lock()
# How many times each kind of iterable was closed (a count, so long runs do not grow it).
_closed = collections.Counter()


def _event(name):
    with _events_lock:
        return _events.setdefault(name, threading.Event())


def _text(start_response, text, status="200 OK"):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ):
    return environ.get("QUERY_STRING", "")


def ok(environ, start_response):
    return _text(start_response, "ok")


def sleep(environ, start_response):
    time.sleep(float(_query(environ) or "0.1"))
    return _text(start_response, "slept")


_barriers = {}


def barrier(environ, start_response):
    """Returns once QUERY_STRING requests are inside at the same time (so that many workers are
    free), or 503 after 20 s."""
    parties = int(_query(environ))
    with _events_lock:
        gate = _barriers.setdefault(parties, threading.Barrier(parties))
    try:
        gate.wait(20)
    except threading.BrokenBarrierError:
        gate.reset()
        return _text(start_response, "only some of %d requests got a worker" % parties, "503 Service Unavailable")
    return _text(start_response, "together")


def raise_at_call(environ, start_response):
    raise ValueError("deliberate failure at call")


class EvilError(Exception):
    """An exception whose str() and repr() fail too."""

    def __str__(self):
        raise RuntimeError("str() of the exception fails as well")

    def __repr__(self):
        raise RuntimeError("repr() of the exception fails as well")


def raise_evil(environ, start_response):
    raise EvilError()


def raise_system_exit(environ, start_response):
    raise SystemExit(3)


def raise_keyboard_interrupt(environ, start_response):
    raise KeyboardInterrupt()


def raise_in_first_next(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError("deliberate failure before the first chunk")
    yield b"never"


def raise_mid_iteration(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first part\n"
    raise RuntimeError("deliberate failure mid-iteration")


class _CloseRaises:
    def __iter__(self):
        yield b"whole "
        yield b"body"

    def close(self):
        _closed["close-raises"] += 1
        raise RuntimeError("deliberate failure in close()")


def raise_in_close(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _CloseRaises()


def not_iterable(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return 42


def hang(environ, start_response):
    """Blocks until /release?NAME (or ten minutes): an app that never answers."""
    name = _query(environ)
    _event(name + ".started").set()
    _event(name).wait(600)
    return _text(start_response, "released " + name)


def started(environ, start_response):
    return _text(start_response, "yes" if _event(_query(environ) + ".started").is_set() else "no")


def release(environ, start_response):
    _event(_query(environ)).set()
    return _text(start_response, "released")


def huge_headers(environ, start_response):
    """QUERY_STRING bytes of headers, as 1000-byte header lines."""
    total = int(_query(environ) or str(1 << 20))
    count = max(1, total // 1000)
    headers = [("X-Filler-%d" % i, "v" * 980) for i in range(count)]
    start_response("200 OK", [("Content-Type", "text/plain")] + headers)
    return [b"after huge headers"]


def huge_header_value(environ, start_response):
    """One header whose value is QUERY_STRING bytes long."""
    total = int(_query(environ) or str(1 << 20))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Big", "v" * total)])
    return [b"after a huge header"]


class _Stream:
    """64 KiB chunks, many of them; records its close()."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        block = b"x" * 65536
        for _ in range(self.chunks):
            yield block

    def close(self):
        _closed["stream"] += 1


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _Stream(int(_query(environ) or "1000"))


def closed(environ, start_response):
    return _text(start_response, ",".join(_closed.elements()))


def body_length(environ, start_response):
    data = environ["wsgi.input"].read()
    return _text(start_response, str(len(data)))


_stale = []


def keep_write(environ, start_response):
    """Keeps its write() callable for a later request (an app bug)."""
    _stale.append(start_response("200 OK", [("Content-Type", "text/plain")]))
    return iter([b"kept"])


def stale_write(environ, start_response):
    """Calls the write() of a response that ended long ago, with QUERY_STRING bytes."""
    size = int(_query(environ) or "1")
    try:
        _stale[-1](b"s" * size)
        outcome = "accepted"
    except Exception as e:
        outcome = "%s: %s" % (type(e).__name__, e)
    return _text(start_response, outcome)


ROUTES = {
    "/ok": ok,
    "/sleep": sleep,
    "/barrier": barrier,
    "/raise-at-call": raise_at_call,
    "/raise-evil": raise_evil,
    "/raise-system-exit": raise_system_exit,
    "/raise-keyboard-interrupt": raise_keyboard_interrupt,
    "/raise-in-first-next": raise_in_first_next,
    "/raise-mid-iteration": raise_mid_iteration,
    "/raise-in-close": raise_in_close,
    "/not-iterable": not_iterable,
    "/hang": hang,
    "/started": started,
    "/release": release,
    "/huge-headers": huge_headers,
    "/huge-header-value": huge_header_value,
    "/stream": stream,
    "/closed": closed,
    "/body-length": body_length,
    "/keep-write": keep_write,
    "/stale-write": stale_write,
}


def application(environ, start_response):
    handler = ROUTES.get(environ.get("PATH_INFO", ""))
    if handler is None:
        return _text(start_response, "no route", "404 Not Found")
    return handler(environ, start_response)
