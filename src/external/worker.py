"""scgi-wsgi external-interpreter worker.

Runs a WSGI app under any Python 3.8+ (CPython, PyPy, ...) for the scgi-wsgi front, which
keeps the sockets, parsing, limits and timeouts. Standard library only.

The front talks to this program over one Unix socket (inherited fd) in frames:

    frame = TYPE (1 byte) ID (4 bytes, big endian) LENGTH (4 bytes, big endian) PAYLOAD

Front -> worker:  R environ pairs (NAME NUL VALUE NUL ...), B body bytes, E end of body (call
the app), W bytes the client has taken so far (8-byte count), C client gone, K (id 0) send the
Python stacks of the requests whose ids (4 bytes each) are the payload.
Worker -> front:  Y ready (id 0), X start-up failure (id 0, one-line message), H head
(STATUS NUL NAME NUL VALUE NUL ...), D body bytes, F finished, A abort (cut the connection;
payload "error" when the app raised), S failed before anything was sent (the front answers 500), K a request's Python stack
(empty when it runs no Python), then K with id 0 after the last one asked for.
"""

import io
import json
import logging
import logging.handlers
import os
import re
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import traceback
import types

FRAME = struct.Struct(">cII")
SPILL = 1 << 20
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade")
)
TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

# What follows "LEVEL: " on every line: "worker PID: " (the scgi-wsgi worker process that
# started this one) under a master, as on the front's own lines.
LOG_TAG = ""


def printable(text, keep_tab=False):
    """Control characters (line breaks too) as escapes: client bytes stay on their line."""
    escape = {"\n": "\\n", "\r": "\\r"}
    text = _CONTROL.sub(lambda m: escape.get(m.group(), "\\x%02x" % ord(m.group())), text)
    return text if keep_tab else text.replace("\t", "\\x09")


def log_line(level, name, message):
    lines = "".join(
        "scgi-wsgi[%s]: %s: %s%s\n" % (name, level, LOG_TAG, printable(line, True)) for line in message.splitlines()
    )
    try:
        os.write(2, lines.encode("utf-8", "replace"))
    except OSError:
        pass


class PrefixEveryLine(logging.Formatter):
    """`scgi-wsgi[NAME]: LEVEL: ` on every line of a record, its traceback included (the
    embedded interpreter's logging set-up does the same)."""

    def format(self, record):
        text = logging.Formatter.format(self, record)
        prefix = "scgi-wsgi[%s]: %s: %s" % (record.name, record.levelname, LOG_TAG)
        return "\n".join(prefix + printable(line, True) for line in text.splitlines() or [""])


class ClientGone(BrokenPipeError):
    pass


class Channel:
    """The socket to the front; frames from many threads, one at a time."""

    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send_file(self, rid, fd, offset, length):
        """A 'P' frame (offset, length) carrying a duplicate of `fd` to the front."""
        data = FRAME.pack(b"P", rid, 16) + struct.pack(">QQ", offset, length)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
        with self.lock:
            sent = self.sock.sendmsg([data], rights)
            if sent < len(data):
                self.sock.sendall(data[sent:])

    def send(self, kind, rid, payload=b""):
        header = FRAME.pack(kind, rid, len(payload))
        with self.lock:
            if len(payload) < 65536:
                self.sock.sendall(header + payload)
            else:
                self.sock.sendall(header)
                self.sock.sendall(payload)


PLAIN_FILES = (io.FileIO, io.BufferedReader, io.BufferedRandom)


def reads_its_own_bytes(filelike):
    """Whether reading `filelike` gives its file's bytes unchanged: one of the classes
    open(path, "rb") returns, or a subclass that keeps their read()."""
    kind = type(filelike)
    for base in PLAIN_FILES:
        if issubclass(kind, base):
            return kind.read is base.read
    return False


class InputStream:
    """wsgi.input over the complete body (bytes in memory, or a temporary file)."""

    def __init__(self, stream, length):
        self._stream = stream
        self._left = length
        stream.seek(0)

    def read(self, size=-1):
        if size is None or size < 0 or size > self._left:
            size = self._left
        data = self._stream.read(size)
        self._left -= len(data)
        return data

    def readline(self, size=-1):
        if size is None or size < 0 or size > self._left:
            size = self._left
        data = self._stream.readline(size)
        self._left -= len(data)
        return data

    def readlines(self, hint=-1):
        lines, total = [], 0
        while self._left > 0 and (hint is None or hint <= 0 or total < hint):
            line = self.readline()
            total += len(line)
            lines.append(line)
        return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self):
        return True

    def close(self):
        pass


class FileWrapper:
    """wsgi.file_wrapper: iterates a file-like in blocks."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def quoted(text):
    """Double-quoted, as the embedded server's messages show names and values."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def latin1(value, what):
    if not isinstance(value, str):
        raise TypeError("%s must be a str, not %s" % (what, type(value).__name__))
    try:
        # A str subclass counts by its text, whatever its methods do (as in the embedded mode).
        return str.encode(value, "latin-1")
    except UnicodeEncodeError:
        raise ValueError("%s %s has a character that is not Latin-1" % (what, quoted(value))) from None


def field_text(data):
    return all(b == 9 or (32 <= b != 127) for b in data)


def check_head(status, headers):
    """Validates like the embedded server; returns (head fields, content length)."""
    raw_status = latin1(status, "status")
    ok = (len(raw_status) >= 3 and raw_status[:3].isdigit() and raw_status[:1] != b"0"
          and (len(raw_status) == 3 or raw_status[3:4] == b" ") and field_text(raw_status))
    if not ok:
        raise ValueError("status %s is not a three-digit code followed by a space and a reason phrase" % quoted(status))
    if not isinstance(headers, (list, tuple)):
        raise TypeError("headers must be a list of (name, value) tuples, not %s" % type(headers).__name__)
    fields = [raw_status]
    length = None
    for item in headers:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError("a header must be a (name, value) tuple, not %r" % (item,))
        name = latin1(item[0], "header name")
        value = latin1(item[1], "header value")
        if not name or any(b not in TOKEN for b in name):
            raise ValueError("header name %s is not a valid token" % quoted(item[0]))
        if not field_text(value):
            raise ValueError("header %s has a control character (CR, LF, NUL, ...) in its value" % quoted(item[0]))
        lower = name.lower().decode("ascii")
        if lower in HOP_BY_HOP:
            raise ValueError("hop-by-hop header %s is not allowed from a WSGI app" % quoted(item[0]))
        if lower == "status":
            raise ValueError("a 'Status' header is not allowed; pass the status to start_response()")
        if lower == "content-length":
            text = value.strip()
            if not text.isdigit():
                raise ValueError("Content-Length %s is not a number" % quoted(item[1].strip()))
            if length is not None:
                if int(text) != length:
                    raise ValueError("conflicting Content-Length headers (%d and %s)" % (length, text.decode()))
                continue  # The same value twice: sent once.
            length = int(text)
        fields += [name, value]
    return fields, length


class Request:
    def __init__(self, worker, rid, pairs):
        self.worker = worker
        self.rid = rid
        self.pairs = pairs
        self.body = io.BytesIO()
        self.body_len = 0
        self.acked = 0
        self.sent = 0
        self.gone = False
        self.cond = threading.Condition()
        self.pending = None
        self.head_sent = False
        self.length = None
        self.body_sent = 0
        self.overflow_logged = False
        self.environ = None
        self.ended = False

    def add_body(self, data):
        self.body_len += len(data)
        if self.body_len > SPILL and isinstance(self.body, io.BytesIO):
            spilled = tempfile.TemporaryFile()
            spilled.write(self.body.getvalue())
            self.body = spilled
        self.body.write(data)

    # Flow control: at most `window` bytes may be sent that the client has not taken yet.
    def wait_room(self):
        with self.cond:
            while self.sent - self.acked > self.worker.window and not self.gone:
                self.cond.wait()
            if self.gone:
                raise ClientGone("the client closed the connection")

    def ack(self, count):
        with self.cond:
            self.acked = max(self.acked, count)
            self.cond.notify_all()
        if self.worker.plexer is not None:
            self.worker.plexer.poke()

    def cancel(self):
        with self.cond:
            self.gone = True
            self.cond.notify_all()
        if self.worker.plexer is not None:
            self.worker.plexer.poke()

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            if self.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.pending is not None or self.head_sent:
            raise RuntimeError("start_response() called a second time without exc_info")
        fields, length = check_head(status, headers)
        self.pending = fields
        self.length = length
        return self.write

    def end_with(self, kind, payload=b""):
        # A write() the app kept and calls later must fail, not queue into a finished stream.
        self.ended = True
        self.worker.channel.send(kind, self.rid, payload)

    def send(self, data, wait=True):
        if self.ended:
            raise BrokenPipeError("write() called after its response ended")
        if self.gone:
            raise ClientGone("the client closed the connection")
        if self.length is not None:
            allowed = max(self.length - self.body_sent, 0)
            if len(data) > allowed:
                if not self.overflow_logged:
                    log_line("WARNING", "wsgi", "app sent more than its Content-Length of %d bytes; the excess is dropped" % self.length)
                    self.overflow_logged = True
                data = data[:allowed]
        channel = self.worker.channel
        if not self.head_sent:
            if self.pending is None:
                raise RuntimeError("the app produced body data before calling start_response()")
            channel.send(b"H", self.rid, b"\0".join(self.pending) + b"\0")
            self.head_sent = True
        if data:
            self.body_sent += len(data)
            self.sent += len(data)
            channel.send(b"D", self.rid, data)
            if wait:
                self.wait_room()

    def has_room(self):
        return self.gone or self.sent - self.acked <= self.worker.window

    def write(self, data):
        if self.worker.plexer is not None:
            raise RuntimeError("write() is not supported under the rplex handling model: return the body "
                               "as an iterable, or use -t free or -t pool")
        if type(data) is not bytes:
            raise TypeError("write() takes bytes, not %s" % type(data).__name__)
        if not self.head_sent and self.pending is None:
            raise RuntimeError("write() called before start_response()")
        self.send(data)

    def finish(self):
        if not self.head_sent:
            if self.pending is None:
                raise RuntimeError("the app returned without calling start_response()")
            self.send(b"")
        if self.length is not None and self.body_sent < self.length and self.method() != "HEAD":
            log_line("WARNING", "wsgi", "response shorter than its Content-Length: %d of %d bytes; connection cut"
                     % (self.body_sent, self.length))
            self.end_with(b"A")
        else:
            self.end_with(b"F")

    def may_add_length(self):
        """Whether a Content-Length may be added: not to 1xx, 204 or 304 responses, which
        have no body (RFC 9110)."""
        code = self.pending[0][:3] if self.pending else b""
        return not code.startswith(b"1") and code not in (b"204", b"304")

    def method(self):
        return (self.environ or {}).get("REQUEST_METHOD", "")

    def describe(self):
        env = self.environ or {}
        uri = env.get("REQUEST_URI") or env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")
        return "%s %s" % (printable(env.get("REQUEST_METHOD", "")), printable(uri))

    def fail(self, what):
        if self.gone:
            self.end_with(b"A")
            return
        text = traceback.format_exc().rstrip()
        if self.head_sent:
            log_line("ERROR", "wsgi", "the app failed after the response began; connection cut for %s:\n%s" % (self.describe(), text))
            self.end_with(b"A", b"error")
        else:
            log_line("ERROR", "wsgi", "%s for %s:\n%s" % (what, self.describe(), text))
            self.end_with(b"S")

    def send_file(self, wrapper):
        """Hands a file_wrapper's real file to the front, which sends it with sendfile."""
        filelike = wrapper.filelike
        # Only plain binary files read back their own bytes (gzip.open and codec readers have a
        # fileno() too); a size of 0 may be a generated file (procfs). Others are iterated.
        if not reads_its_own_bytes(filelike):
            return False
        try:
            fd = filelike.fileno()
            info = os.fstat(fd)
        except Exception:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0 or (self.pending is None and not self.head_sent):
            return False
        try:
            offset = filelike.tell()
        except Exception:
            offset = 0
        length = max(info.st_size - offset, 0)
        if self.length is not None:
            allowed = max(self.length - self.body_sent, 0)
            # PEP 3333: a wrapped file is sent until Content-Length bytes have been (a range).
            length = min(length, allowed)
        elif not self.head_sent:
            self.pending += [b"Content-Length", str(length).encode()]
            self.length = length
        if self.gone:
            raise ClientGone("the client closed the connection")
        if not self.head_sent:
            self.worker.channel.send(b"H", self.rid, b"\0".join(self.pending) + b"\0")
            self.head_sent = True
        self.worker.channel.send_file(self.rid, fd, offset, length)
        self.body_sent += length
        return True

    def run(self):
        worker = self.worker
        # Where its stack is found, should the front ask (a request running too long).
        self.thread = threading.get_ident()
        items = self.pairs.split(b"\0")
        env = {}
        for i in range(0, len(items) - 1, 2):
            env[items[i].decode("latin-1")] = items[i + 1].decode("latin-1")
        scheme = env.pop("wsgi.url_scheme", "http")
        env.update(worker.constants)
        env["wsgi.url_scheme"] = scheme
        env["wsgi.input"] = InputStream(self.body, self.body_len)
        env["wsgi.errors"] = sys.stderr
        self.environ = env
        try:
            result = worker.app(env, self.start_response)
        except BaseException:
            self.fail("the app failed; answering 500")
            return False
        plexer = worker.plexer
        if plexer is not None and not (isinstance(result, (list, tuple)) and len(result) <= 1) \
                and not (isinstance(result, FileWrapper) and self.send_file(result)):
            # rplex: the app call is over; the response thread advances the iterable.
            worker.channel.send(b"I", self.rid)
            plexer.add(self, result)
            return True
        original = result
        try:
            try:
                if isinstance(result, (list, tuple)) and len(result) == 1 and self.pending is not None \
                        and self.length is None and not self.head_sent and type(result[0]) is bytes \
                        and self.may_add_length():
                    # One chunk: the front learns its length, as in the embedded mode.
                    self.pending.append(b"Content-Length")
                    self.pending.append(str(len(result[0])).encode())
                    self.length = len(result[0])
                if isinstance(result, FileWrapper) and self.send_file(result):
                    result = ()
                for chunk in result:
                    if type(chunk) is not bytes:
                        raise TypeError("the response iterable yielded %s, not bytes" % type(chunk).__name__)
                    if chunk:
                        self.send(chunk)
                self.finish()
            except BaseException:
                self.fail("the app failed; answering 500")
        finally:
            self.close_result(original)
        return False

    def close_result(self, result):
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except BaseException:
                log_line("ERROR", "wsgi", "the response's close() raised for %s:\n%s"
                         % (self.describe(), traceback.format_exc().rstrip()))


class Plexer:
    """rplex's response thread: advances every handed-over response a few chunks at a time
    while its client has room, so long downloads hold no handler thread."""

    TURN = 8

    def __init__(self, worker):
        self.worker = worker
        self.cond = threading.Condition()
        self.jobs = []
        threading.Thread(target=self.run, name="rplex-responses", daemon=True).start()

    def poke(self):
        with self.cond:
            self.cond.notify()

    def add(self, request, result):
        try:
            iterator = iter(result)
        except BaseException:
            request.fail("the app failed; answering 500")
            self.done(request, result)
            return
        with self.cond:
            # Its stack is this thread's from now on.
            request.thread = getattr(self, "ident", None)
            self.jobs.append((request, iterator, result))
            self.cond.notify()

    def done(self, request, result):
        request.close_result(result)
        with self.worker.lock:
            self.worker.requests.pop(request.rid, None)

    def run(self):
        self.ident = threading.get_ident()
        while True:
            with self.cond:
                ready = [job for job in self.jobs if job[0].has_room()]
                while not ready:
                    self.cond.wait()
                    ready = [job for job in self.jobs if job[0].has_room()]
            for job in ready:
                request, iterator, result = job
                try:
                    for _ in range(self.TURN):
                        if request.gone:
                            raise ClientGone("the client closed the connection")
                        chunk = next(iterator)
                        if type(chunk) is not bytes:
                            raise TypeError("the response iterable yielded %s, not bytes" % type(chunk).__name__)
                        if chunk:
                            request.send(chunk, wait=False)
                            if not request.has_room():
                                break
                    continue
                except StopIteration:
                    try:
                        request.finish()
                    except BaseException:
                        request.fail("the app failed; answering 500")
                except BaseException:
                    request.fail("the app failed; answering 500")
                with self.cond:
                    self.jobs.remove(job)
                self.done(request, result)


class Worker:
    def __init__(self, config, sock):
        self.config = config
        self.channel = Channel(sock)
        self.sock = sock
        self.window = config["window"]
        self.requests = {}
        self.lock = threading.Lock()
        self.idle = []
        self.constants = {
            "wsgi.version": (1, 0),
            "wsgi.multithread": config["multithread"],
            "wsgi.multiprocess": config["multiprocess"],
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        self.app = None
        self.plexer = Plexer(self) if config.get("rplex") else None
        self.jobs = []
        self.jobs_cond = threading.Condition()

    def load(self):
        config = self.config
        # Modules shipped inside scgi-wsgi (scgi_wsgi.wsgidir), as in the embedded mode.
        for name, source in config.get("modules", {}).items():
            package_name, _, short = name.rpartition(".")
            package = sys.modules.get(package_name)
            if package is None:
                package = types.ModuleType(package_name)
                package.__path__ = []
                sys.modules[package_name] = package
            module = types.ModuleType(name)
            module.__file__ = "<scgi-wsgi>/%s.py" % short
            sys.modules[name] = module
            exec(compile(source, module.__file__, "exec"), module.__dict__)
            setattr(package, short, module)
        # `python -c` puts the working directory first on sys.path; the embedded mode does not.
        if sys.path and sys.path[0] in ("", "."):
            del sys.path[0]
        for i, path in enumerate(config["paths"]):
            sys.path.insert(i, path)
        module_name = config["module"]
        try:
            module = __import__(module_name)
            for part in module_name.split(".")[1:]:
                module = getattr(module, part)
        except ModuleNotFoundError as e:
            return "cannot import handler module %s: %s" % (quoted(module_name), e)
        except BaseException as e:
            return "cannot import handler module %s: %s" % (quoted(module_name), one_line(e))
        name = "application" if config["application"] else "wmain"
        obj = getattr(module, name, None)
        if obj is None:
            hint = (" (without -A, wmain() is called instead)" if config["application"]
                    else " (with -A, its 'application' object is used instead)")
            return "handler module %s has no %s%s" % (quoted(module_name), quoted(name), hint)
        if not config["application"]:
            try:
                obj = obj(*config["args"])
            except BaseException as e:
                return "handler module %s: wmain() raised %s" % (quoted(module_name), one_line(e))
        if not callable(obj):
            return "handler module %s: the WSGI application (%s) is not callable: it is %s" % (
                quoted(module_name), "'application'" if config["application"] else "what wmain() returned",
                type(obj).__name__)
        self.app = obj
        return None

    def thread_main(self):
        while True:
            with self.jobs_cond:
                while not self.jobs:
                    self.jobs_cond.wait()
                request = self.jobs.pop(0)
            if request is None:
                return
            handed_over = False
            try:
                handed_over = request.run()
            except BaseException:
                log_line("ERROR", "wsgi", "internal error in the worker:\n" + traceback.format_exc().rstrip())
            finally:
                if not handed_over:
                    with self.lock:
                        self.requests.pop(request.rid, None)

    def submit(self, request):
        with self.jobs_cond:
            self.jobs.append(request)
            self.jobs_cond.notify()

    def serve(self):
        for _ in range(self.config["threads"]):
            thread = threading.Thread(target=self.thread_main, name="wsgi-worker", daemon=True)
            thread.start()
        reader = self.sock.makefile("rb", buffering=1 << 16)
        while True:
            header = reader.read(FRAME.size)
            if len(header) < FRAME.size:
                return
            kind, rid, length = FRAME.unpack(header)
            payload = reader.read(length) if length else b""
            if len(payload) < length:
                return
            if kind == b"R":
                with self.lock:
                    self.requests[rid] = Request(self, rid, payload)
            elif kind == b"B":
                request = self.requests.get(rid)
                if request is not None:
                    request.add_body(payload)
            elif kind == b"E":
                request = self.requests.get(rid)
                if request is not None:
                    self.submit(request)
            elif kind == b"W":
                request = self.requests.get(rid)
                if request is not None:
                    request.ack(struct.unpack(">Q", payload)[0])
            elif kind == b"C":
                request = self.requests.get(rid)
                if request is not None:
                    request.cancel()
            elif kind == b"K":
                self.send_stacks(payload)

    def send_stacks(self, payload):
        """The Python stacks of the requests named in `payload`, each in a K frame."""
        frames = sys._current_frames()
        with self.lock:
            threads = {}
            for (rid,) in struct.iter_unpack(">I", payload[: len(payload) // 4 * 4]):
                threads[rid] = getattr(self.requests.get(rid), "thread", None)
        for rid, thread in threads.items():
            frame = frames.get(thread) if thread is not None else None
            text = "".join(traceback.format_stack(frame)) if frame is not None else ""
            self.channel.send(b"K", rid, text.encode("utf-8", "replace"))
        self.channel.send(b"K", 0)


def one_line(error):
    text = "%s: %s" % (type(error).__name__, str(error).replace("\n", " ")) if str(error) else type(error).__name__
    # The innermost frame that is not this program's own says where it went wrong.
    tb, where = error.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename != "<string>":
            where = tb
        tb = tb.tb_next
    tb = where
    if tb is not None:
        text += " (at %s line %d)" % (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    return text


def _left_to_the_front(signum, frame):
    # The front process handles stop, reload and log signals for the whole server, and ends
    # this worker by closing the channel.
    pass


def _default_signals():
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)


def main():
    # Started with these ignored; a handler instead (not inherited across exec) gives the
    # app's own child processes the usual defaults back.
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), _left_to_the_front)
    # A process the app forks (multiprocessing's fork start method) is not this worker: it
    # gets the default actions back, or a pool's SIGTERM to it (Pool.terminate) would be
    # ignored and the app would wait for it for ever.
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_default_signals)
    config = json.loads(os.environ.pop("SCGI_WSGI_WORKER_CONFIG"))
    global LOG_TAG
    LOG_TAG = config["log_tag"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=config["fd"])
    sys.argv = config["argv"]
    if not config["no_logging"]:
        handler = None
        if "ASHD_USESYSLOG" in os.environ and os.path.exists("/dev/log"):
            try:
                handler = logging.handlers.SysLogHandler(address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            except OSError:
                handler = None
        if handler is None:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrefixEveryLine())
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
    worker = Worker(config, sock)
    failure = worker.load()
    if failure is not None:
        worker.channel.send(b"X", 0, failure.encode("utf-8", "replace"))
        # Not sys.exit: a thread the module started before it failed would keep the process
        # (and the front, which waits for it) alive.
        sys.stderr.flush()
        os._exit(1)
    version = "%s %s" % (sys.implementation.name, sys.version.split()[0])
    worker.channel.send(b"Y", 0, version.encode())
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
