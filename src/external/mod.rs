//! The external-interpreter mode: the app runs in a worker process of any Python 3.8+
//! (PyPy, another CPython) started with a small standard-library program shipped in this
//! binary; this process keeps the sockets, parsing, limits, timeouts and flow control.
//!
//! One worker process per server process, multiplexing requests over a Unix socketpair in
//! frames (see `worker.py` for the frame types, `frames` for our side of them). Requests
//! beyond the model's `max` wait here; inside the worker, each request runs on a Python
//! thread. A worker that dies is replaced (`spawn`), and the requests it held are answered
//! 502 (or cut, if their response had begun).

mod frames;
mod spawn;

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use self::frames::{cgi_head, write_to_worker, ToWorker};
pub use self::spawn::{resolve_command, WorkerSpec};
use self::spawn::{start_worker, Started};
use crate::base::access;
use crate::base::log::{error, info, warning};
use crate::base::metrics::{self, Gauge};
use crate::pool::watchdog::StackSource;
use crate::pool::wedge::{spawn_wedge_watch, Wedge};
use crate::proto::cgi::{self, Answer, INTERNAL_ERROR};
use crate::seam::notifier::{LoopWaker, Notifier};
use crate::seam::outbox::{Chunk, End, Outbox, OutboxEvent};
use crate::seam::request::Request;
use crate::server::dispatcher::{Dispatcher, HoldBack, READ_AHEAD};

/// Longest wait between restarts of a worker that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The answer when the worker died before the response began.
fn bad_gateway() -> Answer {
    Answer::new("502 Bad Gateway", "the Python worker process ended abruptly")
}

struct Slot {
    outbox: Arc<Outbox>,
    /// The app call is still running (not yet handed to rplex's response thread).
    calling: bool,
    /// What the request watch gave it.
    watch_id: Option<u64>,
    /// The access log line, written when the slot goes.
    access: Option<access::Entry>,
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
    /// Applies one frame of this request's response; returns how the response ended, if it
    /// did with this frame.
    fn apply(&mut self, kind: u8, payload: Vec<u8>, fd: Option<OwnedFd>) -> Option<End> {
        match kind {
            b'H' => self.take_head(&payload),
            b'D' => {
                self.bytes += payload.len() as u64;
                let chunk = match self.head.take() {
                    Some(mut head) => {
                        head.extend_from_slice(&payload);
                        head
                    }
                    None => payload,
                };
                self.began = true;
                let _ = self.outbox.send(chunk, None);
                None
            }
            b'P' => self.take_file(&payload, fd),
            b'F' => {
                let head = self.head.take().unwrap_or_default();
                let _ = self.outbox.send(head, Some(End::Complete));
                Some(End::Complete)
            }
            b'A' => {
                if payload == b"error" {
                    // The app raised after its response began.
                    metrics::app_error();
                }
                self.outbox.finish(End::Abort);
                Some(End::Abort)
            }
            b'S' => {
                metrics::app_error();
                self.answer(&INTERNAL_ERROR)
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
        }
    }

    /// The response head ('H'), kept until the first body bytes (or the end).
    fn take_head(&mut self, payload: &[u8]) -> Option<End> {
        let Some(head) = cgi_head(payload) else {
            error!("wsgi", "the worker sent a malformed response head; answering 500");
            return self.answer(&INTERNAL_ERROR);
        };
        self.status = payload
            .get(..3)
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        self.head = Some(head);
        None
    }

    /// A file the worker handed over ('P', its offset and length, with the descriptor beside
    /// the frame): the loop sends it with sendfile.
    fn take_file(&mut self, payload: &[u8], fd: Option<OwnedFd>) -> Option<End> {
        let range = (payload.len() == 16).then(|| {
            let offset = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
            let len = u64::from_be_bytes(payload[8..].try_into().unwrap_or_default());
            (offset, len)
        });
        let (Some(fd), Some((offset, len))) = (fd, range) else {
            error!(
                "wsgi",
                "the worker sent a file frame without its file; connection cut"
            );
            self.outbox.finish(End::Abort);
            return Some(End::Abort);
        };
        if let Some(head) = self.head.take() {
            let _ = self.outbox.send(head, None);
        }
        self.began = true;
        self.bytes += len;
        let file = std::fs::File::from(fd);
        let _ = self.outbox.send_chunk(Chunk::File { file, offset, len }, None);
        None
    }

    /// Ends the response with an answer of the server's own (a 500 or 502).
    fn answer(&mut self, answer: &Answer) -> Option<End> {
        let _ = self.outbox.send(answer.response(), Some(End::Complete));
        (self.status, self.bytes) = (answer.code(), answer.body_len());
        Some(End::Complete)
    }

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
    /// Where the worker's 'K' frames (stacks) go while someone waits for them.
    stack_replies: Mutex<Option<StackReplies>>,
    /// One stack request at a time.
    stack_asking: Mutex<()>,
}

/// Where the stacks the worker sends (request id, text) go.
type StackReplies = Sender<(u32, Vec<u8>)>;

/// The worker's Python stacks, by request id (see `StackSource`).
struct ExternalStacks(Arc<Shared>);

impl StackSource for ExternalStacks {
    fn stacks(&self, runners: &[u64], timeout: Duration) -> Vec<(u64, String)> {
        let shared = &self.0;
        let _one = shared.stack_asking.lock().unwrap_or_else(|e| e.into_inner());
        let (sender, replies) = mpsc::channel();
        *shared.lock_stack_replies() = Some(sender);
        let ids = runners.iter().filter_map(|r| u32::try_from(*r).ok()).collect();
        let asked = shared
            .lock()
            .to_worker
            .as_ref()
            .is_some_and(|worker| worker.send(ToWorker::Stacks { ids }).is_ok());
        let deadline = Instant::now() + timeout;
        let mut stacks = Vec::new();
        // Replies until the end marker (id 0), or the time is up.
        let next = || replies.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        while let Some((id, text)) = asked.then(next).and_then(Result::ok).filter(|(id, _)| *id != 0) {
            if !text.is_empty() {
                stacks.push((u64::from(id), String::from_utf8_lossy(&text).into_owned()));
            }
        }
        *shared.lock_stack_replies() = None;
        stacks
    }
}

/// Runs requests in an external interpreter process.
pub struct ExternalDispatcher {
    shared: Arc<Shared>,
}

impl Shared {
    fn lock_stack_replies(&self) -> MutexGuard<'_, Option<StackReplies>> {
        self.stack_replies.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the gauges for the metrics: requests waiting, and the worker's threads running
    /// an app call and free for one.
    fn publish(&self, state: &State) {
        if metrics::enabled() {
            metrics::set(Gauge::Queued, state.queue.len());
            metrics::set(Gauge::BusyThreads, state.calling);
            metrics::set(
                Gauge::IdleThreads,
                self.max_in_flight.saturating_sub(state.calling),
            );
        }
    }

    /// Sends queued requests while there is room in the worker.
    fn pump_queue(self: &Arc<Self>, state: &mut State) {
        self.pump(state);
        self.publish(state);
    }

    fn pump(self: &Arc<Self>, state: &mut State) {
        while state.calling < self.max_in_flight {
            let Some(sender) = state.to_worker.clone() else {
                return;
            };
            let was_full = state.queue.len() >= self.queue_limit;
            let Some((request, queued)) = state.queue.pop_front() else {
                return;
            };
            metrics::queue_waited(queued);
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
        let watch_id = self
            .spec
            .watch
            .as_ref()
            .and_then(|watch| watch.begin(&request, u64::from(id)));
        let access = access::begin(request.header_block(), request.accepted, request.head_at);
        let Request {
            buf,
            payload,
            body,
            outbox,
            ..
        } = request;
        let environ = cgi::cgi_pairs(&buf[payload.clone()], self.spec.mount.as_ref());
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
        if kind == b'K' {
            // A stack someone asked for (ended by id 0).
            if let Some(waiting) = self.lock_stack_replies().as_ref() {
                let _ = waiting.send((id, payload));
            }
            return;
        }
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&id) else {
            return;
        };
        let ended = slot.apply(kind, payload, fd);
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
                slot.answer(&bad_gateway());
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
            max_in_flight: spec.model.max_running(),
            queue_limit: spec.model.queue_limit(spec.max_queue),
            loop_waker: LoopWaker::default(),
            stack_replies: Mutex::new(None),
            stack_asking: Mutex::new(()),
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

impl ExternalDispatcher {
    /// Where the worker's Python stacks are read, by request id.
    pub fn stack_source(&self) -> Arc<dyn StackSource> {
        Arc::new(ExternalStacks(Arc::clone(&self.shared)))
    }

    /// What tells, at any time, which requests the worker holds (their ids).
    pub fn busy_requests(&self) -> impl Fn() -> Vec<u64> + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.lock().slots.keys().map(|id| u64::from(*id)).collect()
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
