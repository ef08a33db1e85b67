"""The benchmark app, served alike by every Python server in the run (see benches/run).

Routes: /hello (14 bytes), /big (100 KiB), /echo (the request body back), /sleep (10 ms, then
hello), /cpu (1 ms of computing, then hello).
"""

import time

HELLO = b"Hello, world!\n"
BIG = b"x" * (100 * 1024)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        body = HELLO
    elif path == "/big":
        body = BIG
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    elif path == "/cpu":
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        body = HELLO
    elif path == "/sleep":
        time.sleep(0.01)
        body = HELLO
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
