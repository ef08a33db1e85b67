"""Test app for worker processes: reports its pid and identity, sleeps, computes, hangs, fails."""

import logging
import multiprocessing
import os
import subprocess
import sys
import time


def _square(n):
    return n * n


# A pool forked at import, kept for the life of the process (the child processes hold copies
# of every descriptor the server had open then).
POOL = multiprocessing.get_context("fork").Pool(1) if os.environ.get("PROCAPP_FORK_POOL") else None


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if path == "/pid":
        body = str(os.getpid()).encode()
    elif path == "/env":
        body = "multiprocess={} multithread={}".format(
            environ["wsgi.multiprocess"], environ["wsgi.multithread"]
        ).encode()
    elif path == "/ids":
        body = "uid={} gid={} groups={} cwd={}".format(
            os.getuid(), os.getgid(), ",".join(map(str, os.getgroups())), os.getcwd()
        ).encode()
    elif path == "/sleep":
        print("sleeping in", os.getpid(), file=sys.stderr, flush=True)
        time.sleep(float(query or "0.5"))
        body = b"slept " + str(os.getpid()).encode()
    elif path == "/spin":
        until = time.perf_counter() + float(query or "0.02")
        while time.perf_counter() < until:
            pass
        body = str(os.getpid()).encode()
    elif path == "/hang":
        print("hanging in", os.getpid(), file=sys.stderr, flush=True)
        time.sleep(60)
        body = b"woke up"
    elif path == "/fail":
        raise RuntimeError("deliberate failure")
    elif path == "/log-error":
        try:
            raise ValueError("logged on purpose")
        except ValueError:
            logging.getLogger("procapp").exception("caught and logged")
        body = b"logged"
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in [b"one ", b"two\n"])
    elif path == "/stdin":
        # What the app's standard input is, and a child process's.
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.path.realpath('/proc/self/fd/0'))"],
            stdout=subprocess.PIPE,
            check=True,
        )
        own = os.path.realpath("/proc/self/fd/0")
        body = ("%s %s" % (own, child.stdout.decode().strip())).encode()
    elif path == "/pool":
        # Child processes forked from the server's (multiprocessing's fork start method, the
        # default before Python 3.14); leaving the block terminates them with SIGTERM.
        with multiprocessing.get_context(query or "fork").Pool(2) as pool:
            body = b" ".join(b"%d" % n for n in pool.map(_square, range(4)))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
