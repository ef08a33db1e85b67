//! Worker recycling from inside a worker: counts requests for `--max-requests`, and watches
//! the requests running in the app for `--request-timeout`. Either way the process asks to be
//! replaced ([`process::request_replacement`]); it then drains like on SIGTERM. A request cut
//! off for running too long has its Python stack logged first, from a [`StackSource`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::Python;

use super::handler::RequestHandler;
use crate::base::access;
use crate::base::log::{self, error, info};
use crate::base::metrics;
use crate::base::process::{self, Message};
use crate::proto::cgi::GATEWAY_TIMEOUT;
use crate::seam::outbox::Outbox;
use crate::seam::request::Request;

/// Where the Python stacks of running requests are read: the embedded interpreter's threads,
/// or the external worker's (the app side implements it, above this layer).
pub trait StackSource: Send + Sync {
    /// The stacks (as Python's traceback prints them, most recent call last) of what runs the
    /// requests known as `runners`: thread idents in the embedded interpreter, request ids in
    /// the external worker. Read within `timeout`; those that could not be are left out.
    fn stacks(&self, runners: &[u64], timeout: Duration) -> Vec<(u64, String)>;
}

/// How long a stack may take to read (the app may hold the GIL) before the 504 goes out
/// without it.
pub const STACK_TIMEOUT: Duration = Duration::from_secs(1);

struct Running {
    since: Instant,
    /// What runs it (see [`StackSource`]).
    runner: u64,
    what: String,
    outbox: Arc<Outbox>,
    cut: bool,
    /// The access log's line for a 504, should it come to that.
    access: Option<access::Entry>,
}

struct Shared {
    running: Mutex<HashMap<u64, Running>>,
    next_id: AtomicU64,
    served: AtomicU64,
    max_requests: Option<u64>,
    replacement_asked: AtomicBool,
    timeout: Option<Duration>,
    stacks: OnceLock<Arc<dyn StackSource>>,
}

/// Request counting for `--max-requests` and the hung-request watch for `--request-timeout`,
/// whoever runs the app (embedded threads, or the external interpreter's dispatcher).
pub struct RequestWatch {
    shared: Arc<Shared>,
}

impl RequestWatch {
    /// `max_requests`: ask to be replaced after that many; `timeout`: cut off and ask to be
    /// replaced when a request stays in the app longer (checked by a thread of its own).
    pub fn new(max_requests: Option<u64>, timeout: Option<Duration>) -> Arc<RequestWatch> {
        let shared = Arc::new(Shared {
            running: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            served: AtomicU64::new(0),
            max_requests,
            replacement_asked: AtomicBool::new(false),
            timeout,
            stacks: OnceLock::new(),
        });
        if let Some(limit) = timeout {
            let watched = Arc::clone(&shared);
            let _ = thread::Builder::new()
                .name("request-timeout".into())
                .spawn(move || watch(&watched, limit));
        }
        Arc::new(RequestWatch { shared })
    }

    /// Names where the stacks of requests that run too long are read.
    pub fn set_stacks(&self, stacks: Arc<dyn StackSource>) {
        let _ = self.shared.stacks.set(stacks);
    }

    /// A request goes into the app, run by `runner` (see [`StackSource`]): counts it and,
    /// with a timeout, starts watching it. Give what it returns to [`RequestWatch::end`]
    /// when the app is done with it.
    pub fn begin(&self, request: &Request, runner: u64) -> Option<u64> {
        let served = self.shared.served.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(max) = self.shared.max_requests {
            if served >= max && !self.shared.replacement_asked.swap(true, Ordering::Relaxed) {
                info!(
                    "server",
                    "worker {} has taken {served} requests (--max-requests); asking to be replaced",
                    std::process::id()
                );
                process::request_replacement(Message::Recycle);
            }
        }
        self.shared.timeout?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Running {
            since: Instant::now(),
            runner,
            what: log::describe_request(request.header_block()),
            outbox: Arc::clone(&request.outbox),
            cut: false,
            access: access::begin(request.header_block(), request.accepted, request.head_at),
        };
        self.shared.lock().insert(id, entry);
        Some(id)
    }

    /// The app is done with the request [`RequestWatch::begin`] returned `id` for.
    pub fn end(&self, id: Option<u64>) {
        if let Some(id) = id {
            let running = self.shared.lock().remove(&id);
            // The request's own entry has its line: this one was only for a 504.
            if let Some(entry) = running.and_then(|r| r.access) {
                entry.discard();
            }
        }
    }
}

impl std::fmt::Debug for RequestWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestWatch")
            .field("max_requests", &self.shared.max_requests)
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

/// Wraps the request handler of a worker with a [`RequestWatch`].
pub struct Watchdog {
    inner: Arc<dyn RequestHandler>,
    watch: Arc<RequestWatch>,
}

impl Watchdog {
    /// Runs `inner` under `watch`.
    pub fn new(inner: Arc<dyn RequestHandler>, watch: Arc<RequestWatch>) -> Watchdog {
        Watchdog { inner, watch }
    }
}

/// A `--max-requests` limit with a random 0..=`jitter` added, different in each process.
pub fn jittered(max_requests: u64, jitter: u64) -> u64 {
    if jitter == 0 {
        return max_requests;
    }
    max_requests.saturating_add(process::random() % (jitter + 1))
}

impl RequestHandler for Watchdog {
    fn handle(&self, py: Python<'_>, request: Request) {
        let id = self.watch.begin(&request, thread_ident());
        self.inner.handle(py, request);
        self.watch.end(id);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Python thread ident of the calling thread (as `threading.get_ident()` gives it).
pub fn thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

/// One pass of the watch: the requests past `limit` are cut off (marked first, so that a
/// request ending meanwhile is left alone), their stacks logged before the 504 goes out.
fn cut_overdue(shared: &Shared, limit: Duration) -> Vec<(String, Duration, bool)> {
    let mut marked = Vec::new();
    for (id, running) in shared.lock().iter_mut() {
        let ran = running.since.elapsed();
        if ran > limit && !running.cut {
            running.cut = true;
            metrics::request_timed_out();
            marked.push((*id, running.runner, running.what.clone(), ran));
        }
    }
    if marked.is_empty() {
        return Vec::new();
    }
    let runners: Vec<u64> = marked.iter().map(|m| m.1).collect();
    let stacks = shared
        .stacks
        .get()
        .map(|source| source.stacks(&runners, STACK_TIMEOUT))
        .unwrap_or_default();
    let mut overdue = Vec::new();
    for (id, runner, what, ran) in marked {
        match stacks.iter().find(|(r, _)| *r == runner) {
            Some((_, stack)) => error!(
                "server",
                "request {what} has been in the app for {:.1} s (--request-timeout {:.1} s); its Python stack, most recent call last:\n{}",
                ran.as_secs_f64(),
                limit.as_secs_f64(),
                stack.trim_end()
            ),
            None => error!(
                "server",
                "request {what} has been in the app for {:.1} s (--request-timeout {:.1} s); its Python stack could not be read (the app did not let go of the interpreter within {:.0} s)",
                ran.as_secs_f64(),
                limit.as_secs_f64(),
                STACK_TIMEOUT.as_secs_f64()
            ),
        }
        let mut running = shared.lock();
        let Some(running) = running.get_mut(&id) else {
            continue; // It ended meanwhile.
        };
        let answered = running.outbox.time_out(&GATEWAY_TIMEOUT.response());
        if let Some(mut entry) = running.access.take().filter(|_| answered) {
            entry.set_result(GATEWAY_TIMEOUT.code(), GATEWAY_TIMEOUT.body_len());
        }
        overdue.push((what, ran, answered));
    }
    overdue
}

fn watch(shared: &Shared, limit: Duration) {
    let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        thread::sleep(tick);
        let overdue = cut_overdue(shared, limit);
        for (what, ran, answered) in &overdue {
            let outcome = if *answered {
                "answered 504"
            } else {
                "its response is cut off"
            };
            error!(
                "server",
                "request {what} has been in the app for {:.1} s (--request-timeout {:.1} s): {outcome}; \
                 replacing worker {}",
                ran.as_secs_f64(),
                limit.as_secs_f64(),
                std::process::id()
            );
        }
        if !overdue.is_empty() && !shared.replacement_asked.swap(true, Ordering::Relaxed) {
            process::request_replacement(Message::Hung);
        }
    }
}
