"""Serve WSGI applications straight from ``*.wsgi`` files: scgi-wsgi's ``ashd.wsgidir``.

Run as ``scgi-wsgi scgi_wsgi.wsgidir`` behind ashd's dirplex, which names the file a
request is for in ``SCRIPT_FILENAME`` (through callscgi). Each file is loaded once, as a
module of its own, and loaded again when its modification time changes. The application
is what the file's ``wmain()`` returns when it defines one, else its ``application``.

The handler is chosen by the ``X-Ash-Python-Handler`` request header when dirplex sets
it (``xset python-handler chain``), else by the file's extension: ``.wsgi`` and ``.wsgi3``
are served with ``chain``. Extra ``EXT=HANDLER`` arguments (``scgi-wsgi
scgi_wsgi.wsgidir py=chain``) add extensions.
"""

import logging
import os
import re
import sys
import threading
import types

log = logging.getLogger("wsgidir")


class _Entry:
    """One loaded file: its modification time, its module and its application."""

    __slots__ = ("mtime", "module", "app", "lock")

    def __init__(self):
        self.mtime = None
        self.module = None
        self.app = None
        self.lock = threading.Lock()


_entries = {}
_entries_lock = threading.Lock()


def _module_name(path):
    # A name of its own per file, so that pickle and dataclasses find the module.
    return "scgi_wsgi.wsgidir.loaded." + re.sub(r"\W", "_", path)


def _load(path, mtime):
    """Runs the file as a fresh module and returns (module, app)."""
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec")
    name = _module_name(path)
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
        if callable(getattr(module, "wmain", None)):
            app = module.wmain()
        elif hasattr(module, "application"):
            app = module.application
        else:
            raise LookupError("%s defines neither wmain() nor application" % path)
        if not callable(app):
            raise TypeError("the WSGI application of %s is not callable" % path)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module, app


def getapp(path):
    """The application in file ``path``, (re)loaded when its modification time changed."""
    mtime = os.stat(path).st_mtime_ns
    with _entries_lock:
        entry = _entries.setdefault(path, _Entry())
    if entry.mtime == mtime:
        return entry.app
    # One thread loads a file; the others wait for it rather than load it again.
    with entry.lock:
        if entry.mtime != mtime:
            if entry.module is not None:
                log.info("reloading %s (modified)", path)
            entry.module, entry.app = _load(path, mtime)
            entry.mtime = mtime
        return entry.app


def _error(start_response, status, text):
    body = text.encode("utf-8")
    start_response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]


def chain(environ, start_response):
    """Calls the application of the file named by ``SCRIPT_FILENAME``."""
    path = environ.get("SCRIPT_FILENAME")
    if not path:
        log.error("no SCRIPT_FILENAME in the request: scgi_wsgi.wsgidir serves files named by dirplex")
        return _error(start_response, "500 Internal Server Error", "No WSGI file named.\n")
    try:
        app = getapp(path)
    except FileNotFoundError:
        return _error(start_response, "404 Not Found", "Not found.\n")
    except Exception:
        log.exception("cannot load %s", path)
        return _error(start_response, "500 Internal Server Error", "The WSGI file could not be loaded.\n")
    return app(environ, start_response)


handlers = {"chain": chain}
extensions = {"wsgi": "chain", "wsgi3": "chain"}


def application(environ, start_response):
    """Dispatches to the handler dirplex asked for, or the one for the file's extension."""
    name = environ.get("HTTP_X_ASH_PYTHON_HANDLER")
    if name is None:
        ext = os.path.splitext(environ.get("SCRIPT_FILENAME", ""))[1].lstrip(".")
        name = extensions.get(ext)
    handler = handlers.get(name) if name else None
    if handler is None:
        log.error("no handler for %r (handler %r)", environ.get("SCRIPT_FILENAME"), name)
        return _error(start_response, "500 Internal Server Error", "No handler for this file.\n")
    return handler(environ, start_response)


def wmain(*args):
    """The handler-module entry point: ``EXT=HANDLER`` arguments add extensions."""
    for arg in args:
        ext, sep, name = arg.partition("=")
        if not sep or not ext or name not in handlers:
            raise ValueError(
                "argument %r: expected EXT=HANDLER with HANDLER one of %s" % (arg, ", ".join(handlers))
            )
        extensions[ext.lstrip(".")] = name
    return application
