//! The `-t` request handling models, mapped onto a pool of Python worker threads.
//!
//! Every model calls the app on a worker thread that is attached to Python once and releases
//! the GIL while it waits for work. The models differ in how many threads there may be, how
//! many requests may wait for one, when the process gives up as wedged, and (rplex) who
//! iterates the response: see the README's "Handling models" section.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use pyo3::Python;

use crate::dispatch::{Dispatcher, HoldBack, LoopWaker, Notifier, Request, READ_AHEAD};
use crate::doorway::{Direct, Doorway, Woke};
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
    /// Idle threads waiting on `work`.
    idle: usize,
    /// Idle threads waiting in the doorway (for a connection, or a kick when work is queued).
    door_waiters: usize,
    /// Since when no thread waits in the doorway (see [`GRACE`]).
    door_unattended_since: Option<Instant>,
    /// Threads running a request now.
    running: usize,
    /// How many requests may run at once now (see [`Shared::adjust`]): between 1 and the
    /// model's maximum.
    allowed: usize,
    /// Requests finished so far (the monitor watches it move).
    completed: u64,
    /// Times the queue was found with room to run what waits (a backlog that breaks is not one
    /// that calls for more threads).
    emptied: u64,
    /// The monitor sleeps until a backlog or concurrent requests call for it.
    monitor_parked: bool,
    /// The loop held back because enough requests wait (a connection left to sibling
    /// processes, or request bodies left unread): wake it as the queue runs down.
    held_back: HoldBack,
    stopping: bool,
    /// Since when the loop has held a request the full queue refused (pool's `abort=`).
    refused_since: Option<Instant>,
}

impl Queue {
    /// Requests wait while every request allowed to run is running.
    fn backlogged(&self) -> bool {
        !self.pending.is_empty() && self.running >= self.allowed
    }
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
    /// Wakes the monitor out of its park.
    monitor: Condvar,
    max_threads: usize,
    queue_limit: usize,
    idle_retire: Duration,
    handler: Arc<dyn RequestHandler>,
    loop_waker: LoopWaker,
    /// Other processes accept from the same listening socket.
    shared_listener: bool,
    /// Every live worker thread, for the monitor's census.
    slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Where idle threads accept connections themselves, when the loop offered one.
    doorway: std::sync::OnceLock<Arc<Doorway>>,
    /// rplex: responses outlive their app call, so no doorway.
    rplex: bool,
}

/// A pool of Python worker threads that takes requests from the event loop.
///
/// Requests run on up to the model's `max` threads, but only as many run at once as keep the
/// GIL busy: the threads share one GIL, so a second request running beside a first that
/// computes only adds GIL hand-offs. A monitor thread watches while requests wait: when every
/// running request is blocked outside Python (a sleep, a socket, the disk) it lets more run,
/// doubling each time; when several running requests want the GIL at once it lets fewer run.
pub struct WorkerPool {
    shared: Arc<Shared>,
}

impl WorkerPool {
    /// A pool shaped by `model`, running `handler`; at most `max_queue` requests wait for a
    /// thread (pool uses its own `queue=` instead). Threads start on demand. With
    /// `shared_listener` (other processes accept from the same socket) the loop takes a new
    /// connection only while fewer than one request waits for the running ones.
    pub fn new(
        model: &Model,
        handler: Arc<dyn RequestHandler>,
        max_queue: usize,
        shared_listener: bool,
    ) -> WorkerPool {
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
                door_waiters: 0,
                door_unattended_since: None,
                running: 0,
                allowed: 1,
                completed: 0,
                emptied: 0,
                monitor_parked: false,
                held_back: HoldBack::default(),
                stopping: false,
                refused_since: None,
            }),
            work: Condvar::new(),
            monitor: Condvar::new(),
            max_threads,
            queue_limit,
            idle_retire: Duration::from_secs(60),
            handler,
            loop_waker: LoopWaker::default(),
            shared_listener,
            slots: Mutex::new(Vec::new()),
            doorway: std::sync::OnceLock::new(),
            rplex: model.multiplexes_responses(),
        });
        if max_threads > 1 {
            let monitored = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name("wsgi-monitor".into())
                .spawn(move || monitor_main(&monitored));
            if let Err(e) = spawned {
                // Without the monitor every request may run at once, as the model allows.
                crate::warning!("server", "cannot start the worker monitor thread: {e}");
                shared.lock().allowed = max_threads;
            }
        }
        if let Some(wedge) = wedge {
            let watched = Arc::clone(&shared);
            spawn_wedge_watch(wedge, move |wedge| {
                let queue = watched.lock();
                match wedge {
                    // Waiting counts once every thread the model allows is busy: below that
                    // the monitor lets more requests run as soon as the running ones block.
                    Wedge::ThreadWait(_) if queue.running < watched.max_threads => None,
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

    /// Waits (the caller has released the GIL) for the next request; `None` tells the thread
    /// to end. `finished` says the thread has just finished one.
    #[inline(never)] // Its locals stay off the stack the app runs on (see worker_main).
    fn next_request(&self, slot: &WorkerSlot, finished: bool) -> Option<(Request, Option<Direct>)> {
        let mut queue = self.lock();
        if finished {
            queue.running -= 1;
            queue.completed += 1;
            slot.set(IDLE);
        }
        loop {
            let was_full = queue.pending.len() >= self.queue_limit;
            if queue.running < queue.allowed {
                if let Some((request, _)) = queue.pending.pop_front() {
                    queue.running += 1;
                    slot.set(RUNNING);
                    let wake_monitor = queue.running > 1 && queue.monitor_parked;
                    if wake_monitor {
                        queue.monitor_parked = false;
                    }
                    if was_full {
                        // The loop stopped taking requests at the limit: tell it there is room.
                        queue.refused_since = None;
                    }
                    let waiting = queue.pending.len();
                    let wake_loop = queue.held_back.resumes(waiting) || was_full;
                    drop(queue);
                    if wake_monitor {
                        self.monitor.notify_one();
                    }
                    if wake_loop {
                        self.wake_loop();
                    }
                    return Some((request, None));
                }
            }
            if queue.pending.is_empty() {
                queue.emptied += 1;
                if queue.held_back.resumes(0) {
                    // The loop left connections to sibling processes while this one was busy:
                    // it is free now.
                    self.wake_loop();
                }
                if queue.stopping {
                    queue.threads -= 1;
                    return None;
                }
            }
            let door = self.doorway.get().filter(|d| d.accepting() && !queue.stopping);
            if let Some(door) = door.filter(|_| queue.running < queue.allowed && queue.pending.is_empty()) {
                match self.wait_in_doorway(queue, door, slot) {
                    Ok(taken) => return Some(taken),
                    Err(Some(guard)) => {
                        queue = guard;
                        continue;
                    }
                    Err(None) => return None,
                }
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

    /// An idle thread waits in the doorway: for a connection to serve, or work queued. The
    /// first thread there leaves accepting to the workers again (see `doorway`). Returns a
    /// request to run, or the queue to look at again (`None`: the thread retires).
    #[allow(clippy::type_complexity)]
    fn wait_in_doorway<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
        door: &Arc<Doorway>,
        slot: &WorkerSlot,
    ) -> Result<(Request, Option<Direct>), Option<MutexGuard<'a, Queue>>> {
        queue.door_waiters += 1;
        queue.door_unattended_since = None;
        if door.set_loop_mode(false) {
            crate::debug!("server", "a worker is idle: workers accept new connections again");
        }
        drop(queue);
        let woke = door.wait(self.idle_retire);
        let mut queue = self.lock();
        queue.door_waiters -= 1;
        if queue.door_waiters == 0 {
            queue.door_unattended_since = Some(Instant::now());
            if std::mem::replace(&mut queue.monitor_parked, false) {
                // It watches how long the doorway goes unattended.
                self.monitor.notify_one();
            }
        }
        match woke {
            Woke::Timeout if queue.pending.is_empty() && queue.threads > 1 => {
                queue.threads -= 1;
                return Err(None);
            }
            Woke::Connection if queue.pending.is_empty() && queue.running < queue.allowed => {}
            _ => return Err(Some(queue)),
        }
        queue.running += 1;
        slot.set(RUNNING);
        drop(queue);
        if let Some((request, direct)) = door.take() {
            return Ok((request, Some(direct)));
        }
        let mut queue = self.lock();
        queue.running -= 1;
        slot.set(IDLE);
        Err(Some(queue))
    }

    /// Wakes one idle thread for queued work: one waiting on `work`, else one in the doorway.
    fn wake_idle(&self, queue: &Queue) {
        if queue.idle > 0 {
            self.work.notify_one();
        } else if queue.door_waiters > 0 {
            if let Some(door) = self.doorway.get() {
                door.kick();
            }
        }
    }

    /// Wakes the event loop so that it takes connections again.
    fn wake_loop(&self) {
        self.loop_waker.wake();
    }

    /// Starts one more worker thread (the caller holds the queue lock and has checked the maximum).
    fn spawn_worker(self: &Arc<Self>, queue: &mut Queue) {
        queue.threads += 1;
        let shared = Arc::clone(self);
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

    /// Gets waiting requests going up to the allowed number: wakes idle threads, starts new ones.
    fn fill(self: &Arc<Self>, queue: &mut Queue) {
        let want = queue
            .pending
            .len()
            .min(queue.allowed.saturating_sub(queue.running));
        let idle = queue.idle + queue.door_waiters;
        for _ in idle..want {
            if queue.threads >= self.max_threads {
                break;
            }
            self.spawn_worker(queue);
        }
        for _ in 0..want.min(queue.idle) {
            self.work.notify_one();
        }
        if let Some(door) = self.doorway.get() {
            for _ in 0..want.saturating_sub(queue.idle).min(queue.door_waiters) {
                door.kick();
            }
        }
    }

    /// One look at the running requests (see [`Census`]) and the change of the allowed number
    /// it calls for. `backlog` says requests have waited for the whole last tick; `stalled`
    /// that none finished for [`STALL`] meanwhile; `gil_idle` that this look and the one
    /// before (both in a backlog) found no running request wanting the GIL; `contended` that
    /// the last two looks found several wanting it. Two looks, not one: a request that
    /// computes is now and then caught inside a quick system call (its response's send).
    fn adjust(
        self: &Arc<Self>,
        backlog: bool,
        stalled: bool,
        gil_idle: bool,
        contended: bool,
        census: Census,
    ) {
        let mut queue = self.lock();
        let before = queue.allowed;
        let why = if gil_idle {
            // Every running request waits outside Python: the GIL is idle while work waits.
            queue.allowed = (queue.allowed * 2).min(self.max_threads);
            "every running request is blocked outside Python"
        } else if backlog && stalled && census.computing == 0 {
            // Running requests wait on locks and none computes, so nobody holds the GIL: they
            // wait on the app's locks (long polls, pools), maybe for a request still queued.
            queue.allowed = (queue.allowed * 2).min(self.max_threads);
            "the running requests wait on locks and none has finished for a while"
        } else if backlog && stalled {
            // One computes and has for a while: let one more run beside it, sharing the GIL
            // (Python switches every 5 ms), so a long computation does not hold up short
            // requests until it ends.
            queue.allowed = (queue.allowed + 1).min(self.max_threads);
            "a running request has computed for a while with requests waiting"
        } else if contended && census.computing > 0 {
            // One computes and others queue for the GIL (app locks show no one computing):
            // let as many run as are blocked, plus one.
            queue.allowed = (census.blocked + 1).clamp(1, queue.allowed);
            "running requests queue for the GIL"
        } else {
            return;
        };
        if queue.allowed != before {
            crate::debug!(
                "server",
                "{why} ({} computing, {} on a lock, {} blocked): up to {} requests may run at once",
                census.computing,
                census.locked,
                census.blocked,
                queue.allowed
            );
        }
        if queue.allowed > before {
            self.fill(&mut queue);
        }
    }

    /// What the running workers are doing now.
    fn census(&self) -> Census {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut census = Census::default();
        for slot in slots.iter() {
            match slot.state.load(Ordering::Relaxed) {
                RUNNING => match slot.activity() {
                    Activity::Computing => census.computing += 1,
                    Activity::Lock => census.locked += 1,
                    Activity::Blocked => census.blocked += 1,
                },
                WAITING => census.blocked += 1,
                _ => {}
            }
        }
        census
    }
}

/// How often the monitor looks while requests wait for a thread.
const TICK: Duration = Duration::from_millis(5);
/// How long every worker may be busy, with new connections left in the listen backlog for
/// them, before the event loop accepts them (and a backlog shows, which calls for threads).
const GRACE: Duration = Duration::from_millis(5);
/// Quiet ticks (no backlog, at most one request running) before the monitor parks.
const QUIET_TICKS: u32 = 20;
/// Ticks between two looks for GIL contention while several requests run.
const CONTENTION_EVERY: u32 = 2;
/// A backlog during which no request finished for this long gets more threads: twice as
/// many when none computes (the running ones wait on an app's locks: a GIL holder would be
/// computing), one more when one does (so that it shares the GIL with a waiting request).
const STALL: Duration = Duration::from_millis(50);

fn monitor_main(shared: &Arc<Shared>) {
    let mut quiet = 0u32;
    let mut tick = 0u32;
    let mut last_completion = Instant::now();
    // What the last look found: only what two looks in a row find changes anything.
    let mut contended = false;
    let mut gil_idle = false;
    loop {
        let (emptied, completed) = {
            let mut queue = shared.lock();
            loop {
                if queue.stopping {
                    return;
                }
                if quiet < QUIET_TICKS
                    || queue.backlogged()
                    || queue.running > 1
                    || queue.door_unattended_since.is_some()
                {
                    break;
                }
                queue.monitor_parked = true;
                queue = shared.monitor.wait(queue).unwrap_or_else(|e| e.into_inner());
                quiet = 0;
            }
            (queue.emptied, queue.completed)
        };
        thread::sleep(TICK);
        tick = tick.wrapping_add(1);
        let (backlog, contention_check) = {
            let mut queue = shared.lock();
            if queue.completed != completed {
                last_completion = Instant::now();
            }
            let backlog = queue.backlogged() && queue.emptied == emptied;
            if let Some(door) = shared.doorway.get() {
                let unattended = queue.door_unattended_since.is_some_and(|t| t.elapsed() >= GRACE);
                if unattended && door.is_open() && door.set_loop_mode(true) {
                    crate::debug!(
                        "server",
                        "every worker has been busy for {} ms: the event loop accepts new connections",
                        GRACE.as_millis()
                    );
                    shared.wake_loop();
                }
                if unattended && queue.idle > 0 && queue.running < queue.allowed && door.accepting() {
                    // Threads that stepped aside from the doorway (see `Doorway::step_aside`)
                    // wait for work on `work`: send them back to it.
                    shared.work.notify_all();
                }
            }
            if queue.running == 0 && queue.pending.is_empty() {
                // A lull: whatever blocked before may not come back; start again from one.
                queue.allowed = 1;
            }
            if queue.backlogged() || queue.running > 1 {
                quiet = 0;
            } else {
                quiet += 1;
            }
            // Each look reads a file per running request: look less often when many run.
            let every = CONTENTION_EVERY * (queue.running as u32 / 8).max(1);
            (backlog, queue.running > 1 && tick % every == 0)
        };
        if backlog || contention_check {
            let stalled = last_completion.elapsed() >= STALL;
            let census = shared.census();
            let seen_twice = contended && census.wanting_gil() >= 2;
            if contention_check {
                contended = census.wanting_gil() >= 2;
            }
            let idle_now = backlog && census.wanting_gil() == 0;
            let idle_twice = gil_idle && idle_now;
            gil_idle = idle_now;
            shared.adjust(backlog, stalled, idle_twice, seen_twice, census);
            if stalled {
                last_completion = Instant::now();
            }
        } else {
            gil_idle = false;
        }
    }
}

/// What a worker thread is doing, as the monitor sees it.
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
/// Running a request, but waiting for its client to take output (without the GIL).
const WAITING: u8 = 2;

/// A worker thread as the monitor sees it.
struct WorkerSlot {
    state: AtomicU8,
    /// The thread's id, as the kernel knows it.
    tid: libc::pid_t,
}

/// Where a running worker is, from its system call.
enum Activity {
    /// On a CPU or ready for one.
    Computing,
    /// Waiting on a lock: the GIL, most likely.
    Lock,
    /// In any other blocking call: sleep, socket, pipe, disk.
    Blocked,
}

#[derive(Default, Debug, Clone, Copy)]
struct Census {
    computing: usize,
    locked: usize,
    blocked: usize,
}

impl Census {
    fn wanting_gil(&self) -> usize {
        self.computing + self.locked
    }
}

impl WorkerSlot {
    fn for_current_thread() -> WorkerSlot {
        WorkerSlot {
            state: AtomicU8::new(IDLE),
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
        }
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }

    fn activity(&self) -> Activity {
        // Opened for each look rather than kept: the server's descriptors stay its sockets and
        // files. Where there is no such file, the thread counts as computing, so requests run
        // one at a time unless they wait in our own waits (see `waiting_on_client`).
        let Ok(mut file) = File::open(format!("/proc/self/task/{}/syscall", self.tid)) else {
            return Activity::Computing;
        };
        let mut text = [0u8; 32];
        match file.read(&mut text) {
            Ok(n) => classify_syscall(&text[..n]),
            Err(_) => Activity::Computing,
        }
    }
}

/// Reads the first field of a `/proc/.../syscall` line: "running", "-1" (not in a system
/// call) or the number of the call the thread is blocked in.
fn classify_syscall(line: &[u8]) -> Activity {
    let first = line.split(|b| b.is_ascii_whitespace()).next().unwrap_or(b"");
    match std::str::from_utf8(first)
        .ok()
        .and_then(|f| f.parse::<libc::c_long>().ok())
    {
        Some(libc::SYS_futex) => Activity::Lock,
        Some(n) if n >= 0 => Activity::Blocked,
        _ => Activity::Computing,
    }
}

thread_local! {
    static CURRENT_SLOT: std::cell::RefCell<Option<Arc<WorkerSlot>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `wait`, a wait for the client made without the GIL, with the calling worker counted
/// as blocked, so the pool may let another request run meanwhile.
pub fn waiting_on_client<R>(wait: impl FnOnce() -> R) -> R {
    let slot = CURRENT_SLOT.with(|slot| slot.borrow().clone());
    if let Some(slot) = &slot {
        slot.set(WAITING);
    }
    let result = wait();
    if let Some(slot) = &slot {
        slot.set(RUNNING);
    }
    result
}

/// A worker thread's life. What it needs between requests (waiting, the doorway, handing a
/// connection back) lives in functions kept out of line, so the app is called with a short
/// stack under it: with a small app, a thread then touches two stack pages instead of three,
/// 4 KiB less per thread (128 KiB at 32 threads).
fn worker_main(shared: Arc<Shared>) {
    let slot = Arc::new(WorkerSlot::for_current_thread());
    shared
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::clone(&slot));
    CURRENT_SLOT.with(|current| *current.borrow_mut() = Some(Arc::clone(&slot)));
    Python::attach(|py| {
        let mut finished = false;
        while let Some((request, direct)) = py.detach(|| shared.next_request(&slot, finished)) {
            shared.handler.handle(py, request);
            if let Some(direct) = direct {
                direct.finish();
            }
            finished = true;
        }
    });
    shared
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|s| !Arc::ptr_eq(s, &slot));
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
        if queue.pending.len() <= queue.allowed.saturating_sub(queue.running) {
            // It can run now: no backlog. A busy worker would take it only after its request.
            queue.emptied += 1;
            if queue.idle + queue.door_waiters >= queue.pending.len()
                || queue.threads >= self.shared.max_threads
            {
                self.shared.wake_idle(&queue);
            } else {
                self.shared.spawn_worker(&mut queue);
            }
        } else if queue.monitor_parked {
            queue.monitor_parked = false;
            drop(queue);
            self.shared.monitor.notify_one();
        }
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

    fn wants_more(&self, incoming: usize) -> bool {
        if !self.shared.shared_listener {
            return true;
        }
        let queue = &mut *self.shared.lock();
        // Enough to keep the workers going, and one ready for the next free one; a sibling
        // takes the rest.
        let free = queue.allowed.saturating_sub(queue.running);
        let waiting = queue.pending.len() + incoming;
        queue.held_back.admits(waiting, free + 1)
    }

    fn wants_bodies(&self) -> bool {
        let queue = &mut *self.shared.lock();
        queue.held_back.admits(queue.pending.len(), READ_AHEAD)
    }

    fn queue_limit(&self) -> usize {
        self.shared.queue_limit
    }

    fn set_waker(&mut self, notifier: Arc<Notifier>) {
        self.shared.loop_waker.set(notifier);
    }

    fn set_doorway(&mut self, doorway: Arc<Doorway>) -> bool {
        // rplex: responses outlive their app call. One thread: no monitor to call the loop in
        // when it is busy, and the model's queue (and its wedge rule) would never be used.
        if self.shared.rplex || self.shared.max_threads < 2 || self.shared.doorway.set(doorway).is_err() {
            return false;
        }
        // Nothing else starts the first thread: the loop dispatches nothing until its
        // workers are busy past the grace period.
        let mut queue = self.shared.lock();
        queue.door_unattended_since = Some(Instant::now());
        if queue.threads == 0 {
            self.shared.spawn_worker(&mut queue);
        }
        true
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        if let Some(door) = self.shared.doorway.get() {
            door.kick_all();
        }
        self.shared.work.notify_all();
        self.shared.monitor.notify_all();
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
    fn system_calls_tell_computing_from_locked_from_blocked() {
        let futex = format!("{} 0x7f 0x89 0x0\n", libc::SYS_futex);
        let sleep = format!("{} 0x1 0x1 0x7ff\n", libc::SYS_clock_nanosleep);
        let cases: [(&[u8], &str); 6] = [
            (b"running\n", "computing"),
            (b"-1 0x7ffd 0x7f12\n", "computing"),
            (futex.as_bytes(), "lock"),
            (sleep.as_bytes(), "blocked"),
            (b"0 0x5 0x7ff 0x10000\n", "blocked"),
            (b"", "computing"),
        ];
        for (line, want) in cases {
            let got = match classify_syscall(line) {
                Activity::Computing => "computing",
                Activity::Lock => "lock",
                Activity::Blocked => "blocked",
            };
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(line));
        }
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
