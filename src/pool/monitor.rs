//! The monitor: how many requests run at once. It looks (every few milliseconds, while
//! requests wait or several run) at what each running worker is doing, from its system call,
//! and lets more run while the GIL would otherwise idle, fewer while they queue for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::shared::{Queue, Shared};
use super::slot::{Activity, RUNNING, WAITING};
use crate::base::log::debug;

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

pub(super) fn monitor_main(shared: &Arc<Shared>) {
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
                    debug!(
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
            let census = Census::of(shared);
            let seen_twice = contended && census.wanting_gil() >= 2;
            if contention_check {
                contended = census.wanting_gil() >= 2;
            }
            let idle_now = backlog && census.wanting_gil() == 0;
            let idle_twice = gil_idle && idle_now;
            gil_idle = idle_now;
            adjust(shared, backlog, stalled, idle_twice, seen_twice, census);
            if stalled {
                last_completion = Instant::now();
            }
        } else {
            gil_idle = false;
        }
    }
}

impl Shared {
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
}

#[derive(Default, Debug, Clone, Copy)]
struct Census {
    computing: usize,
    locked: usize,
    blocked: usize,
}

impl Census {
    /// What the running workers of `shared` are doing now.
    fn of(shared: &Shared) -> Census {
        let slots = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
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

    fn wanting_gil(&self) -> usize {
        self.computing + self.locked
    }
}

/// One look at the running requests (see [`Census`]) and the change of the allowed number
/// it calls for. `backlog` says requests have waited for the whole last tick; `stalled`
/// that none finished for [`STALL`] meanwhile; `gil_idle` that this look and the one
/// before (both in a backlog) found no running request wanting the GIL; `contended` that
/// the last two looks found several wanting it. Two looks, not one: a request that
/// computes is now and then caught inside a quick system call (its response's send).
fn adjust(
    shared: &Arc<Shared>,
    backlog: bool,
    stalled: bool,
    gil_idle: bool,
    contended: bool,
    census: Census,
) {
    let mut queue = shared.lock();
    let before = queue.allowed;
    let why = if gil_idle {
        // Every running request waits outside Python: the GIL is idle while work waits.
        queue.allowed = (queue.allowed * 2).min(shared.max_threads);
        "every running request is blocked outside Python"
    } else if backlog && stalled && census.computing == 0 {
        // Running requests wait on locks and none computes, so nobody holds the GIL: they
        // wait on the app's locks (long polls, pools), maybe for a request still queued.
        queue.allowed = (queue.allowed * 2).min(shared.max_threads);
        "the running requests wait on locks and none has finished for a while"
    } else if backlog && stalled {
        // One computes and has for a while: let one more run beside it, sharing the GIL
        // (Python switches every 5 ms), so a long computation does not hold up short
        // requests until it ends.
        queue.allowed = (queue.allowed + 1).min(shared.max_threads);
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
        debug!(
            "server",
            "{why} ({} computing, {} on a lock, {} blocked): up to {} requests may run at once",
            census.computing,
            census.locked,
            census.blocked,
            queue.allowed
        );
    }
    if queue.allowed > before {
        shared.fill(&mut queue);
    }
}
