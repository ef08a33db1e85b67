"""Test app for the external-interpreter mode: routes that end the worker process abruptly,
one that takes its time, and one that reports how a child process of the app finds SIGTERM."""

import os
import subprocess
import sys
import time


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
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept\n"]
    if path == "/worker-variables":
        names = sorted(name for name in os.environ if name.startswith("SCGI_WSGI_WORKER"))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr(names).encode()]
    if path == "/child-sigterm":
        probe = "import signal; print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("default %s" % out.strip()).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("pid %d" % os.getpid()).encode()]
