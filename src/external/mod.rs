//! The external-interpreter mode: the app runs in a worker process of any Python 3.8+
//! (PyPy, another CPython) started with a small standard-library program shipped in this
//! binary; this process keeps the sockets, parsing, limits, timeouts and flow control.
//!
//! One worker process per server process, multiplexing requests over a Unix socketpair in
//! frames (see `worker.py` for the frame types). Requests beyond the model's `max` wait here;
//! inside the worker, each request runs on a Python thread. A worker that dies is replaced,
//! and the requests it held are answered 502 (or cut, if their response had begun).

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::dispatch::{
    Body, Chunk, Dispatcher, End, HoldBack, LoopWaker, Notifier, Outbox, OutboxEvent, Request, READ_AHEAD,
};
use crate::handling::{spawn_wedge_watch, Model, Wedge};
use crate::watchdog::RequestWatch;
use crate::{error, info, warning};

/// The worker program, run with `PYTHON -c`.
pub const WORKER_SOURCE: &str = include_str!("worker.py");

/// What the interpreter is given to run (`-c`): the worker's source, from the environment.
const WORKER_BOOT: &str =
    "import os; exec(compile(os.environ.pop('SCGI_WSGI_WORKER_SOURCE'), '<string>', 'exec'))";
/// The environment variables that carry the worker's source and configuration.
const SOURCE_VARIABLE: &str = "SCGI_WSGI_WORKER_SOURCE";
const CONFIG_VARIABLE: &str = "SCGI_WSGI_WORKER_CONFIG";

/// The fd number the worker finds its socket on.
const WORKER_FD: i32 = 3;
/// Largest body frame sent to the worker.
const BODY_FRAME: usize = 64 * 1024;
/// Longest wait between restarts of a worker that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The answer when the worker died before the response began.
const BAD_GATEWAY: &[u8] = b"Status: 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 58\r\n\r\n502 Bad Gateway: the Python worker process ended abruptly\n";

/// The length of [`BAD_GATEWAY`]'s body, for the access log.
const BAD_GATEWAY_BODY: u64 = crate::dispatch::cgi_body_len(BAD_GATEWAY);

/// What starting the worker needs.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The interpreter command (`pypy3`, `/usr/bin/python3.12`, ...).
    pub interpreter: String,
    /// Handler module.
    pub module: String,
    /// `-A`.
    pub use_application: bool,
    /// wmain() arguments.
    pub args: Vec<String>,
    /// `-p` directories.
    pub paths: Vec<String>,
    /// `-L`.
    pub no_logging: bool,
    /// The handling model.
    pub model: Model,
    /// `wsgi.multiprocess`.
    pub multiprocess: bool,
    /// Bytes a response may run ahead of its client.
    pub window: usize,
    /// Environment variables to add (virtualenv).
    pub env: Vec<(String, String)>,
    /// The mount point from `--script-name`.
    pub mount: Option<crate::wsgi::pathinfo::Mount>,
    /// `--max-queue`: requests that may wait for the worker (pool uses its `queue=`).
    pub max_queue: usize,
    /// `--max-requests` / `--request-timeout`, when given.
    pub watch: Option<Arc<RequestWatch>>,
}

impl WorkerSpec {
    fn max_in_flight(&self) -> usize {
        match self.model {
            Model::Free { max, .. } | Model::Pool { max, .. } | Model::Rplex { max } => max,
            Model::Single => 1,
        }
    }

    fn queue_limit(&self) -> usize {
        match self.model {
            Model::Pool { queue, .. } => queue,
            _ => self.max_queue,
        }
    }

    fn config_json(&self, argv: &[String]) -> String {
        let list = |items: &[String]| {
            format!(
                "[{}]",
                items.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
            )
        };
        format!(
            "{{\"fd\":{WORKER_FD},\"module\":{},\"application\":{},\"args\":{},\"paths\":{},\"no_logging\":{},\
             \"threads\":{},\"multithread\":{},\"multiprocess\":{},\"window\":{},\"rplex\":{},\"argv\":{},\
             \"modules\":{{\"scgi_wsgi.wsgidir\":{}}}}}",
            json_str(&self.module),
            self.use_application,
            list(&self.args),
            list(&self.paths),
            self.no_logging,
            self.max_in_flight(),
            self.model.multithread(),
            self.multiprocess,
            self.window,
            matches!(self.model, Model::Rplex { .. }),
            list(argv),
            json_str(crate::wsgi::wsgidir::SOURCE),
        )
    }
}

/// Finds an interpreter command the way `exec` will: a path as given, else the first
/// executable of that name on PATH.
pub fn resolve_command(command: &str) -> Option<std::path::PathBuf> {
    if command.contains('/') {
        return Some(std::path::PathBuf::from(command));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

/// A JSON string literal.
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A frame to the worker.
enum ToWorker {
    /// Send a request: environ pairs, then the body, then "end of body".
    Request {
        id: u32,
        environ: Vec<u8>,
        buf: Vec<u8>,
        body: Body,
    },
    /// The client has taken this many bytes.
    Written { id: u32, total: u64 },
    /// The client is gone.
    Cancel { id: u32 },
}

struct Slot {
    outbox: Arc<Outbox>,
    /// The app call is still running (not yet handed to rplex's response thread).
    calling: bool,
    /// What the request watch gave it.
    watch_id: Option<u64>,
    /// The access log line, written when the slot goes.
    access: Option<crate::access::Entry>,
    /// The response's status code, once its head came.
    status: u16,
    /// Body bytes the worker produced.
    bytes: u64,
    /// A head waiting for the first body bytes (or the end).
    head: Option<Vec<u8>>,
    /// Whether anything went to the outbox yet.
    began: bool,
}

impl Slot {
    /// Gives the access log's entry its result (a request answered 504 for running too long
    /// has its line from the watch that answered it).
    fn record_access(&mut self) {
        let Some(mut entry) = self.access.take() else {
            return;
        };
        if self.outbox.timed_out() {
            entry.discard();
        } else if self.status != 0 {
            entry.set_result(self.status, self.bytes);
        }
    }
}

struct State {
    slots: HashMap<u32, Slot>,
    /// Slots whose app call is running: what `max` bounds (rplex responses do not count).
    calling: usize,
    /// Since when requests have been refused for a full queue (pool's abort=).
    refused_since: Option<Instant>,
    /// The loop left request bodies unread while requests waited: wake it as the queue runs
    /// down.
    held_back: HoldBack,
    queue: VecDeque<(Request, Instant)>,
    next_id: u32,
    /// The current worker's frame channel; `None` while it is being replaced.
    to_worker: Option<Sender<ToWorker>>,
    stopping: bool,
}

struct Shared {
    spec: WorkerSpec,
    argv: Vec<String>,
    state: Mutex<State>,
    max_in_flight: usize,
    queue_limit: usize,
    loop_waker: LoopWaker,
}

/// Runs requests in an external interpreter process.
pub struct ExternalDispatcher {
    shared: Arc<Shared>,
}

/// A started worker: its process and the two ends of its socket.
struct Started {
    child: Child,
    reader: FrameReader,
    writer: UnixStream,
    version: String,
}

/// Starts a worker and waits for it to report ready (or why it could not start).
/// Signals the front handles for the whole server, which its worker processes leave alone.
const FRONT_OWNED_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

fn start_worker(spec: &WorkerSpec, argv: &[String]) -> Result<Started, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    let theirs: OwnedFd = theirs.into();
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(&spec.interpreter);
    command
        .arg("-c")
        .arg(WORKER_BOOT)
        // In the environment, not on the command line, which ps and top show: the worker
        // takes both out before the app is loaded.
        .env(SOURCE_VARIABLE, WORKER_SOURCE)
        .env(CONFIG_VARIABLE, spec.config_json(argv))
        .stdin(Stdio::null())
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(their_fd, WORKER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The front decides when the worker ends (it closes the channel). A stop signal
            // sent to the whole process group (Ctrl-C, systemd's default KillMode) or a
            // rotation hook's SIGUSR1 to every process must not end it, and with it the
            // requests the front is letting finish. Ignored until the worker installs its own
            // handlers (which its children do not inherit).
            for signal in FRONT_OWNED_SIGNALS {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run the interpreter {:?}: {e}", spec.interpreter))?;
    drop(theirs);
    let socket = ours
        .try_clone()
        .map_err(|e| format!("cannot share the worker socket: {e}"))?;
    let mut reader = FrameReader::new(socket);
    let (kind, _, payload) = match reader.next_frame() {
        Ok(frame) => frame,
        Err(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(format!(
                "the interpreter {:?} ended before the worker started ({status}); is it Python 3.8 or later?",
                spec.interpreter
            ));
        }
    };
    let text = String::from_utf8_lossy(&payload).into_owned();
    match kind {
        b'Y' => Ok(Started {
            child,
            reader,
            writer: ours,
            version: text,
        }),
        b'X' => {
            let _ = child.wait();
            Err(text)
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the worker sent an unexpected first frame {:?}",
                other as char
            ))
        }
    }
}

/// Reads frames from the worker with `recvmsg`, keeping the descriptors that arrive with
/// 'P' frames (SCM_RIGHTS) in order, so each 'P' frame takes the next one.
struct FrameReader {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
}

impl FrameReader {
    fn new(stream: UnixStream) -> FrameReader {
        FrameReader {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
        }
    }

    /// One `recvmsg` into `into`; descriptors that came with it join the queue.
    fn recv(&mut self, into: &mut [u8]) -> io::Result<usize> {
        const MAX_FDS: usize = 16;
        let mut control = [0u64; (MAX_FDS * 4 + 64) / 8];
        let mut iov = libc::iovec {
            iov_base: into.as_mut_ptr().cast(),
            iov_len: into.len(),
        };
        // SAFETY: msghdr points at live buffers for the duration of the call; the control
        // messages are read back with the CMSG_* helpers within the length the kernel set.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = loop {
                let n = libc::recvmsg(self.stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 {
                    break n as usize;
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            };
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg) as *const i32;
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        self.fds
                            .push_back(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            Ok(n)
        }
    }

    /// Fills `out` completely, from what is buffered and then from the socket.
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < out.len() {
            if self.start == self.end {
                if out.len() - filled >= self.buf.len() {
                    // Large payloads go straight to their destination.
                    let n = self.recv(&mut out[filled..])?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    filled += n;
                    continue;
                }
                let mut buf = std::mem::take(&mut self.buf);
                let n = self.recv(&mut buf);
                self.buf = buf;
                let n = n?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.start = 0;
                self.end = n;
            }
            let take = (self.end - self.start).min(out.len() - filled);
            out[filled..filled + take].copy_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            filled += take;
        }
        Ok(())
    }

    fn next_frame(&mut self) -> io::Result<(u8, u32, Vec<u8>)> {
        let mut header = [0u8; 9];
        self.read_exact(&mut header)?;
        let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload)?;
        Ok((header[0], id, payload))
    }
}

fn write_frame(writer: &mut impl Write, kind: u8, id: u32, payload: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 9];
    header[0] = kind;
    header[1..5].copy_from_slice(&id.to_be_bytes());
    header[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    writer.write_all(&header)?;
    writer.write_all(payload)
}

/// Serialises a head the worker checked (STATUS NUL NAME NUL VALUE NUL ...) as a CGI head,
/// checking again that nothing in it can end a line.
fn cgi_head(fields: &[u8]) -> Option<Vec<u8>> {
    let mut parts = fields.split(|b| *b == 0);
    let status = parts.next()?;
    let clean = |bytes: &[u8]| bytes.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if status.len() < 3 || !clean(status) {
        return None;
    }
    let mut head = Vec::with_capacity(fields.len() + 64);
    head.extend_from_slice(b"Status: ");
    head.extend_from_slice(status);
    head.extend_from_slice(b"\r\n");
    let rest: Vec<&[u8]> = parts.collect();
    // The payload ends with NUL, so the split leaves one empty piece at the end.
    let pairs = rest.split_last().map(|(_, pairs)| pairs).unwrap_or(&[]);
    if pairs.len() % 2 != 0 {
        return None;
    }
    for pair in pairs.chunks(2) {
        let (name, value) = (pair[0], pair[1]);
        if name.is_empty() || !clean(name) || name.contains(&b':') || !clean(value) {
            return None;
        }
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Some(head)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends queued requests while there is room in the worker.
    fn pump_queue(self: &Arc<Self>, state: &mut State) {
        while state.calling < self.max_in_flight {
            let Some(sender) = state.to_worker.clone() else {
                return;
            };
            let was_full = state.queue.len() >= self.queue_limit;
            let Some((request, _)) = state.queue.pop_front() else {
                return;
            };
            self.send_request(state, &sender, request);
            if was_full {
                state.refused_since = None;
            }
            let waiting = state.queue.len();
            if state.held_back.resumes(waiting) || was_full {
                // The loop stopped taking requests at the limit, or reading bodies: tell it
                // there is room.
                self.loop_waker.wake();
            }
        }
    }

    fn send_request(self: &Arc<Self>, state: &mut State, sender: &Sender<ToWorker>, request: Request) {
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1).max(1);
        let watch_id = self.spec.watch.as_ref().and_then(|watch| watch.begin(&request));
        let access = crate::access::begin(request.header_block(), request.accepted);
        let Request {
            buf,
            payload,
            body,
            outbox,
            ..
        } = request;
        let environ = crate::wsgi::environ::cgi_pairs(&buf[payload.clone()], self.spec.mount.as_ref());
        let last_acked = AtomicU64::new(0);
        let window = (outbox.high_water() / 2).max(1) as u64;
        let events = sender.clone();
        outbox.observe(Box::new(move |event| match event {
            // Acknowledge in steps so the worker, which waits while it is a window ahead, moves on.
            OutboxEvent::Written(total) => {
                let last = last_acked.load(Ordering::Relaxed);
                if total >= last + window {
                    last_acked.store(total, Ordering::Relaxed);
                    let _ = events.send(ToWorker::Written { id, total });
                }
            }
            OutboxEvent::ClientGone => {
                let _ = events.send(ToWorker::Cancel { id });
            }
        }));
        state.calling += 1;
        state.slots.insert(
            id,
            Slot {
                outbox,
                calling: true,
                watch_id,
                access,
                status: 0,
                bytes: 0,
                head: None,
                began: false,
            },
        );
        let _ = sender.send(ToWorker::Request {
            id,
            environ,
            buf,
            body,
        });
    }

    /// Applies one frame from the worker.
    fn on_frame(self: &Arc<Self>, kind: u8, id: u32, payload: Vec<u8>, fd: Option<OwnedFd>) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        let ended = match kind {
            b'H' => match cgi_head(&payload) {
                Some(head) => {
                    slot.status = payload
                        .get(..3)
                        .and_then(|code| std::str::from_utf8(code).ok())
                        .and_then(|code| code.parse().ok())
                        .unwrap_or(0);
                    slot.head = Some(head);
                    None
                }
                None => {
                    error!("wsgi", "the worker sent a malformed response head; answering 500");
                    let _ = slot.outbox.send(
                        crate::wsgi::response::INTERNAL_ERROR.to_vec(),
                        Some(End::Complete),
                    );
                    (slot.status, slot.bytes) = (500, crate::wsgi::response::INTERNAL_ERROR_BODY);
                    Some(End::Complete)
                }
            },
            b'D' => {
                slot.bytes += payload.len() as u64;
                let chunk = match slot.head.take() {
                    Some(mut head) => {
                        head.extend_from_slice(&payload);
                        head
                    }
                    None => payload,
                };
                slot.began = true;
                let _ = slot.outbox.send(chunk, None);
                None
            }
            b'P' => {
                // A file the worker handed over: the loop sends it with sendfile.
                let range = (payload.len() == 16).then(|| {
                    let offset = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                    let len = u64::from_be_bytes(payload[8..].try_into().unwrap_or_default());
                    (offset, len)
                });
                match (fd, range) {
                    (Some(fd), Some((offset, len))) => {
                        if let Some(head) = slot.head.take() {
                            let _ = slot.outbox.send(head, None);
                        }
                        slot.began = true;
                        slot.bytes += len;
                        let file = std::fs::File::from(fd);
                        let _ = slot.outbox.send_chunk(Chunk::File { file, offset, len }, None);
                        None
                    }
                    _ => {
                        error!(
                            "wsgi",
                            "the worker sent a file frame without its file; connection cut"
                        );
                        slot.outbox.finish(End::Abort);
                        Some(End::Abort)
                    }
                }
            }
            b'F' => {
                let head = slot.head.take().unwrap_or_default();
                let _ = slot.outbox.send(head, Some(End::Complete));
                Some(End::Complete)
            }
            b'A' => {
                slot.outbox.finish(End::Abort);
                Some(End::Abort)
            }
            b'S' => {
                let _ = slot.outbox.send(
                    crate::wsgi::response::INTERNAL_ERROR.to_vec(),
                    Some(End::Complete),
                );
                (slot.status, slot.bytes) = (500, crate::wsgi::response::INTERNAL_ERROR_BODY);
                Some(End::Complete)
            }
            b'I' => None,
            other => {
                warning!(
                    "wsgi",
                    "ignoring an unknown frame {:?} from the worker",
                    other as char
                );
                None
            }
        };
        if kind == b'I' || ended.is_some() {
            // The app call is over: another may start (under rplex the response goes on).
            if let Some(slot) = state.slots.get_mut(&id).filter(|slot| slot.calling) {
                slot.calling = false;
                state.calling -= 1;
            }
        }
        if ended.is_some() {
            if let Some(mut slot) = state.slots.remove(&id) {
                if let Some(watch) = &self.spec.watch {
                    watch.end(slot.watch_id);
                }
                slot.record_access();
            }
        }
        self.pump_queue(&mut state);
    }

    /// The worker is gone: answer what it held, then start another.
    fn on_worker_exit(self: &Arc<Self>, mut child: Child) {
        let status = child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let lost: Vec<Slot> = {
            let mut state = self.lock();
            state.to_worker = None;
            if state.stopping {
                return;
            }
            state.calling = 0;
            state.slots.drain().map(|(_, slot)| slot).collect()
        };
        error!(
            "server",
            "the Python worker process (pid {}) ended ({status}); {} request(s) in it failed; starting another",
            child.id(),
            lost.len()
        );
        for mut slot in lost {
            if let Some(watch) = &self.spec.watch {
                watch.end(slot.watch_id);
            }
            if slot.began {
                slot.outbox.finish(End::Abort);
            } else {
                let _ = slot.outbox.send(BAD_GATEWAY.to_vec(), Some(End::Complete));
                (slot.status, slot.bytes) = (502, BAD_GATEWAY_BODY);
            }
            slot.record_access();
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.lock().stopping {
                return;
            }
            match start_worker(&self.spec, &self.argv) {
                Ok(started) => {
                    info!(
                        "server",
                        "Python worker restarted (pid {}, {})",
                        started.child.id(),
                        started.version
                    );
                    self.run_worker(started);
                    return;
                }
                Err(message) => {
                    error!(
                        "server",
                        "cannot restart the Python worker: {message}; retrying in {:?}", backoff
                    );
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Wires a started worker in: a writer thread, and this (reader) side on its own thread.
    fn run_worker(self: &Arc<Self>, started: Started) {
        let Started {
            child,
            reader,
            writer,
            ..
        } = started;
        let (sender, receiver) = mpsc::channel();
        let writer_thread = thread::Builder::new()
            .name("worker-writer".into())
            .spawn(move || write_to_worker(writer, receiver));
        if let Err(e) = writer_thread {
            error!("server", "cannot start the worker writer thread: {e}");
        }
        {
            let mut state = self.lock();
            state.to_worker = Some(sender);
            self.pump_queue(&mut state);
        }
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("worker-reader".into())
            .spawn(move || {
                let mut frames = reader;
                while let Ok((kind, id, payload)) = frames.next_frame() {
                    let fd = if kind == b'P' {
                        frames.fds.pop_front()
                    } else {
                        None
                    };
                    shared.on_frame(kind, id, payload, fd);
                }
                shared.on_worker_exit(child);
            });
        if let Err(e) = spawned {
            error!("server", "cannot start the worker reader thread: {e}");
        }
    }
}

fn write_to_worker(stream: UnixStream, frames: Receiver<ToWorker>) {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    let result = (|| -> io::Result<()> {
        while let Ok(first) = frames.recv() {
            let mut next = Some(first);
            while let Some(frame) = next {
                write_one(&mut out, frame)?;
                next = frames.try_recv().ok();
            }
            out.flush()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        crate::debug!("server", "writing to the Python worker stopped: {e}");
    }
    // Dropping the socket tells the worker to finish.
    if let Ok(stream) = out.into_inner() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

fn write_one(out: &mut impl Write, frame: ToWorker) -> io::Result<()> {
    match frame {
        ToWorker::Request {
            id,
            environ,
            buf,
            body,
        } => {
            write_frame(out, b'R', id, &environ)?;
            match body {
                Body::InBuffer(range) => {
                    for piece in buf[range].chunks(BODY_FRAME) {
                        write_frame(out, b'B', id, piece)?;
                    }
                }
                Body::File(file, len) => {
                    let mut block = vec![0u8; BODY_FRAME];
                    let mut at = 0u64;
                    while at < len {
                        let n = (len - at).min(BODY_FRAME as u64) as usize;
                        file.read_exact_at(&mut block[..n], at)?;
                        write_frame(out, b'B', id, &block[..n])?;
                        at += n as u64;
                    }
                }
            }
            write_frame(out, b'E', id, &[])
        }
        ToWorker::Written { id, total } => write_frame(out, b'W', id, &total.to_be_bytes()),
        ToWorker::Cancel { id } => write_frame(out, b'C', id, &[]),
    }
}

impl ExternalDispatcher {
    /// Starts the worker process and waits until it has loaded the app; the error is the
    /// one-line reason it could not.
    pub fn start(spec: WorkerSpec, argv: Vec<String>) -> Result<ExternalDispatcher, String> {
        let started = start_worker(&spec, &argv)?;
        info!(
            "server",
            "running {} in {} (pid {}) via {}",
            spec.module,
            started.version,
            started.child.id(),
            spec.interpreter
        );
        let shared = Arc::new(Shared {
            max_in_flight: spec.max_in_flight(),
            queue_limit: spec.queue_limit(),
            loop_waker: LoopWaker::default(),
            spec,
            argv,
            state: Mutex::new(State {
                slots: HashMap::new(),
                calling: 0,
                refused_since: None,
                held_back: HoldBack::default(),
                queue: VecDeque::new(),
                next_id: 1,
                to_worker: None,
                stopping: false,
            }),
        });
        if let Some(wedge) = Wedge::for_model(&shared.spec.model) {
            let watched = Arc::clone(&shared);
            spawn_wedge_watch(wedge, move |wedge| {
                let state = watched.lock();
                match wedge {
                    Wedge::ThreadWait(_) => state.queue.front().map(|(_, since)| since.elapsed()),
                    Wedge::QueueFull(_) => state.refused_since.map(|since| since.elapsed()),
                }
            });
        }
        shared.run_worker(started);
        Ok(ExternalDispatcher { shared })
    }
}

impl Dispatcher for ExternalDispatcher {
    fn dispatch(&mut self, request: Request) -> Result<(), Request> {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.shared.queue_limit {
            state.refused_since.get_or_insert_with(Instant::now);
            return Err(request);
        }
        state.queue.push_back((request, Instant::now()));
        self.shared.pump_queue(&mut state);
        Ok(())
    }

    fn has_room(&self) -> bool {
        let mut state = self.shared.lock();
        let room = state.queue.len() < self.shared.queue_limit;
        if !room {
            // The loop asks when it has a connection to take: that one is now kept waiting
            // (pool's abort= counts from here, as in the embedded mode).
            state.refused_since.get_or_insert_with(Instant::now);
        }
        room
    }

    fn wants_bodies(&self) -> bool {
        let state = &mut *self.shared.lock();
        state.held_back.admits(state.queue.len(), READ_AHEAD)
    }

    fn queue_limit(&self) -> usize {
        self.shared.queue_limit
    }

    fn set_waker(&mut self, notifier: Arc<Notifier>) {
        self.shared.loop_waker.set(notifier);
    }
}

impl Drop for ExternalDispatcher {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopping = true;
        // Closing the frame channel ends the writer, which ends the worker.
        state.to_worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_fields_become_a_cgi_head() {
        let head = cgi_head(b"200 OK\0Content-Type\0text/plain\0X-A\0\0").unwrap();
        assert_eq!(
            head,
            b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-A: \r\n\r\n"
        );
        assert_eq!(
            cgi_head(b"404 Not Found\0").unwrap(),
            b"Status: 404 Not Found\r\n\r\n"
        );
    }

    #[test]
    fn head_fields_that_could_split_the_response_are_refused() {
        for bad in [
            &b"200 OK\r\nX: y\0"[..],
            b"200 OK\0X-A\0a\nb\0",
            b"200 OK\0X-A\0a\rb\0",
            b"200 OK\0X\nA\0b\0",
            b"200 OK\0Odd\0",
            b"200 OK\0\0value\0",
            b"20\0",
        ] {
            assert!(cgi_head(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn config_is_valid_json_with_escapes() {
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
