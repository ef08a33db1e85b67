"""Test app for the external-interpreter mode: routes that end the worker process abruptly."""

import os


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/die-before":
        os._exit(3)
    if path == "/die-after":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            yield b"partial response\n"
            os._exit(4)

        return body()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("pid %d" % os.getpid()).encode()]
