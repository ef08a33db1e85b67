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

/// A piece of a response on its way to the client.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// `len` bytes of a regular file from `offset`, which the loop hands to the kernel
    /// (`sendfile`) so they never pass through Python or a userspace buffer. The file is
    /// the loop's own descriptor (a duplicate), so the app may close its file object at once.
    File {
        /// The open file.
        file: File,
        /// Where the bytes to send start.
        offset: u64,
        /// How many bytes to send.
        len: u64,
    },
}

impl Chunk {
    /// How many bytes this chunk puts on the wire.
    pub fn len(&self) -> u64 {
        match self {
            Chunk::Bytes(bytes) => bytes.len() as u64,
            Chunk::File { len, .. } => *len,
        }
    }

    /// Whether it puts nothing on the wire.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// What an outbox tells an observer (the external-interpreter mode forwards it to its worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxEvent {
    /// This many bytes in all have reached the client's socket.
    Written(u64),
    /// The client went away.
    ClientGone,
}

/// A callback the event loop runs (briefly, without blocking) on each [`OutboxEvent`].
pub type OutboxObserver = Box<dyn Fn(OutboxEvent) + Send + Sync>;

/// Called once when a full outbox has room again, or its client is gone (rplex's response
/// thread parks a response on it instead of blocking).
pub type RoomHook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct RoomWaiter(Option<RoomHook>);

impl std::fmt::Debug for RoomWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "RoomWaiter(set)"
        } else {
            "RoomWaiter(none)"
        })
    }
}

#[derive(Debug, Default)]
struct OutState {
    chunks: VecDeque<Chunk>,
    /// Bytes handed over and not yet written to the socket (file chunks count too).
    unsent: usize,
    /// Bytes written to the socket so far.
    written_total: u64,
    end: Option<End>,
    client_gone: bool,
    /// A notification for this outbox is already on its way to the loop.
    notified: bool,
    /// Who to call when there is room again (see [`Outbox::call_when_room`]).
    room_waiter: RoomWaiter,
    /// Some bytes were handed over (the head went out).
    sent_any: bool,
}

/// One response's queue from a worker to the event loop.
pub struct Outbox {
    id: ConnId,
    state: Mutex<OutState>,
    room: Condvar,
    notifier: Arc<Notifier>,
    high_water: usize,
    observer: std::sync::OnceLock<OutboxObserver>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("id", &self.id)
            .field("high_water", &self.high_water)
            .finish()
    }
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
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Sets the observer that hears about bytes written and the client going away (once).
    pub fn observe(&self, observer: OutboxObserver) {
        let _ = self.observer.set(observer);
    }

    /// The most bytes a producer may have queued before it must wait.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues bytes for the client, and (optionally) the end of the response with them,
    /// in one hand-off. Never blocks on the client; see [`Outbox::wait_for_room`].
    pub fn send(&self, data: Vec<u8>, end: Option<End>) -> Result<(), ClientGone> {
        self.send_chunk(Chunk::Bytes(data), end)
    }

    /// Queues any kind of chunk (see [`Chunk`]), and optionally the end of the response.
    /// After the end, nobody reads this outbox any more: more is refused like a client gone
    /// (an app calling a kept `write()` later would otherwise wait for room forever).
    pub fn send_chunk(&self, chunk: Chunk, end: Option<End>) -> Result<(), ClientGone> {
        let mut state = self.lock();
        if state.client_gone || state.end.is_some() {
            return Err(ClientGone);
        }
        if !chunk.is_empty() {
            // A file chunk counts at its length: it holds no memory, but it is output to wait for.
            state.unsent = state
                .unsent
                .saturating_add(usize::try_from(chunk.len()).unwrap_or(usize::MAX));
            state.chunks.push_back(chunk);
            state.sent_any = true;
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

    /// Arranges for `hook` to be called once the outbox has drained to half the high-water
    /// mark or the client is gone. Returns `false`, without keeping `hook`, when that is
    /// already so: the caller can go on producing at once.
    pub fn call_when_room(&self, hook: RoomHook) -> bool {
        let mut state = self.lock();
        if state.client_gone || state.unsent <= self.high_water / 2 {
            return false;
        }
        state.room_waiter = RoomWaiter(Some(hook));
        true
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
            state.chunks.push_back(Chunk::Bytes(response.to_vec()));
            state.end = Some(End::Complete);
        } else {
            state.end = Some(End::Abort);
        }
        state.sent_any = true;
        state.client_gone = true;
        self.room.notify_all();
        let wake = !state.notified;
        state.notified = true;
        let hook = state.room_waiter.0.take();
        drop(state);
        if let Some(hook) = hook {
            hook();
        }
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
    pub(crate) fn take(&self, into: &mut VecDeque<Chunk>) -> Option<End> {
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
        state.written_total += n as u64;
        let total = state.written_total;
        let hook = if before > self.high_water / 2 && state.unsent <= self.high_water / 2 {
            self.room.notify_all();
            state.room_waiter.0.take()
        } else {
            None
        };
        drop(state);
        if let Some(hook) = hook {
            hook();
        }
        if let Some(observer) = self.observer.get() {
            observer(OutboxEvent::Written(total));
        }
    }

    /// Loop side: the client is gone; producers stop at their next send or wait.
    pub(crate) fn mark_client_gone(&self) {
        let mut state = self.lock();
        let was_gone = std::mem::replace(&mut state.client_gone, true);
        state.chunks.clear();
        state.unsent = 0;
        self.room.notify_all();
        let hook = state.room_waiter.0.take();
        drop(state);
        if let Some(hook) = hook {
            hook();
        }
        if let Some(observer) = self.observer.get().filter(|_| !was_gone) {
            observer(OutboxEvent::ClientGone);
        }
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

    /// Wakes the loop with no connection to name: a full request queue has room again.
    pub fn wake(&self) {
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
    /// Whether another request can be taken now; the loop stops accepting while not. The loop
    /// asks only when it has a connection it would accept.
    fn has_room(&self) -> bool {
        true
    }
    /// How many requests may wait for a worker (for log lines).
    fn queue_limit(&self) -> usize {
        usize::MAX
    }
    /// Gives the dispatcher a way to wake the loop when it has room again after refusing.
    fn set_waker(&mut self, _notifier: Arc<Notifier>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn outbox(high_water: usize) -> (mio::Poll, Arc<Outbox>) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let id = ConnId { key: 0, serial: 0 };
        (poll, Outbox::new(id, Notifier::new(waker), high_water))
    }

    fn counting_hook(calls: &Arc<AtomicUsize>) -> RoomHook {
        let calls = Arc::clone(calls);
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn room_hook_fires_once_when_drained_to_half() {
        let (_poll, outbox) = outbox(100);
        let calls = Arc::new(AtomicUsize::new(0));
        assert!(
            !outbox.call_when_room(counting_hook(&calls)),
            "empty outbox has room"
        );
        outbox.send(vec![0; 150], None).unwrap();
        assert!(outbox.is_full());
        assert!(outbox.call_when_room(counting_hook(&calls)));
        outbox.written(60);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "90 unsent is above half of 100");
        outbox.written(40);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        outbox.written(50);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a hook fires once");
    }

    #[test]
    fn room_hook_fires_when_the_client_goes() {
        let (_poll, outbox) = outbox(100);
        let calls = Arc::new(AtomicUsize::new(0));
        outbox.send(vec![0; 150], None).unwrap();
        assert!(outbox.call_when_room(counting_hook(&calls)));
        outbox.mark_client_gone();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(outbox.send(vec![1], None), Err(ClientGone));
        assert!(
            !outbox.call_when_room(counting_hook(&calls)),
            "nothing to wait for"
        );
    }
}
