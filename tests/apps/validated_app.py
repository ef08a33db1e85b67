"""A WSGI app wrapped in wsgiref.validate.validator, for tests/pep3333.rs.

Every validator warning is an error here, so any complaint about the server (environ,
wsgi.input, start_response, iteration, close) raises inside the request: the server
answers 500 and logs the traceback, which the test looks for. The "/bad-*" routes
break the rules on purpose, to show that complaints do surface.
"""

import sys
import warnings

warnings.simplefilter("error")

from wsgiref.validate import validator  # noqa: E402

TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def inner(environ, start_response):
    path = environ["PATH_INFO"]

    if path == "/write":
        write = start_response("200 OK", TEXT)
        write(b"written ")
        return [b"returned"]

    if path == "/generator":
        start_response("200 OK", TEXT)

        def gen():
            yield b"one "
            yield b""
            yield b"two"

        return gen()

    if path == "/post":
        body = environ["wsgi.input"]
        first = body.read(5)
        line = body.readline()
        rest = b"".join(body)
        start_response("200 OK", TEXT)
        return [b"|".join([first, line, rest])]

    if path == "/readlines":
        lines = environ["wsgi.input"].readlines()
        start_response("200 OK", TEXT)
        return [("%d lines" % len(lines)).encode()]

    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1024)

    if path == "/exc-info":
        start_response("200 OK", TEXT)
        try:
            raise KeyError("nothing here")
        except KeyError:
            start_response("404 Not Found", TEXT, sys.exc_info())
        return [b"custom not found page"]

    if path == "/empty":
        start_response("204 No Content", [])
        return []

    if path == "/bad-no-content-type":
        start_response("200 OK", [("X-Only", "this")])
        return [b"should not get through"]

    if path == "/bad-str-chunk":
        start_response("200 OK", TEXT)
        return ["a str"]

    if path.startswith("/echo"):
        start_response("200 OK", TEXT)
        return [
            "|".join(
                [
                    environ["REQUEST_METHOD"],
                    environ["PATH_INFO"].encode("latin-1").decode("utf-8"),
                    environ.get("QUERY_STRING", ""),
                ]
            ).encode("utf-8")
        ]

    start_response("404 Not Found", TEXT)
    return [b"no such route"]


application = validator(inner)
