"""Test app for the observability options: statuses on demand, a leak, a hang, a nap.

Every request says on stderr that it reached the app, so that a test can tell one that
never did (--allow-from)."""

import os
import sys
import time

# What /leak keeps: the process's memory grows with every call.
_kept = []


def stuck_in_the_app():
    time.sleep(30)


def napping_in_the_app(seconds):
    time.sleep(seconds)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    print("observeapp saw %s" % path, file=sys.stderr, flush=True)
    status = "200 OK"
    if path == "/status":
        code = int(query or "200")
        status = "%d Status %d" % (code, code)
        body = b"status %d\n" % code
    elif path == "/fail":
        raise RuntimeError("deliberate failure")
    elif path == "/leak":
        # Written to, so that it is resident; at most a few per second and client.
        _kept.append(b"x" * (int(query or "8") << 20))
        time.sleep(0.05)
        body = str(os.getpid()).encode()
    elif path == "/stuck":
        stuck_in_the_app()
        body = b"woke up\n"
    elif path == "/nap":
        napping_in_the_app(float(query or "1"))
        body = b"rested\n"
    elif path == "/pid":
        body = str(os.getpid()).encode()
    else:
        body = b"ok\n"
    start_response(status, [("Content-Type", "text/plain")])
    return [body]
