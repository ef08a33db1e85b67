"""A handler module that fails at import in the way FAULT_AT_IMPORT names."""

import os
import threading

_fault = os.environ.get("FAULT_AT_IMPORT", "")

if _fault == "thread-then-raise":
    # A non-daemon thread that never ends: the process must still exit.
    threading.Thread(target=threading.Event().wait, name="stuck-at-import").start()
    raise RuntimeError("deliberate failure at import after starting a thread")
if _fault == "system-exit":
    raise SystemExit(7)
if _fault == "keyboard-interrupt":
    raise KeyboardInterrupt()
raise RuntimeError("deliberate failure at import")


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"unreachable"]
