//! One response's way from the app back to the client: the [`Outbox`].
//!
//! The loop never waits on a worker. A worker writes its output straight to the client's socket
//! when the loop has nothing queued for it and the socket takes the bytes at once (one
//! non-blocking `sendmsg`); whatever the socket does not take is queued for the loop. The loop
//! revokes the socket, under the outbox lock, before it closes it, so a worker never writes to
//! a descriptor number that may already name another connection. A response that went out
//! whole this way is also ended by the worker (`Outbox::end_alone`): the socket leaves the
//! loop's epoll set and our side is shut, and the loop, not woken for it, closes the
//! descriptor when it next looks. A worker that produces output faster than the client reads
//! waits in [`Outbox::wait_for_room`] (callers release the GIL around it) until the loop has
//! written enough.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::notifier::{ConnId, Notifier};
use crate::base::log::debug;
use crate::base::metrics;
use crate::base::sys;

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
    /// The connection, as the loop knows it (see [`Outbox::rebind`]).
    id: ConnId,
    /// A worker holds the connection, which the loop does not know (see `doorway`): telling
    /// the loop anything means handing it over first ([`Outbox::attach`]).
    detached: bool,
    /// The producer ended the connection alone while detached: the worker closes it.
    ended_detached: bool,
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
    /// The loop holds chunks it took from here and has not written all of them yet: a direct
    /// write now would overtake them. Set by [`Outbox::take`], cleared by the loop (in
    /// [`Outbox::written`]) when its own queue drains.
    loop_busy: bool,
    /// The loop closed (or is about to close) the socket: never write to it again.
    revoked: bool,
    /// Input arrived beyond the request: the loop must close gently (linger), so the producer
    /// may not end the connection itself (see [`Outbox::end_alone`]).
    extra_input: bool,
    /// The request ran past `--request-timeout` and was answered 504 ([`Outbox::time_out`]).
    timed_out: bool,
    /// The socket is not in the loop's epoll set (its request came whole with the connection,
    /// see `Server::adopt`): ending it alone needs no `EPOLL_CTL_DEL`.
    unwatched: bool,
    /// Producers blocked in [`Outbox::wait_for_room`]: waking them costs a system call, made
    /// only when there is someone to wake.
    room_waiters: usize,
}

/// Hands a worker's connection to the loop (see [`Outbox::detach`]).
pub type AttachHook = Box<dyn FnOnce() + Send>;

/// How a producer tells the loop about an outbox: by its id, or by handing its connection
/// over (which makes the loop look at it).
enum Contact {
    Notify(ConnId),
    Attach(Option<AttachHook>),
}

/// One response's queue from a worker to the event loop.
pub struct Outbox {
    attach_hook: Mutex<Option<AttachHook>>,
    /// The client's socket, for direct writes (see [`Outbox::send_slices`]); `None` when the
    /// outbox is not tied to a socket. Valid only while `revoked` is false, checked under the lock.
    socket: Option<RawFd>,
    state: Mutex<OutState>,
    room: Condvar,
    notifier: Arc<Notifier>,
    high_water: usize,
    observer: std::sync::OnceLock<OutboxObserver>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("id", &self.lock().id)
            .field("high_water", &self.high_water)
            .finish()
    }
}

impl Outbox {
    /// A new outbox for connection `id`; producers wait when more than `high_water` bytes are
    /// unsent. `socket` is the connection's descriptor, which producers may write to directly
    /// until the loop calls [`Outbox::revoke`] (it must, before it closes the descriptor).
    pub fn new(id: ConnId, notifier: Arc<Notifier>, high_water: usize, socket: Option<RawFd>) -> Arc<Outbox> {
        Arc::new(Outbox {
            attach_hook: Mutex::new(None),
            socket,
            state: Mutex::new(OutState {
                id,
                ..OutState::default()
            }),
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

    /// Wakes producers blocked in [`Outbox::wait_for_room`], if any.
    fn wake_waiters(room: &Condvar, state: &OutState) {
        if state.room_waiters > 0 {
            room.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutState> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the outbox's connection as held by a worker, not the loop: `hook` hands it to
    /// the loop the first time the loop is needed (see `doorway`).
    pub fn detach(&self, hook: AttachHook) {
        *self.attach_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
        self.lock().detached = true;
    }

    /// Hands a detached outbox's connection to the loop now (nothing if it is not detached).
    pub fn attach(&self) {
        let contact = {
            let mut state = self.lock();
            if !state.detached {
                return;
            }
            self.contact_under_lock(&mut state)
        };
        self.contact(contact, false);
    }

    /// Whether the producer ended the connection while a worker held it: the response went
    /// out whole and the worker only has to close the socket.
    pub fn ended_alone(&self) -> bool {
        self.lock().ended_detached
    }

    /// Loop side: the connection now has slot `id`.
    pub(crate) fn rebind(&self, id: ConnId) {
        self.lock().id = id;
    }

    /// Under the lock: how to tell the loop about this outbox.
    fn contact_under_lock(&self, state: &mut OutState) -> Contact {
        if std::mem::replace(&mut state.detached, false) {
            Contact::Attach(self.attach_hook.lock().unwrap_or_else(|e| e.into_inner()).take())
        } else {
            Contact::Notify(state.id)
        }
    }

    /// Tells the loop (after the lock is released): `quiet` for a connection that only needs
    /// its descriptor closed (see [`Notifier::notify_quiet`]).
    fn contact(&self, contact: Contact, quiet: bool) {
        match contact {
            Contact::Notify(id) if quiet => self.notifier.notify_quiet(id),
            Contact::Notify(id) => self.notifier.notify(id),
            Contact::Attach(Some(hook)) => hook(),
            Contact::Attach(None) => {}
        }
    }

    /// Sends bytes to the client, and (optionally) the end of the response with them, in one
    /// hand-off: written straight to the socket when possible (see [`Outbox::send_slices`]),
    /// the rest queued for the loop without copying. Never blocks on the client; see
    /// [`Outbox::wait_for_room`].
    pub fn send(&self, mut data: Vec<u8>, end: Option<End>) -> Result<(), ClientGone> {
        let mut state = self.lock();
        if state.client_gone || state.revoked || state.end.is_some() {
            return Err(ClientGone);
        }
        let written = self.write_direct(&mut state, &[&data], end)?;
        if written > 0 {
            data.drain(..written);
        }
        self.queue(state, written, Chunk::Bytes(data), end);
        Ok(())
    }

    /// Sends the concatenation of `slices` (e.g. a response head and a body borrowed from the
    /// app), and optionally the end of the response. When the loop has nothing queued for this
    /// connection, they are written straight to the socket with one non-blocking `sendmsg`;
    /// only the part the socket does not take at once is copied and queued for the loop, which
    /// is woken only when it has something to do (bytes queued, or the end to act on).
    ///
    /// Holds the outbox lock during the system call, which is what keeps the loop from
    /// closing the socket meanwhile.
    pub fn send_slices(&self, slices: &[&[u8]], end: Option<End>) -> Result<(), ClientGone> {
        let mut state = self.lock();
        if state.client_gone || state.revoked || state.end.is_some() {
            return Err(ClientGone);
        }
        let mut skip = self.write_direct(&mut state, slices, end)?;
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut rest = Vec::with_capacity(total.saturating_sub(skip));
        for slice in slices {
            let from = skip.min(slice.len());
            skip -= from;
            rest.extend_from_slice(&slice[from..]);
        }
        self.queue(state, total - rest.len(), Chunk::Bytes(rest), end);
        Ok(())
    }

    /// Writes what the socket takes at once, when the loop has nothing queued (so the bytes
    /// cannot overtake any) and the socket is still ours. Returns how many bytes went out,
    /// accounted as the loop's writes are. A failed write means the client is gone.
    ///
    /// With the end of a complete response that the producer will end itself
    /// ([`Outbox::end_alone`]), the bytes are sent with `MSG_MORE`: the kernel holds the last
    /// partial segment for the shutdown that follows at once, and the client gets the rest of
    /// the response and its end in one segment, with one wake-up.
    fn write_direct(
        &self,
        state: &mut MutexGuard<'_, OutState>,
        slices: &[&[u8]],
        end: Option<End>,
    ) -> Result<usize, ClientGone> {
        let Some(fd) = self.socket else { return Ok(0) };
        if state.loop_busy || !state.chunks.is_empty() || state.revoked || state.client_gone {
            return Ok(0);
        }
        let mut iov: [libc::iovec; 8] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 8];
        let mut count = 0;
        for slice in slices.iter().filter(|s| !s.is_empty()).take(iov.len()) {
            iov[count] = libc::iovec {
                iov_base: slice.as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            };
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let mut flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        if end == Some(End::Complete) && self.notifier.poller().is_some() && !state.extra_input {
            // Should ending it alone fail after all, the loop's close or shutdown sends what
            // is held; so does its next write, should the socket not take all of it now.
            flags |= libc::MSG_MORE;
        }
        // SAFETY: a zeroed msghdr is valid; iov points at `count` slices that outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = count as _;
        // SAFETY: the descriptor is open: the loop revokes it under this lock (held by the
        // caller) before closing it, and `revoked` was checked above. MSG_NOSIGNAL: a
        // vanished client is an error to report, not a SIGPIPE.
        let sent = sys::retry(|| unsafe { libc::sendmsg(fd, &msg, flags) });
        let written = match sent {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => {
                debug!("server", "client went away while receiving the response: {e}");
                metrics::client_gone();
                state.client_gone = true;
                state.chunks.clear();
                state.unsent = 0;
                // The loop closes the connection as it does after its own failed write
                // (nothing more will come to tell it to).
                state.end.get_or_insert(End::Abort);
                let wake = !std::mem::replace(&mut state.notified, true);
                Self::wake_waiters(&self.room, state);
                if let Some(observer) = self.observer.get() {
                    observer(OutboxEvent::ClientGone);
                }
                // A worker holding the connection gives it to the loop when the app is
                // done (`doorway::Direct::finish`), which is soon: the app's writes fail.
                if wake && !state.detached {
                    self.notifier.notify(state.id);
                }
                return Err(ClientGone);
            }
        };
        if written > 0 {
            state.written_total += written as u64;
            state.sent_any = true;
        }
        Ok(written)
    }

    /// Ends the connection of a complete response that has gone out whole by direct writes,
    /// without the loop: the socket leaves the loop's epoll set, so that the client closing its
    /// side does not wake the loop, and our side is shut, so that the client sees the end of
    /// the response at once. The loop closes the descriptor when it next looks at its
    /// notifications ([`Notifier::notify_quiet`]). Not when the loop holds output, or must
    /// linger because more input arrived, or when the outbox has no socket or no loop to
    /// leave: the caller then wakes the loop as usual.
    fn end_alone(&self, state: &mut MutexGuard<'_, OutState>) -> bool {
        let (Some(fd), Some(poller)) = (self.socket, self.notifier.poller()) else {
            return false;
        };
        if state.loop_busy
            || !state.chunks.is_empty()
            || state.revoked
            || state.client_gone
            || state.extra_input
        {
            return false;
        }
        if !state.unwatched {
            // SAFETY: the descriptor is open (not revoked, under the lock, as for
            // `write_direct`); `poller` is the loop's epoll descriptor, which outlives every
            // connection's.
            let removed = unsafe { libc::epoll_ctl(poller, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
            if sys::check(removed).is_err() {
                return false;
            }
        }
        // SAFETY: as above. A failure (the client reset meanwhile) leaves the loop to close.
        let _ = sys::check(unsafe { libc::shutdown(fd, libc::SHUT_WR) });
        true
    }

    /// Queues what was not written directly (`written` bytes were) and the end, and wakes the
    /// loop when it has something to do. A complete response that went out whole by direct
    /// writes is ended here instead (see [`Outbox::end_alone`]), and the loop is not woken.
    fn queue(&self, mut state: MutexGuard<'_, OutState>, written: usize, chunk: Chunk, end: Option<End>) {
        let ended_alone = end == Some(End::Complete)
            && chunk.is_empty()
            && state.end.is_none()
            && self.end_alone(&mut state);
        if !chunk.is_empty() {
            state.unsent = state
                .unsent
                .saturating_add(usize::try_from(chunk.len()).unwrap_or(usize::MAX));
            state.chunks.push_back(chunk);
            state.sent_any = true;
        }
        if end.is_some() && state.end.is_none() {
            state.end = end;
        }
        // A notification already on its way shows the loop the end as well.
        let work = !state.chunks.is_empty() || end.is_some();
        let mut wake = work && !state.notified;
        if wake {
            state.notified = true;
        }
        if ended_alone && state.detached {
            // The worker holding the connection closes it: the loop need not hear of it.
            state.ended_detached = true;
            wake = false;
        }
        let contact = wake.then(|| self.contact_under_lock(&mut state));
        let total = state.written_total;
        drop(state);
        if written > 0 {
            if let Some(observer) = self.observer.get() {
                observer(OutboxEvent::Written(total));
            }
        }
        if let Some(contact) = contact {
            // Only the descriptor is left to close when it ended alone: no need to wake the
            // loop for that.
            self.contact(contact, ended_alone);
        }
    }

    /// Queues any kind of chunk (see [`Chunk`]), and optionally the end of the response.
    /// After the end, nobody reads this outbox any more: more is refused like a client gone
    /// (an app calling a kept `write()` later would otherwise wait for room forever).
    /// In-memory bytes go through [`Outbox::send`] (a direct write when possible); a file
    /// chunk always goes to the loop, which sends it with `sendfile`.
    pub fn send_chunk(&self, chunk: Chunk, end: Option<End>) -> Result<(), ClientGone> {
        let chunk = match chunk {
            Chunk::Bytes(data) => return self.send(data, end),
            file => file,
        };
        let state = self.lock();
        if state.client_gone || state.revoked || state.end.is_some() {
            return Err(ClientGone);
        }
        // A file chunk counts at its length: it holds no memory, but it is output to wait for.
        self.queue(state, 0, chunk, end);
        Ok(())
    }

    /// Ends the response (idempotent: the first end wins).
    pub fn finish(&self, end: End) {
        let _ = self.send(Vec::new(), Some(end));
    }

    /// Whether a producer should wait before queueing more.
    pub fn is_full(&self) -> bool {
        let state = self.lock();
        state.unsent > self.high_water && !state.client_gone && !state.revoked
    }

    /// Blocks until at most half the high-water mark is unsent, or the client is gone.
    /// Call it without holding the GIL.
    pub fn wait_for_room(&self) -> Result<(), ClientGone> {
        let mut state = self.lock();
        while state.unsent > self.high_water / 2 && !state.client_gone && !state.revoked {
            state.room_waiters += 1;
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
            state.room_waiters -= 1;
        }
        if state.client_gone || state.revoked {
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
        if state.client_gone || state.revoked || state.unsent <= self.high_water / 2 {
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
        if state.end.is_some() || state.client_gone || state.revoked {
            return false;
        }
        let answered = !state.sent_any;
        state.timed_out = answered;
        if answered {
            state.unsent += response.len();
            state.chunks.push_back(Chunk::Bytes(response.to_vec()));
            state.end = Some(End::Complete);
        } else {
            state.end = Some(End::Abort);
        }
        state.sent_any = true;
        state.client_gone = true;
        Self::wake_waiters(&self.room, &state);
        let wake = !state.notified;
        state.notified = true;
        let hook = state.room_waiter.0.take();
        let contact = wake.then(|| self.contact_under_lock(&mut state));
        drop(state);
        if let Some(hook) = hook {
            hook();
        }
        if let Some(contact) = contact {
            self.contact(contact, false);
        }
        answered
    }

    /// Whether the request was answered 504 for running too long (its access log line is
    /// written then, by the watch).
    pub fn timed_out(&self) -> bool {
        self.lock().timed_out
    }

    /// Whether the client went away (seen by the loop or by a direct write), or the loop let
    /// go of the connection.
    pub fn client_gone(&self) -> bool {
        let state = self.lock();
        state.client_gone || state.revoked
    }

    /// Loop side: moves queued chunks into `into` and reports whether the response has ended.
    /// While the loop holds chunks, producers queue behind them instead of writing directly.
    pub(crate) fn take(&self, into: &mut VecDeque<Chunk>) -> Option<End> {
        let mut state = self.lock();
        state.notified = false;
        if !state.chunks.is_empty() {
            state.loop_busy = true;
            into.append(&mut state.chunks);
        }
        state.end
    }

    /// Loop side: it lets go of the socket (it is about to close it). No producer writes to
    /// it afterwards, and their further output is refused as if the client had gone. Every
    /// path that drops a connection with an outbox calls this first (`Conn`'s `Drop`).
    pub(crate) fn revoke(&self) {
        let mut state = self.lock();
        state.revoked = true;
        state.chunks.clear();
        state.unsent = 0;
        Self::wake_waiters(&self.room, &state);
    }

    /// Loop side: whether the socket is in the loop's epoll set (it is unless told otherwise).
    /// The loop says so before it registers the socket, under this lock, so a producer that
    /// ends the connection alone takes it out again.
    pub(crate) fn set_watched(&self, watched: bool) {
        self.lock().unwatched = !watched;
    }

    /// Loop side: input arrived beyond the request, so the loop will close gently and the
    /// producer must leave the ending to it.
    pub(crate) fn note_extra_input(&self) {
        self.lock().extra_input = true;
    }

    /// Loop side: `n` more bytes reached the socket; wakes a producer waiting for room.
    /// `drained`: the loop's own queue is now empty, so producers may write directly again.
    pub(crate) fn written(&self, n: usize, drained: bool) {
        let mut state = self.lock();
        if drained {
            state.loop_busy = false;
        }
        let before = state.unsent;
        state.unsent = state.unsent.saturating_sub(n);
        state.written_total += n as u64;
        let total = state.written_total;
        let hook = if before > self.high_water / 2 && state.unsent <= self.high_water / 2 {
            Self::wake_waiters(&self.room, &state);
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
        if !was_gone {
            metrics::client_gone();
        }
        state.chunks.clear();
        state.unsent = 0;
        Self::wake_waiters(&self.room, &state);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn outbox(high_water: usize) -> (mio::Poll, Arc<Outbox>) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let id = ConnId { key: 0, serial: 0 };
        (
            poll,
            Outbox::new(id, Notifier::new(waker, None), high_water, None),
        )
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
        outbox.written(60, false);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "90 unsent is above half of 100");
        outbox.written(40, false);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        outbox.written(50, false);
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

    /// A connected pair: the server end (non-blocking, small send buffer) and the client end.
    fn socket_pair() -> (std::os::unix::net::UnixStream, std::os::unix::net::UnixStream) {
        let (server, client) = std::os::unix::net::UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        (server, client)
    }

    fn socket_outbox(fd: std::os::fd::RawFd, high_water: usize) -> (mio::Poll, Arc<Notifier>, Arc<Outbox>) {
        use std::os::fd::AsRawFd;
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let notifier = Notifier::new(waker, Some(poll.as_raw_fd()));
        let id = ConnId { key: 3, serial: 7 };
        let outbox = Outbox::new(id, Arc::clone(&notifier), high_water, Some(fd));
        (poll, notifier, outbox)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn an_idle_loop_is_bypassed_the_bytes_go_straight_to_the_socket() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (server, mut client) = socket_pair();
        let (_poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        outbox.observe(Box::new(move |event| sink.lock().unwrap().push(event)));
        outbox
            .send_slices(&[b"Status: 200 OK\r\n\r\n", b"hello"], None)
            .unwrap();
        let mut got = [0u8; 64];
        let n = client.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"Status: 200 OK\r\n\r\nhello");
        let mut ready = Vec::new();
        notifier.drain(&mut ready);
        assert!(ready.is_empty(), "the loop was woken for nothing: {ready:?}");
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken), None);
        assert!(taken.is_empty(), "a chunk was queued for the loop");
        assert!(!outbox.is_full());
        assert_eq!(*seen.lock().unwrap(), vec![OutboxEvent::Written(23)]);
        // The end goes to the loop, which closes the connection (the socket is not in the
        // loop's epoll set here, so the producer cannot end it alone: see the next test).
        outbox.send(b"!".to_vec(), Some(End::Complete)).unwrap();
        notifier.drain(&mut ready);
        assert_eq!(ready, vec![ConnId { key: 3, serial: 7 }]);
        assert_eq!(outbox.take(&mut taken), Some(End::Complete));
        assert!(taken.is_empty());
        let n = client.read(&mut got).unwrap();
        assert_eq!(&got[..n], b"!");
    }

    /// Puts the server end of a pair in `poll`'s set, as the loop registers connections.
    fn watched(poll: &mio::Poll, server: std::os::fd::RawFd) {
        poll.registry()
            .register(
                &mut mio::unix::SourceFd(&server),
                mio::Token(3),
                mio::Interest::READABLE,
            )
            .unwrap();
    }

    #[test]
    fn a_response_written_whole_is_ended_without_waking_the_loop() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let (server, mut client) = socket_pair();
        let (mut poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        watched(&poll, server.as_raw_fd());
        outbox
            .send_slices(&[b"Status: 200 OK\r\n\r\n", b"whole"], Some(End::Complete))
            .unwrap();
        // The client gets the response and its end at once, from the producer.
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"Status: 200 OK\r\n\r\nwhole");
        // Its closing does not wake the loop: the socket left the set, and no wake-up was sent.
        client.write_all(b"late").unwrap();
        drop(client);
        let mut events = mio::Events::with_capacity(8);
        poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "the loop was woken: {events:?}");
        // The loop finds it when it next looks, and closes it.
        assert!(notifier.has_quiet());
        let mut ready = Vec::new();
        notifier.drain(&mut ready);
        assert_eq!(ready, vec![ConnId { key: 3, serial: 7 }]);
        assert!(!notifier.has_quiet());
        assert_eq!(outbox.take(&mut VecDeque::new()), Some(End::Complete));
        assert_eq!(outbox.send(b"more".to_vec(), None), Err(ClientGone));
    }

    /// A connected TCP pair over the loopback: the server end non-blocking.
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        server.set_nodelay(true).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (server, client)
    }

    #[test]
    fn over_tcp_the_last_bytes_held_for_the_end_reach_the_client_on_every_path() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        // Ended by the producer: the shutdown sends what MSG_MORE held, with the end.
        let (server, mut client) = tcp_pair();
        let (poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        watched(&poll, server.as_raw_fd());
        outbox
            .send_slices(&[b"Status: 200 OK\r\n\r\n", b"short"], Some(End::Complete))
            .unwrap();
        assert!(notifier.has_quiet(), "the producer did not end it");
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"Status: 200 OK\r\n\r\nshort");

        // Not in the loop's set, so the producer cannot end it: the loop's close sends it.
        let (server, mut client) = tcp_pair();
        let (_poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        outbox.send_slices(&[b"held"], Some(End::Complete)).unwrap();
        assert!(!notifier.has_quiet());
        let mut ready = Vec::new();
        notifier.drain(&mut ready);
        assert_eq!(ready.len(), 1, "the loop was not told");
        assert_eq!(outbox.take(&mut VecDeque::new()), Some(End::Complete));
        outbox.revoke();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"held");
    }

    #[test]
    fn the_loop_ends_what_it_must_close_gently_or_still_holds() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        // Input arrived past the request: the loop lingers, so it must do the ending.
        let (server, mut client) = socket_pair();
        let (mut poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        watched(&poll, server.as_raw_fd());
        outbox.note_extra_input();
        outbox.send_slices(&[b"answer"], Some(End::Complete)).unwrap();
        let mut events = mio::Events::with_capacity(8);
        poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
        assert_eq!(events.iter().count(), 1, "the loop was not woken");
        assert!(!notifier.has_quiet());
        client.set_nonblocking(true).unwrap();
        let mut got = [0u8; 16];
        assert_eq!(client.read(&mut got).unwrap(), 6);
        let err = client.read(&mut got).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "our side was shut by the producer"
        );

        // The loop holds output not yet written: the end waits behind it.
        let (server, _client) = socket_pair();
        let (mut poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        watched(&poll, server.as_raw_fd());
        outbox.send(pattern(1 << 20, 4), None).unwrap();
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken), None);
        assert!(!taken.is_empty(), "a megabyte fit a 16 KiB socket buffer");
        outbox.send(Vec::new(), Some(End::Complete)).unwrap();
        poll.poll(&mut events, Some(std::time::Duration::ZERO)).unwrap();
        assert!(!events.is_empty(), "the loop was not woken for the end");
        assert!(!notifier.has_quiet());
    }

    #[test]
    fn what_the_socket_does_not_take_is_queued_and_order_is_kept() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let (mut server, mut client) = socket_pair();
        let (_poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        let first = pattern(1 << 20, 1);
        let second = pattern(50_000, 2);
        let third = pattern(70_000, 3);
        // Nobody reads yet: the socket takes a part of the first send, the rest is queued.
        outbox.send_slices(&[b"HEAD", &first], None).unwrap();
        let mut taken = VecDeque::new();
        outbox.take(&mut taken);
        let queued: u64 = taken.iter().map(Chunk::len).sum();
        assert!(queued > 0 && queued < first.len() as u64 + 4, "queued {queued}");
        // The client reads what reached it, so the socket has room again; but the loop now
        // holds bytes: the next send must queue behind them, not overtake them.
        let mut early = Vec::new();
        let mut buf = vec![0u8; 65536];
        client.set_nonblocking(true).unwrap();
        loop {
            match client.read(&mut buf) {
                Ok(n) => early.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        client.set_nonblocking(false).unwrap();
        assert_eq!(early.len() as u64, first.len() as u64 + 4 - queued);
        outbox.send(second.clone(), None).unwrap();
        outbox.take(&mut taken);
        assert_eq!(
            taken.iter().map(Chunk::len).sum::<u64>(),
            queued + second.len() as u64
        );
        let expected_len = 4 + first.len() + second.len() + third.len();
        let reader = std::thread::spawn(move || {
            let mut all = early;
            while all.len() < expected_len {
                let n = client.read(&mut buf).unwrap();
                assert!(n > 0, "early end of stream");
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        // The loop's part: write what it took, reporting when its queue drains.
        while let Some(Chunk::Bytes(bytes)) = taken.pop_front() {
            let mut pos = 0;
            while pos < bytes.len() {
                match server.write(&bytes[pos..]) {
                    Ok(n) => {
                        pos += n;
                        let drained = pos == bytes.len() && taken.is_empty();
                        outbox.written(n, drained);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let mut ready = Vec::new();
        notifier.drain(&mut ready);
        // Drained: a send goes straight out again.
        outbox.send(third.clone(), None).unwrap();
        let mut rest = VecDeque::new();
        outbox.take(&mut rest);
        let mut in_loop = rest.iter().map(Chunk::len).sum::<u64>();
        while let Some(Chunk::Bytes(bytes)) = rest.pop_front() {
            let mut pos = 0;
            while pos < bytes.len() {
                match server.write(&bytes[pos..]) {
                    Ok(n) => pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            in_loop -= bytes.len() as u64;
        }
        assert_eq!(in_loop, 0);
        let all = reader.join().unwrap();
        let mut expected = b"HEAD".to_vec();
        expected.extend_from_slice(&first);
        expected.extend_from_slice(&second);
        expected.extend_from_slice(&third);
        assert!(all == expected, "the bytes arrived out of order or altered");
    }

    #[test]
    fn after_revocation_nothing_is_written_and_the_producer_is_told() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (server, mut client) = socket_pair();
        let (_poll, _notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        outbox.send(b"before".to_vec(), None).unwrap();
        let mut got = [0u8; 64];
        assert_eq!(client.read(&mut got).unwrap(), 6);
        outbox.revoke();
        assert_eq!(outbox.send(b"after".to_vec(), None), Err(ClientGone));
        assert_eq!(
            outbox.send_slices(&[b"head", b"after"], Some(End::Complete)),
            Err(ClientGone)
        );
        assert_eq!(outbox.wait_for_room(), Err(ClientGone));
        assert!(outbox.client_gone());
        // The socket is still open here, so any write would have arrived.
        client.set_nonblocking(true).unwrap();
        let err = client.read(&mut got).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::WouldBlock,
            "a revoked socket was written to"
        );
    }

    #[test]
    fn a_failed_direct_write_means_the_client_is_gone() {
        use std::os::fd::AsRawFd;
        let (server, client) = socket_pair();
        let (_poll, notifier, outbox) = socket_outbox(server.as_raw_fd(), 1 << 20);
        drop(client);
        assert_eq!(outbox.send(b"nobody".to_vec(), None), Err(ClientGone));
        assert!(outbox.client_gone());
        // The loop is told, and closes the connection as cut short.
        let mut ready = Vec::new();
        notifier.drain(&mut ready);
        assert_eq!(ready.len(), 1);
        assert_eq!(outbox.take(&mut VecDeque::new()), Some(End::Abort));
    }
}
