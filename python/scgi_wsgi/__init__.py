"""scgi-wsgi: serve Python WSGI applications over SCGI.

This is the pip-installed form of the server: the ``scgi-wsgi`` command of the environment
it is installed into, and ``python -m scgi_wsgi``, run :func:`main`, which runs the server
(written in Rust, the extension module ``scgi_wsgi._core``) inside that Python process, so
the app sees this environment's interpreter and packages. ``scgi_wsgi.wsgidir`` serves
``*.wsgi`` files behind ashd's dirplex; ``scgi-request`` sends one request (a health
check). ``scgi-wsgi --help`` lists the options.
"""

import os
import sys

__all__ = ["main", "request"]


def main(argv=None):
    """Runs the server with the command line ``argv`` (the program name first; by default
    this process's), then ends the process with the server's exit status.

    Does not return: the server owns the process from here on (its signals, its worker
    processes, its exit).
    """
    if argv is None:
        argv = sys.argv
        # Python put the directory of the command (or, for -m, the working directory) first
        # on sys.path; the app's modules are found through -p, as with the binary. Under
        # -P, -I or PYTHONSAFEPATH it put nothing there, and the first entry is a real one.
        script_dir = os.path.dirname(os.path.abspath(argv[0])) if argv and argv[0] else None
        safe_path = getattr(sys.flags, "safe_path", False) or sys.flags.isolated
        if not safe_path and sys.path and sys.path[0] in ("", os.getcwd(), script_dir):
            del sys.path[0]
    from scgi_wsgi import _core

    _core.main([os.fspath(arg) for arg in argv])


def request(argv=None):
    """``scgi-request``: sends one SCGI request and prints the response (``scgi-request
    --help``); exits with 0 below status 400, 1 for 4xx/5xx, 2 when there is no response."""
    from scgi_wsgi import _core

    sys.exit(_core.request([os.fspath(arg) for arg in (sys.argv if argv is None else argv)]))
