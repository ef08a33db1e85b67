//! The seam between the event loop and whatever runs the app: a complete [`Request`] goes out,
//! response bytes come back through its [`Outbox`].
//!
//! The loop never waits on a worker and a worker never touches a socket. A worker that produces
//! output faster than the client reads waits in [`Outbox::wait_for_room`] (callers release the
//! GIL around it) until the loop has written enough.

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The request body, complete.
#[derive(Debug)]
pub enum Body {
    /// The body bytes lie in [`Request::buf`] at this range.
    InBuffer(Range<usize>),
    /// The body was large and lies in an unlinked temporary file of this length.
    File(File, u64),
}

/// A request whose head and body have fully arrived.
#[derive(Debug)]
pub struct Request {
    /// The bytes read from the client: the netstring head, then (for [`Body::InBuffer`]) the body.
    pub buf: Vec<u8>,
    /// The header block (NAME NUL VALUE NUL ...) inside `buf`.
    pub payload: Range<usize>,
    /// Where the body is.
    pub body: Body,
    /// Where the response goes.
    pub outbox: Arc<Outbox>,
    /// When the connection was accepted.
    pub accepted: Instant,
}

impl Request {
    /// The raw header block.
    pub fn header_block(&self) -> &[u8] {
        &self.buf[self.payload.clone()]
    }

    /// The first value of a header, by exact name.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        crate::scgi::headers(self.header_block()).find_map(|(n, v)| (n == name).then_some(v))
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Everything was produced: send what is queued, then close.
    Complete,
    /// The response broke off (app error after the head went out): close without pretending it is whole.
    Abort,
}

/// The client went away; stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client closed the connection")]
pub struct ClientGone;

/// Identifies a connection slot and its occupant, so a stale notification is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId {
    /// Slot in the loop's connection table.
    pub key: usize,
    /// Serial number of the connection that held the slot.
    pub serial: u64,
}

#[derive(Debug, Default)]
struct OutState {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes handed over and not yet written to the socket.
    unsent: usize,
    end: Option<End>,
    client_gone: bool,
    /// A notification for this outbox is already on its way to the loop.
    notified: bool,
    /// Some bytes were handed over (the head went out).
    sent_any: bool,
}

/// One response's queue from a worker to the event loop.
#[derive(Debug)]
pub struct Outbox {
    id: ConnId,
    state: Mutex<OutState>,
    room: Condvar,
    notifier: Arc<Notifier>,
    high_water: usize,
}

impl Outbox {
    /// A new outbox for connection `id`; producers wait when more than `high_water` bytes are unsent.
    pub fn new(id: ConnId, notifier: Arc<Notifier>, high_water: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            id,
            state: Mutex::new(OutState::default()),
            room: Condvar::new(),
            notifier,
            high_water,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues bytes for the client, and (optionally) the end of the response with them,
    /// in one hand-off. Never blocks on the client; see [`Outbox::wait_for_room`].
    pub fn send(&self, data: Vec<u8>, end: Option<End>) -> Result<(), ClientGone> {
        let mut state = self.lock();
        if state.client_gone {
            return Err(ClientGone);
        }
        if !data.is_empty() {
            state.sent_any = true;
            state.unsent += data.len();
            state.chunks.push_back(data);
        }
        if end.is_some() && state.end.is_none() {
            state.end = end;
        }
        let wake = !state.notified;
        state.notified = true;
        drop(state);
        if wake {
            self.notifier.notify(self.id);
        }
        Ok(())
    }

    /// Ends the response (idempotent: the first end wins).
    pub fn finish(&self, end: End) {
        let _ = self.send(Vec::new(), Some(end));
    }

    /// Whether a producer should wait before queueing more.
    pub fn is_full(&self) -> bool {
        let state = self.lock();
        state.unsent > self.high_water && !state.client_gone
    }

    /// Blocks until at most half the high-water mark is unsent, or the client is gone.
    /// Call it without holding the GIL.
    pub fn wait_for_room(&self) -> Result<(), ClientGone> {
        let mut state = self.lock();
        while state.unsent > self.high_water / 2 && !state.client_gone {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.client_gone {
            Err(ClientGone)
        } else {
            Ok(())
        }
    }

    /// Gives up on a response the app is taking too long over: `response` goes out when
    /// nothing was sent yet (returns true), otherwise the response is cut off. Either way the
    /// app's further output is refused as if the client had gone.
    pub fn time_out(&self, response: &[u8]) -> bool {
        let mut state = self.lock();
        if state.end.is_some() || state.client_gone {
            return false;
        }
        let answered = !state.sent_any;
        if answered {
            state.unsent += response.len();
            state.chunks.push_back(response.to_vec());
            state.end = Some(End::Complete);
        } else {
            state.end = Some(End::Abort);
        }
        state.sent_any = true;
        state.client_gone = true;
        self.room.notify_all();
        let wake = !state.notified;
        state.notified = true;
        drop(state);
        if wake {
            self.notifier.notify(self.id);
        }
        answered
    }

    /// Whether the loop has seen the client go away.
    pub fn client_gone(&self) -> bool {
        self.lock().client_gone
    }

    /// Loop side: moves queued chunks into `into` and reports whether the response has ended.
    pub(crate) fn take(&self, into: &mut VecDeque<Vec<u8>>) -> Option<End> {
        let mut state = self.lock();
        state.notified = false;
        into.append(&mut state.chunks);
        state.end
    }

    /// Loop side: `n` more bytes reached the socket; wakes a producer waiting for room.
    pub(crate) fn written(&self, n: usize) {
        let mut state = self.lock();
        let before = state.unsent;
        state.unsent = state.unsent.saturating_sub(n);
        if before > self.high_water / 2 && state.unsent <= self.high_water / 2 {
            self.room.notify_all();
        }
    }

    /// Loop side: the client is gone; producers stop at their next send or wait.
    pub(crate) fn mark_client_gone(&self) {
        let mut state = self.lock();
        state.client_gone = true;
        state.chunks.clear();
        state.unsent = 0;
        self.room.notify_all();
    }
}

/// Carries "this connection has output" from workers to the event loop and wakes it.
#[derive(Debug)]
pub struct Notifier {
    ready: Mutex<Vec<ConnId>>,
    waker: mio::Waker,
    /// Set while a wake-up is pending, so a burst of completions costs one wake-up.
    woken: AtomicBool,
}

impl Notifier {
    /// Wraps the loop's waker.
    pub fn new(waker: mio::Waker) -> Arc<Notifier> {
        Arc::new(Notifier {
            ready: Mutex::new(Vec::with_capacity(64)),
            waker,
            woken: AtomicBool::new(false),
        })
    }

    /// Queues `id` for the loop and wakes it if it is not already awake for this purpose.
    pub fn notify(&self, id: ConnId) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                crate::error!("server", "cannot wake the event loop: {e}");
            }
        }
    }

    /// Loop side: takes the queued ids into `into` (which it reuses).
    pub(crate) fn drain(&self, into: &mut Vec<ConnId>) {
        self.woken.store(false, Ordering::Release);
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *ready, into);
    }
}

/// Runs complete requests. The event loop calls it and never waits on it.
pub trait Dispatcher {
    /// Hands over a request. Returns it back when no more can be queued (the loop answers 503).
    fn dispatch(&mut self, request: Request) -> Result<(), Request>;
    /// Whether another request can be taken now; the loop stops reading new requests while not.
    fn has_room(&self) -> bool {
        true
    }
}
