"""Runs requests through a framework's own test client, for tests/frameworks.rs.

Usage: python3 fw_testclient.py flask|django|bottle < requests

Each input line is one request, tab-separated hex fields:
    METHOD  PATH (UTF-8, not percent-encoded)  QUERY_STRING  CONTENT_TYPE  BODY  COOKIE
For each request the output is:
    status CODE
    header NAME-HEX VALUE-HEX      (one line per header, in order; values as Latin-1)
    body BODY-HEX
    end
Flask uses its test client, Django its django.test.Client, Bottle (which has none)
werkzeug's generic WSGI test client.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def unhex(field):
    return bytes.fromhex(field)


def flask_client():
    import fw_flask

    client = fw_flask.app.test_client(use_cookies=False)
    return werkzeug_runner(client)


def bottle_client():
    from werkzeug.test import Client

    import fw_bottle

    return werkzeug_runner(Client(fw_bottle.application, use_cookies=False))


def werkzeug_runner(client):
    def run(method, path, query, ctype, body, cookie):
        headers = {"Host": "localhost"}
        if cookie:
            headers["Cookie"] = cookie
        kwargs = {"method": method, "query_string": query, "headers": headers}
        if body or ctype:
            kwargs["data"] = body
            kwargs["content_type"] = ctype
        resp = client.open(path, **kwargs)
        try:
            return resp.status_code, resp.headers.to_wsgi_list(), resp.get_data()
        finally:
            resp.close()

    return run


def django_client():
    import fw_django  # noqa: F401  (configures Django)
    from django.test import Client

    client = Client()

    def run(method, path, query, ctype, body, cookie):
        extra = {"HTTP_HOST": "localhost"}
        if cookie:
            extra["HTTP_COOKIE"] = cookie
        if query:
            extra["QUERY_STRING"] = query
        resp = client.generic(method, path, data=body, content_type=ctype or "application/octet-stream", **extra)
        try:
            headers = list(resp.items())
            # As django.core.handlers.wsgi.WSGIHandler adds them.
            headers += [("Set-Cookie", c.output(header="").strip()) for c in resp.cookies.values()]
            body = resp.getvalue()
            return resp.status_code, headers, body
        finally:
            resp.close()

    return run


def main():
    run = {"flask": flask_client, "django": django_client, "bottle": bottle_client}[sys.argv[1]]()
    out = sys.stdout
    for line in sys.stdin.read().splitlines():
        if not line:
            continue
        method, path, query, ctype, body, cookie = line.split("\t")
        status, headers, data = run(
            unhex(method).decode(),
            unhex(path).decode("utf-8"),
            unhex(query).decode("latin-1"),
            unhex(ctype).decode("latin-1"),
            unhex(body),
            unhex(cookie).decode("latin-1"),
        )
        out.write("status %d\n" % status)
        for name, value in headers:
            out.write("header %s %s\n" % (name.encode("latin-1").hex(), value.encode("latin-1").hex()))
        out.write("body %s\nend\n" % data.hex())
    out.flush()


if __name__ == "__main__":
    main()
