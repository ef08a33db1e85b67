"""An app that imports `logging` only inside a request (tests/bridge.rs): the server's logging
set-up must apply all the same, and the embedded server must not have imported it for the app.
It also imports `scgi_wsgi.wsgidir` late, which the server makes on demand."""

import sys

LOADED_AT_START = sorted(m for m in ("logging", "traceback", "scgi_wsgi.wsgidir") if m in sys.modules)


def application(environ, start_response):
    import logging

    logging.getLogger("latelog").info("logged from a late import")
    import scgi_wsgi.wsgidir

    body = "loaded at start: %s; wsgidir has %s\n" % (
        ",".join(LOADED_AT_START) or "none",
        "application" if callable(getattr(scgi_wsgi.wsgidir, "application", None)) else "no application",
    )
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
