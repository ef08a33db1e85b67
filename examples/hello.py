"""The example app: `scgi-wsgi -p examples -A hello` serves it."""


def application(environ, start_response):
    name = environ.get("QUERY_STRING") or "world"
    body = f"Hello, {name}! You asked for {environ['PATH_INFO'] or '/'}.\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
    return [body]


def wmain(*args):
    """ashd convention: called with the extra command-line arguments, returns the app."""
    return application
