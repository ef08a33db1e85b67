"""Test app for response splitting: puts the text a test chose into the status, a header name
or a header value, and lets the server deal with it.

QUERY_STRING is ``field=FIELD&text=HEX``: HEX is the text as UTF-8 (lone surrogates allowed).
Nothing is caught here: what the server does with the text is the point.
"""

import sys


class TextSubclass(str):
    """A str subclass whose str() says something else: the server must use the real text."""

    def __str__(self):
        return "Innocent"


def application(environ, start_response):
    query = dict(part.split("=", 1) for part in environ["QUERY_STRING"].split("&"))
    field = query["field"]
    text = bytes.fromhex(query["text"]).decode("utf-8", "surrogatepass")
    status, name, value = "200 OK", "X-Test", "plain"
    if field == "status":
        status = text
    elif field == "name":
        name = text
    elif field == "value":
        value = text
    elif field == "name-subclass":
        name = TextSubclass(text)
    elif field == "value-subclass":
        value = TextSubclass(text)
    elif field == "value-bytes":
        value = text.encode("latin-1")
    elif field == "value-exc-info":
        # The first head is replaced through exc_info; the replacement is checked too.
        start_response("200 OK", [("X-Test", "plain")])
        try:
            raise RuntimeError("replaced head")
        except RuntimeError:
            start_response("500 Replaced", [("X-Test", text)], sys.exc_info())
        return [b"body"]
    else:
        raise ValueError("unknown field " + field)
    start_response(status, [("Content-Type", "text/plain"), (name, value)])
    return [b"body"]
