"""Test app that sets handlers of its own, at import, for signals the server handles."""

import signal
import sys


def _on_signal(signum, frame):
    print("signalapp's handler got", signum, file=sys.stderr, flush=True)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGUSR1, _on_signal)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
