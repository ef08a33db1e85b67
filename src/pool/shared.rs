//! What the pool's threads share: the queue of requests waiting for a thread, and the counts
//! the monitor and the loop's questions read (all under one lock).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::handler::RequestHandler;
use super::slot::WorkerSlot;
use crate::base::metrics::{self, Gauge};
use crate::seam::notifier::LoopWaker;
use crate::seam::request::Request;
use crate::server::dispatcher::HoldBack;
use crate::server::doorway::Doorway;

pub(super) struct Queue {
    pub(super) pending: VecDeque<(Request, Instant)>,
    pub(super) threads: usize,
    /// Idle threads waiting on `work`.
    pub(super) idle: usize,
    /// Idle threads waiting in the doorway (for a connection, or a kick when work is queued).
    pub(super) door_waiters: usize,
    /// Since when no thread waits in the doorway (see [`GRACE`]).
    pub(super) door_unattended_since: Option<Instant>,
    /// Threads running a request now.
    pub(super) running: usize,
    /// How many requests may run at once now (see [`Shared::adjust`]): between 1 and the
    /// model's maximum.
    pub(super) allowed: usize,
    /// Requests finished so far (the monitor watches it move).
    pub(super) completed: u64,
    /// Times the queue was found with room to run what waits (a backlog that breaks is not one
    /// that calls for more threads).
    pub(super) emptied: u64,
    /// The monitor sleeps until a backlog or concurrent requests call for it.
    pub(super) monitor_parked: bool,
    /// The loop held back because enough requests wait (a connection left to sibling
    /// processes, or request bodies left unread): wake it as the queue runs down.
    pub(super) held_back: HoldBack,
    pub(super) stopping: bool,
    /// Since when the loop has held a request the full queue refused (pool's `abort=`).
    pub(super) refused_since: Option<Instant>,
}

impl Queue {
    /// Stores the pool's gauges for the metrics: requests waiting, threads busy and idle.
    pub(super) fn publish(&self) {
        if metrics::enabled() {
            metrics::set(Gauge::Queued, self.pending.len());
            metrics::set(Gauge::BusyThreads, self.running);
            metrics::set(Gauge::IdleThreads, self.threads.saturating_sub(self.running));
        }
    }

    /// Requests wait while every request allowed to run is running.
    pub(super) fn backlogged(&self) -> bool {
        !self.pending.is_empty() && self.running >= self.allowed
    }
}

pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    pub(super) work: Condvar,
    /// Wakes the monitor out of its park.
    pub(super) monitor: Condvar,
    pub(super) max_threads: usize,
    pub(super) queue_limit: usize,
    pub(super) idle_retire: Duration,
    pub(super) handler: Arc<dyn RequestHandler>,
    pub(super) loop_waker: LoopWaker,
    /// Other processes accept from the same listening socket.
    pub(super) shared_listener: bool,
    /// Every live worker thread, for the monitor's census.
    pub(super) slots: Mutex<Vec<Arc<WorkerSlot>>>,
    /// Where idle threads accept connections themselves, when the loop offered one.
    pub(super) doorway: OnceLock<Arc<Doorway>>,
    /// rplex: responses outlive their app call, so no doorway.
    pub(super) rplex: bool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes one idle thread for queued work: one waiting on `work`, else one in the doorway.
    pub(super) fn wake_idle(&self, queue: &Queue) {
        if queue.idle > 0 {
            self.work.notify_one();
        } else if queue.door_waiters > 0 {
            if let Some(door) = self.doorway.get() {
                door.kick();
            }
        }
    }

    /// Wakes the event loop so that it takes connections again.
    pub(super) fn wake_loop(&self) {
        self.loop_waker.wake();
    }
}
