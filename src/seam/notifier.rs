//! How producers wake the event loop: the [`Notifier`] (this connection has output), and the
//! [`LoopWaker`] a dispatcher keeps to wake it when it has room again.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::base::log::error;

/// Identifies a connection slot and its occupant, so a stale notification is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnId {
    /// Slot in the loop's connection table.
    pub key: usize,
    /// Serial number of the connection that held the slot.
    pub serial: u64,
}

/// Carries "this connection has output" from workers to the event loop and wakes it.
#[derive(Debug)]
pub struct Notifier {
    ready: Mutex<Vec<ConnId>>,
    waker: mio::Waker,
    /// Set while a wake-up is pending, so a burst of completions costs one wake-up.
    woken: AtomicBool,
    /// Set while ids wait that were queued without a wake-up ([`Notifier::notify_quiet`]).
    quiet: AtomicBool,
    /// The loop's epoll descriptor, when producers may take sockets out of it
    /// ([`Outbox::end_alone`]).
    poller: Option<RawFd>,
}

impl Notifier {
    /// Wraps the loop's waker. `poller` is the loop's epoll descriptor, which lets producers
    /// end connections themselves; it must stay open as long as any outbox with a socket.
    pub fn new(waker: mio::Waker, poller: Option<RawFd>) -> Arc<Notifier> {
        Arc::new(Notifier {
            ready: Mutex::new(Vec::with_capacity(64)),
            waker,
            woken: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            poller,
        })
    }

    /// The loop's epoll descriptor, when producers may take sockets out of it.
    pub fn poller(&self) -> Option<RawFd> {
        self.poller
    }

    /// Queues `id` for the loop without waking it: it is a connection whose producer ended it
    /// ([`Outbox::end_alone`]), which only needs its descriptor closed. The loop looks after
    /// every round of events, and sleeps at most [`QUIET_CLOSE_DELAY`] while connections are
    /// open.
    pub fn notify_quiet(&self, id: ConnId) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        self.quiet.store(true, Ordering::Release);
    }

    /// Loop side: whether ids wait that came without a wake-up.
    pub(crate) fn has_quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// Queues `id` for the loop and wakes it if it is not already awake for this purpose.
    pub fn notify(&self, id: ConnId) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                error!("server", "cannot wake the event loop: {e}");
            }
        }
    }

    /// Wakes the loop with no connection to name: a full request queue has room again.
    pub fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                error!("server", "cannot wake the event loop: {e}");
            }
        }
    }

    /// Loop side: takes the queued ids into `into` (which it reuses).
    pub(crate) fn drain(&self, into: &mut Vec<ConnId>) {
        self.woken.store(false, Ordering::Release);
        self.quiet.store(false, Ordering::Release);
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *ready, into);
    }
}

/// A dispatcher's way to wake the event loop from its threads, once the loop has handed it one
/// ([`Dispatcher::set_waker`]): when a full queue gets room again, or when a worker takes a
/// request after the loop held back.
#[derive(Default)]
pub struct LoopWaker(Mutex<Option<Arc<Notifier>>>);

impl LoopWaker {
    /// Keeps the loop's notifier.
    pub fn set(&self, notifier: Arc<Notifier>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Wakes the loop (nothing before [`LoopWaker::set`]).
    pub fn wake(&self) {
        let notifier = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(notifier) = notifier {
            notifier.wake();
        }
    }
}

/// The longest the loop sleeps while connections are open, so that one a producer ended by
/// itself ([`Notifier::notify_quiet`]) is closed soon even when nothing else happens.
pub const QUIET_CLOSE_DELAY: Duration = Duration::from_millis(100);
