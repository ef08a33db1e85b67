//! The `-t` request handling models, mapped onto a pool of Python worker threads.
//!
//! Every model calls the app on a worker thread that is attached to Python once and releases
//! the GIL while it waits for work. The models differ in how many threads there may be, how
//! many requests may wait for one, when the process gives up as wedged, and (rplex) who
//! iterates the response: see the README's "Handling models" section.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::Python;

use crate::dispatch::{Dispatcher, Notifier, Request};
use crate::error::ConfigError;

/// Default thread bound for `free` (the original has none; an unbounded default is not safe).
pub const FREE_DEFAULT_MAX: usize = 128;
/// Default thread bound for `pool`, as in the original.
pub const POOL_DEFAULT_MAX: usize = 25;
/// Default queue bound for `pool`, as in the original.
pub const POOL_DEFAULT_QUEUE: usize = 100;

/// A handling model and its parameters, as given with `-t`.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// A thread per running request, at most `max`; `timeout` aborts the process when a
    /// request waits that long for a thread.
    Free {
        /// Most requests running at once.
        max: usize,
        /// Longest wait for a thread before the process aborts.
        timeout: Option<Duration>,
    },
    /// At most `max` threads fed from a queue of at most `queue` requests.
    Pool {
        /// Most threads.
        max: usize,
        /// Most requests waiting for a thread.
        queue: usize,
        /// Longest wait in the queue before the process aborts.
        abort: Option<Duration>,
    },
    /// App calls on up to `max` threads; response iterators advanced by one response thread.
    Rplex {
        /// Most app calls running at once.
        max: usize,
    },
    /// One request at a time, no extra threads for the app.
    Single,
}

impl Model {
    /// Parses `HANDLER[:PAR[=VAL](,PAR[=VAL])...]`.
    pub fn parse(spec: &str) -> Result<Model, ConfigError> {
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let known: &'static str = match name {
            // The original's code spells free's timeout `abort`, its manual `timeout`: take both.
            "free" => "max, timeout, abort",
            "pool" => "max, queue, abort",
            "rplex" => "max",
            "single" => "none",
            _ => return Err(ConfigError::UnknownModel(name.to_string())),
        };
        let mut params: Vec<(&str, Option<&str>)> = Vec::new();
        for param in rest.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            if !known.split(", ").any(|k| k == key) {
                return Err(ConfigError::UnknownParameter {
                    model: name.to_string(),
                    param: key.to_string(),
                    known,
                });
            }
            params.push((key, value));
        }
        // The last occurrence of a parameter wins, as with repeated command-line flags.
        let get = |key: &str| params.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let bad = |key: &str, value: Option<&str>, reason| ConfigError::BadParameter {
            model: name.to_string(),
            param: key.to_string(),
            value: value.unwrap_or("").to_string(),
            reason,
        };
        let count = |key: &str, default: usize| match get(key) {
            None => Ok(default),
            Some(value) => value
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key, value, "expected a whole number of at least 1")),
        };
        let seconds = |key: &str| match get(key) {
            None => Ok(None),
            Some(value) => value
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(|s| Some(Duration::from_secs_f64(s)))
                .ok_or_else(|| bad(key, value, "expected a number of seconds above 0")),
        };
        Ok(match name {
            "free" => Model::Free {
                max: count("max", FREE_DEFAULT_MAX)?,
                timeout: match seconds("timeout")? {
                    Some(t) => Some(t),
                    None => seconds("abort")?,
                },
            },
            "pool" => Model::Pool {
                max: count("max", POOL_DEFAULT_MAX)?,
                queue: count("queue", POOL_DEFAULT_QUEUE)?,
                abort: seconds("abort")?,
            },
            "rplex" => Model::Rplex {
                max: count("max", FREE_DEFAULT_MAX)?,
            },
            _ => Model::Single,
        })
    }

    /// Whether response iterators are advanced by one response thread (rplex).
    pub fn multiplexes_responses(&self) -> bool {
        matches!(self, Model::Rplex { .. })
    }

    /// Whether requests may run on several threads at once (`wsgi.multithread`).
    pub fn multithread(&self) -> bool {
        !matches!(self, Model::Single)
    }
}

/// Runs one complete request on the calling (attached) thread.
pub trait RequestHandler: Send + Sync + 'static {
    /// Runs the app for `request` and sends its response through the request's outbox.
    fn handle(&self, py: Python<'_>, request: Request);
}

struct Queue {
    pending: VecDeque<(Request, Instant)>,
    threads: usize,
    idle: usize,
    stopping: bool,
    /// Since when the loop has held a request the full queue refused (pool's `abort=`).
    refused_since: Option<Instant>,
}

/// When the process decides the app is wedged and aborts, as the original does.
#[derive(Debug, Clone, Copy)]
pub enum Wedge {
    /// free's `timeout=`: a request waited this long for a thread.
    ThreadWait(Duration),
    /// pool's `abort=`: the queue stayed full this long with a request waiting to get in.
    QueueFull(Duration),
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    max_threads: usize,
    queue_limit: usize,
    idle_retire: Duration,
    handler: Arc<dyn RequestHandler>,
    /// Wakes the event loop when a full queue gets room again.
    loop_waker: Mutex<Option<Arc<Notifier>>>,
}

/// A pool of Python worker threads that takes requests from the event loop.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl WorkerPool {
    /// A pool shaped by `model`, running `handler`; at most `max_queue` requests wait for a
    /// thread (pool uses its own `queue=` instead). Threads start on demand.
    pub fn new(model: &Model, handler: Arc<dyn RequestHandler>, max_queue: usize) -> WorkerPool {
        let (max_threads, queue_limit) = match *model {
            Model::Free { max, .. } => (max, max_queue),
            Model::Pool { max, queue, .. } => (max, queue),
            Model::Rplex { max } => (max, max_queue),
            Model::Single => (1, max_queue),
        };
        let wedge = Wedge::for_model(model);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                threads: 0,
                idle: 0,
                stopping: false,
                refused_since: None,
            }),
            work: Condvar::new(),
            max_threads,
            queue_limit,
            idle_retire: Duration::from_secs(60),
            handler,
            loop_waker: Mutex::new(None),
        });
        if let Some(wedge) = wedge {
            let watched = Arc::clone(&shared);
            spawn_wedge_watch(wedge, move |wedge| {
                let queue = watched.lock();
                match wedge {
                    Wedge::ThreadWait(_) => queue.pending.front().map(|(_, since)| since.elapsed()),
                    Wedge::QueueFull(_) => queue.refused_since.map(|since| since.elapsed()),
                }
            });
        }
        WorkerPool { shared }
    }

    /// Number of worker threads alive now.
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (the caller has released the GIL) for the next request; `None` tells the thread to end.
    fn next_request(&self) -> Option<Request> {
        let mut queue = self.lock();
        loop {
            let was_full = queue.pending.len() >= self.queue_limit;
            if let Some((request, _)) = queue.pending.pop_front() {
                if was_full {
                    // The loop stopped taking requests at the limit: tell it there is room.
                    queue.refused_since = None;
                    drop(queue);
                    let waker = self.loop_waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                return Some(request);
            }
            if queue.stopping {
                queue.threads -= 1;
                return None;
            }
            queue.idle += 1;
            let (guard, waited) = self
                .work
                .wait_timeout(queue, self.idle_retire)
                .unwrap_or_else(|e| e.into_inner());
            queue = guard;
            queue.idle -= 1;
            if waited.timed_out() && queue.pending.is_empty() && queue.threads > 1 {
                queue.threads -= 1;
                return None;
            }
        }
    }
}

fn worker_main(shared: Arc<Shared>) {
    Python::attach(|py| {
        while let Some(request) = py.detach(|| shared.next_request()) {
            shared.handler.handle(py, request);
        }
    });
}

/// Aborts the process (so a supervisor restarts it) when requests stop getting through.
impl Wedge {
    /// The wedge rule of a model, if its parameters ask for one (free timeout=, pool abort=).
    pub fn for_model(model: &Model) -> Option<Wedge> {
        match *model {
            Model::Free { timeout, .. } => timeout.map(Wedge::ThreadWait),
            Model::Pool { abort, .. } => abort.map(Wedge::QueueFull),
            Model::Rplex { .. } | Model::Single => None,
        }
    }
}

/// Starts the thread that aborts the process when `waited` (asked with the rule) says a
/// request has waited longer than the rule allows, as the original does.
pub fn spawn_wedge_watch(wedge: Wedge, waited: impl Fn(Wedge) -> Option<Duration> + Send + 'static) {
    let _ = thread::Builder::new()
        .name("wedge-watch".into())
        .spawn(move || watch_for_wedge(wedge, waited));
}

fn watch_for_wedge(wedge: Wedge, waited: impl Fn(Wedge) -> Option<Duration>) {
    let limit = match wedge {
        Wedge::ThreadWait(limit) | Wedge::QueueFull(limit) => limit,
    };
    let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        thread::sleep(tick);
        let waited = waited(wedge);
        let Some(waited) = waited.filter(|w| *w > limit) else {
            continue;
        };
        match wedge {
            Wedge::ThreadWait(_) => crate::error!(
                "server",
                "a request has waited {:.1} s for a worker thread (free timeout={:.1}): the app seems wedged; aborting",
                waited.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Wedge::QueueFull(_) => crate::error!(
                "server",
                "the request queue has been full for {:.1} s (pool abort={:.1}): the app seems wedged; aborting",
                waited.as_secs_f64(),
                limit.as_secs_f64()
            ),
        }
        std::process::abort();
    }
}

impl Dispatcher for WorkerPool {
    fn dispatch(&mut self, request: Request) -> Result<(), Request> {
        let mut queue = self.shared.lock();
        if queue.pending.len() >= self.shared.queue_limit {
            queue.refused_since.get_or_insert_with(Instant::now);
            return Err(request);
        }
        queue.pending.push_back((request, Instant::now()));
        if queue.pending.len() > queue.idle && queue.threads < self.shared.max_threads {
            queue.threads += 1;
            let shared = Arc::clone(&self.shared);
            // Python code may recurse deeply; give it the stack a Python thread would get.
            let spawned = thread::Builder::new()
                .name("wsgi-worker".into())
                .stack_size(8 << 20)
                .spawn(move || worker_main(shared));
            if let Err(e) = spawned {
                queue.threads -= 1;
                crate::error!("server", "cannot start a worker thread: {e}");
            }
        }
        drop(queue);
        self.shared.work.notify_one();
        Ok(())
    }

    fn has_room(&self) -> bool {
        let mut queue = self.shared.lock();
        let room = queue.pending.len() < self.shared.queue_limit;
        if !room {
            // The loop asks when it has a connection to take: that one is now kept waiting.
            queue.refused_since.get_or_insert_with(Instant::now);
        }
        room
    }

    fn queue_limit(&self) -> usize {
        self.shared.queue_limit
    }

    fn set_waker(&mut self, notifier: Arc<Notifier>) {
        *self.shared.loop_waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_defaults() {
        assert_eq!(
            Model::parse("free").unwrap(),
            Model::Free {
                max: FREE_DEFAULT_MAX,
                timeout: None
            }
        );
        assert_eq!(
            Model::parse("free:max=4,timeout=2.5").unwrap(),
            Model::Free {
                max: 4,
                timeout: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            Model::parse("free:abort=3").unwrap(),
            Model::Free {
                max: FREE_DEFAULT_MAX,
                timeout: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            Model::parse("pool").unwrap(),
            Model::Pool {
                max: 25,
                queue: 100,
                abort: None
            }
        );
        assert_eq!(
            Model::parse("pool:max=3,queue=7,abort=10").unwrap(),
            Model::Pool {
                max: 3,
                queue: 7,
                abort: Some(Duration::from_secs(10))
            }
        );
        assert_eq!(Model::parse("rplex:max=9").unwrap(), Model::Rplex { max: 9 });
        assert_eq!(Model::parse("single").unwrap(), Model::Single);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            ("threaded", "threaded"),
            ("free:queue=3", "queue"),
            ("single:max=2", "max"),
            ("free:max=0", "max"),
            ("free:max=x", "max"),
            ("free:max", "max"),
            ("pool:abort=-1", "abort"),
            ("free:timeout=", "timeout"),
        ];
        for (spec, named) in cases {
            let message = Model::parse(spec).unwrap_err().to_string();
            assert!(message.contains(named), "{spec}: {message}");
        }
    }
}
