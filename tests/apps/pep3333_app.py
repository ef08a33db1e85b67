"""WSGI app for tests/pep3333.rs: one route per PEP 3333 rule the server must follow.

Each route does one thing an app is allowed (or not allowed) to do; what the app saw
is reported on stderr as lines starting with "pep3333:" so the test can check both
sides of the exchange.
"""

import gzip
import io
import os
import sys
from urllib.parse import parse_qs

TEXT = [("Content-Type", "text/plain")]


def note(message):
    print("pep3333: " + message, file=sys.stderr, flush=True)


def query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


class Tracked:
    """An iterable over fixed chunks whose close() is reported."""

    def __init__(self, tag, chunks, fail_after=None):
        self.tag = tag
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.fail_after is not None and self.index >= self.fail_after:
            raise RuntimeError("failing mid-iteration on purpose")
        if self.index >= len(self.chunks):
            raise StopIteration
        self.index += 1
        return self.chunks[self.index - 1]

    def close(self):
        note("close called: " + self.tag)


class Endless:
    """Yields 64 KiB chunks until closed (bounded, so a broken server cannot spin forever)."""

    def __init__(self, tag):
        self.tag = tag
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.count += 1
        if self.count > 16384:  # 1 GiB
            raise RuntimeError("nobody stopped the endless response")
        return b"e" * 65536

    def close(self):
        note("close called: %s after %d chunks" % (self.tag, self.count))


class UpperFile(io.FileIO):
    """A real file whose read() changes what it reads: what it gives is the body."""

    def read(self, *args):
        return super().read(*args).upper()


class NoReadFile(io.FileIO):
    """A real file that notes its closing. It keeps FileIO's read(), so the server may send it
    from the descriptor (tests/pep3333.rs checks under strace that it does)."""

    def close(self):
        if not self.closed:
            note("file closed")
        super().close()


class TrackedBytesIO(io.BytesIO):
    def close(self):
        if not self.closed:
            note("bytesio closed")
        super().close()


def pattern(size):
    """Deterministic bytes the test can recompute: the byte at offset i is i*7 mod 251."""
    block = bytes((i * 7) % 251 for i in range(251 * 256))
    out = block * (size // len(block) + 1)
    return out[:size]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = query(environ)

    if path == "/second-call":
        start_response("200 OK", TEXT)
        try:
            start_response("404 Not Found", TEXT)
        except Exception as e:
            return [("second call raised %s" % type(e).__name__).encode()]
        return [b"second call was accepted"]

    if path == "/second-call-uncaught":
        start_response("200 OK", TEXT)
        start_response("201 Created", TEXT)
        return [b"not reached"]

    if path == "/exc-info-before-head":
        start_response("200 OK", TEXT + [("X-First", "yes")])
        try:
            raise ValueError("the app's own failure")
        except ValueError:
            start_response("503 Service Unavailable", [("Content-Type", "text/html")], sys.exc_info())
        return [b"<p>app error page</p>"]

    if path == "/exc-info-after-head":
        write = start_response("200 OK", TEXT)
        write(b"partial ")
        try:
            raise ValueError("late failure")
        except ValueError as original:
            try:
                start_response("500 Internal Server Error", TEXT, sys.exc_info())
            except BaseException as again:
                note("exc_info re-raised the original: %s" % (again is original))
                raise
        return [b"not reached"]

    if path == "/hop":
        start_response("200 OK", TEXT + [(q["name"], q.get("value", "x"))])
        return [b"hop-by-hop header accepted"]

    if path == "/str-chunk":
        start_response("200 OK", TEXT)
        return ["a str, not bytes"]

    if path == "/str-chunk-after-empty":
        start_response("200 OK", TEXT)
        return [b"", "a str, not bytes"]

    if path == "/str-body":
        start_response("200 OK", TEXT)
        return "a str returned as the whole body"

    if path == "/write-str":
        write = start_response("200 OK", TEXT)
        write("a str, not bytes")
        return [b"not reached"]

    if path == "/write-mixed":
        write = start_response("200 OK", TEXT)
        write(b"one ")
        write(b"two ")
        return [b"three ", b"four"]

    if path == "/generator":
        start_response("200 OK", TEXT)

        def gen():
            for word in (b"alpha ", b"", b"beta ", b"gamma"):
                yield word

        return gen()

    if path == "/empty-then-error":
        start_response("200 OK", TEXT)

        def gen():
            yield b""
            raise RuntimeError("failing after an empty first chunk")

        return gen()

    if path == "/big-stream":
        size = int(q["size"])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            data = pattern(size)
            step = 65536
            try:
                for start in range(0, size, step):
                    yield data[start : start + step]
                    note("big-stream yielded %d" % min(start + step, size))
                note("big-stream done")
            finally:
                note("big-stream generator closed")

        return gen()

    if path == "/mixed-sizes":
        # Chunks of very different sizes (some larger than a socket buffer), and with
        # write=1 a few through write(): their concatenation is pattern(MIXED_TOTAL).
        sizes = [100, 3 << 20, 1, 1000, 70000, 5, 65536, 2 << 20, 7]
        data = pattern(sum(sizes))
        pieces = []
        at = 0
        for size in sizes:
            pieces.append(data[at : at + size])
            at += size
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        if q.get("write") == "1":
            for piece in pieces[:3]:
                write(piece)
            pieces = pieces[3:]
        return iter(pieces)

    if path == "/close-normal":
        start_response("200 OK", TEXT)
        return Tracked("normal", [b"first ", b"second"])

    if path == "/close-error":
        start_response("200 OK", TEXT)
        return Tracked("error", [b"first ", b"second"], fail_after=1)

    if path == "/close-error-before-body":
        start_response("200 OK", TEXT)
        return Tracked("error-before-body", [b"x"], fail_after=0)

    if path == "/close-gone":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless("gone")

    if path == "/cl-over":
        start_response("200 OK", TEXT + [("Content-Length", "5")])
        return [b"01234", b"56789"]

    if path == "/cl-over-write":
        write = start_response("200 OK", TEXT + [("Content-Length", "5")])
        write(b"0123456789")
        return []

    if path == "/no-content":
        # 204 and 304 have no body: no Content-Length is made up for them.
        start_response(q.get("status", "204 No Content"), [])
        return [b""]

    if path == "/cl-twice":
        start_response("200 OK", TEXT + [("Content-Length", "5"), ("Content-Length", q.get("second", "5"))])
        return [b"01234"]

    if path == "/cl-under":
        start_response("200 OK", TEXT + [("Content-Length", "100")])
        return [b"short", b" body"]

    if path == "/file":
        name = q["path"]
        kind = q.get("kind", "real")
        headers = [("Content-Type", "application/octet-stream")]
        if "cl" in q:
            headers.append(("Content-Length", q["cl"]))
        if kind == "real":
            f = NoReadFile(name, "rb")
        elif kind == "buffered":
            f = open(name, "rb")
        elif kind == "gzip":
            # The same bytes through gzip: the wrapper has a fileno(), of the packed file.
            packed = name + ".gz"
            with open(name, "rb") as src, gzip.open(packed, "wb") as out:
                out.write(src.read())
            f = gzip.open(packed, "rb")
            os.unlink(packed)
        elif kind == "upper":
            f = UpperFile(name, "rb")
        elif kind == "bytesio":
            with open(name, "rb") as src:
                f = TrackedBytesIO(src.read())
        else:
            raise ValueError("unknown kind " + kind)
        if "seek" in q:
            f.seek(int(q["seek"]))
        if "readfirst" in q:
            # A buffered reader reads ahead: only tell() knows where the app stands.
            f.read(int(q["readfirst"]))
        if q.get("unlink") == "1":
            os.unlink(name)
        wrapper = environ["wsgi.file_wrapper"]
        write = start_response("200 OK", headers)
        if "prefix" in q:
            write(q["prefix"].encode())
        return wrapper(f, 32768)

    start_response("404 Not Found", TEXT)
    return [b"no such route"]
