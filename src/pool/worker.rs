//! A worker thread's life: wait (without the GIL) for a request, from the queue or through
//! the doorway, run it, and again.

use std::sync::{Arc, MutexGuard};
use std::thread;
use std::time::Instant;

use pyo3::Python;

use super::shared::{Queue, Shared};
use super::slot::{WorkerSlot, CURRENT_SLOT, IDLE, RUNNING};
use crate::base::log::{debug, error};
use crate::base::metrics;
use crate::seam::request::Request;
use crate::server::doorway::{Direct, Doorway, Woke};

impl Shared {
    /// Starts one more worker thread (the caller holds the queue lock and has checked the maximum).
    pub(super) fn spawn_worker(self: &Arc<Self>, queue: &mut Queue) {
        queue.threads += 1;
        let shared = Arc::clone(self);
        // Python code may recurse deeply; give it the stack a Python thread would get.
        let spawned = thread::Builder::new()
            .name("wsgi-worker".into())
            .stack_size(8 << 20)
            .spawn(move || worker_main(shared));
        if let Err(e) = spawned {
            queue.threads -= 1;
            error!("server", "cannot start a worker thread: {e}");
        }
        queue.publish();
    }

    /// Waits (the caller has released the GIL) for the next request; `None` tells the thread
    /// to end. `finished` says the thread has just finished one.
    #[inline(never)] // Its locals stay off the stack the app runs on (see worker_main).
    pub(super) fn next_request(
        &self,
        slot: &WorkerSlot,
        finished: bool,
    ) -> Option<(Request, Option<Direct>)> {
        let mut queue = self.lock();
        if finished {
            queue.running -= 1;
            queue.completed += 1;
            slot.set(IDLE);
            queue.publish();
        }
        loop {
            let was_full = queue.pending.len() >= self.queue_limit;
            if queue.running < queue.allowed {
                if let Some((request, queued)) = queue.pending.pop_front() {
                    metrics::queue_waited(queued);
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
                    queue.publish();
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
                    queue.publish();
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
                queue.publish();
                return None;
            }
        }
    }

    /// An idle thread waits in the doorway: for a connection to serve, or work queued. The
    /// first thread there leaves accepting to the workers again (see `doorway`). Returns a
    /// request to run, or the queue to look at again (`None`: the thread retires).
    #[allow(clippy::type_complexity)]
    pub(super) fn wait_in_doorway<'a>(
        &'a self,
        mut queue: MutexGuard<'a, Queue>,
        door: &Arc<Doorway>,
        slot: &WorkerSlot,
    ) -> Result<(Request, Option<Direct>), Option<MutexGuard<'a, Queue>>> {
        queue.door_waiters += 1;
        queue.door_unattended_since = None;
        if door.set_loop_mode(false) {
            debug!("server", "a worker is idle: workers accept new connections again");
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
                queue.publish();
                return Err(None);
            }
            Woke::Connection if queue.pending.is_empty() && queue.running < queue.allowed => {}
            _ => return Err(Some(queue)),
        }
        queue.running += 1;
        slot.set(RUNNING);
        queue.publish();
        drop(queue);
        if let Some((request, direct)) = door.take() {
            // Taken at its accept: it waited for no thread.
            metrics::queue_skipped();
            return Ok((request, Some(direct)));
        }
        let mut queue = self.lock();
        queue.running -= 1;
        slot.set(IDLE);
        queue.publish();
        Err(Some(queue))
    }
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
        loop {
            // With metrics on, when the thread asked for the GIL back: its wait shows.
            let (next, asked) = py.detach(|| {
                let next = shared.next_request(&slot, finished);
                (next, metrics::enabled().then(Instant::now))
            });
            if let Some(asked) = asked {
                metrics::gil_waited(asked.elapsed());
            }
            let Some((request, direct)) = next else { break };
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
