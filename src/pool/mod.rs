//! The `-t` request handling models, mapped onto a pool of Python worker threads.
//!
//! Every model calls the app on a worker thread that is attached to Python once and releases
//! the GIL while it waits for work. The models differ in how many threads there may be, how
//! many requests may wait for one, when the process gives up as wedged, and (rplex) who
//! iterates the response: see the README's "Handling models" section.
//!
//! The pool is the event loop's [`Dispatcher`]; its threads (`worker`) run requests through a
//! [`RequestHandler`] (the embedded WSGI app, above this layer), and its `monitor` decides how
//! many run at once. Beside it: the wedge rule of `free timeout=` and `pool abort=` (`wedge`),
//! and the recycling watch of `--max-requests` and `--request-timeout` (`watchdog`).

mod handler;
mod monitor;
mod shared;
mod slot;
pub mod watchdog;
pub mod wedge;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use self::handler::RequestHandler;
use self::monitor::monitor_main;
use self::shared::{Queue, Shared};
pub use self::slot::waiting_on_client;
use self::slot::IDLE;
use self::wedge::{spawn_wedge_watch, Wedge};
use crate::base::config::Model;
use crate::base::log::warning;
use crate::seam::notifier::{LoopWaker, Notifier};
use crate::seam::request::Request;
use crate::server::dispatcher::{Dispatcher, HoldBack, READ_AHEAD};
use crate::server::doorway::Doorway;

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
        let (max_threads, queue_limit) = (model.max_running(), model.queue_limit(max_queue));
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
                warning!("server", "cannot start the worker monitor thread: {e}");
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
}

impl WorkerPool {
    /// What tells, at any time, which worker threads run a request now (their Python thread
    /// idents, for their stacks: see `watchdog::StackSource`).
    pub fn busy_threads(&self) -> impl Fn() -> Vec<u64> + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            let slots = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter(|slot| slot.state.load(Ordering::Relaxed) != IDLE)
                .map(|slot| slot.ident)
                .collect()
        }
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
        queue.publish();
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
