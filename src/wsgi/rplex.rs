//! rplex's response thread: one Python-attached thread that advances every handed-over
//! response iterator as its client can take more, so long downloads hold no handler thread.
//!
//! A response whose outbox is over its high-water mark is parked: the outbox calls back
//! (from the event loop) once it has drained to half, or the client is gone. While nothing is
//! runnable the thread waits with the GIL released.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use pyo3::prelude::*;
use slab::Slab;

use super::response::{PlexJob, Step};
use crate::base::log::error;
use crate::seam::outbox::End;

/// Chunks one response may produce before the others get a turn.
const TURN_BUDGET: usize = 8;

#[derive(Default)]
struct Inbox {
    /// Responses handed over by handler threads.
    new: Vec<PlexJob>,
    /// Parked responses whose outbox has room again (or lost its client).
    woken: Vec<usize>,
}

struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn woken(&self, key: usize) {
        self.lock().woken.push(key);
        self.wake.notify_one();
    }
}

/// Handle to the response thread; handler threads give it responses with [`ResponsePlex::submit`].
pub struct ResponsePlex {
    shared: Arc<Shared>,
}

impl ResponsePlex {
    /// Starts the response thread.
    pub fn start() -> std::io::Result<ResponsePlex> {
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
        });
        let running = Arc::clone(&shared);
        thread::Builder::new()
            .name("wsgi-responses".into())
            .stack_size(8 << 20)
            .spawn(move || Python::attach(|py| run(py, &running)))?;
        Ok(ResponsePlex { shared })
    }

    /// Hands a response over; the response thread iterates, finishes and closes it.
    pub fn submit(&self, job: PlexJob) {
        self.shared.lock().new.push(job);
        self.shared.wake.notify_one();
    }
}

fn run(py: Python<'_>, shared: &Arc<Shared>) {
    let mut jobs: Slab<PlexJob> = Slab::new();
    let mut runnable: VecDeque<usize> = VecDeque::new();
    let mut inbox = Inbox::default();
    loop {
        let idle = runnable.is_empty();
        // Take what arrived; when there is nothing else to do, wait for it without the GIL.
        py.detach(|| {
            let mut shared_inbox = shared.lock();
            while idle && shared_inbox.new.is_empty() && shared_inbox.woken.is_empty() {
                shared_inbox = shared.wake.wait(shared_inbox).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut *shared_inbox, &mut inbox);
        });
        for job in inbox.new.drain(..) {
            runnable.push_back(jobs.insert(job));
        }
        runnable.extend(inbox.woken.drain(..).filter(|key| jobs.contains(*key)));
        // One turn each for the responses runnable now.
        for _ in 0..runnable.len() {
            let Some(key) = runnable.pop_front() else { break };
            let job = &mut jobs[key];
            // A panic must not take the thread, and with it every response, down.
            let step = catch_unwind(AssertUnwindSafe(|| job.advance(py, TURN_BUDGET))).unwrap_or_else(|_| {
                error!(
                    "wsgi",
                    "internal error while iterating a response; connection dropped"
                );
                job.outbox().finish(End::Abort);
                Step::Done
            });
            match step {
                Step::Done => {
                    jobs.remove(key);
                }
                Step::Again => runnable.push_back(key),
                Step::Full => {
                    let waker = Arc::clone(shared);
                    let parked = jobs[key]
                        .outbox()
                        .call_when_room(Box::new(move || waker.woken(key)));
                    if !parked {
                        runnable.push_back(key);
                    }
                }
            }
        }
    }
}
