//! Taking connections in: from the listener (when the loop accepts), from workers that
//! handed theirs over (see `doorway`), and from the backlog as the listener closes.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::dispatcher::Dispatcher;
use super::doorway::{Doorway, Handed};
use super::timers::WATCH_AFTER;
use super::{overload_log_due, AcceptStarved, Server, LISTENER};
use crate::base::log::{debug, error, info, warning};
use crate::base::metrics::{self, Refused};
use crate::base::process;
use crate::net::conn::{Conn, Phase, ReadOutcome};
use crate::net::listen::{admitted, Stream};
use crate::seam::notifier::ConnId;

/// Most connections one call of `accept_all` takes (each with its first read, and its request
/// dispatched when complete) before the loop looks at its other work: completions to close,
/// events, timers. The rest are taken in the next round, which does not wait.
const ACCEPT_BATCH: usize = 64;
/// How long to stop accepting after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl<D: Dispatcher> Server<D> {
    /// Takes an accepted connection in: a slot, its head timer, a first read, and its place
    /// in the epoll set when it needs one.
    ///
    /// A frontend sends its request as it connects, so over a TCP listener that defers
    /// accepting until the first bytes arrive (the default, see `listen::DEFER_ACCEPT_SECS`)
    /// the request is nearly always whole by the time its connection is accepted; elsewhere it
    /// is when the loop comes to it behind connections queued before it. Such a request
    /// goes to the app at once, and its socket never joins the epoll set: the worker writes
    /// the response and ends the connection itself, so the loop has no event to wait for, and
    /// registering and removing it would cost two system calls per request. A connection
    /// whose request has not all arrived is registered (readable, edge-triggered: the
    /// registration reports what is already there) and read as its data comes. Returns its
    /// slot.
    pub(super) fn adopt(&mut self, stream: Stream) -> usize {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.conns.insert(Conn::new(stream, serial, Instant::now()));
        let outcome = self.read_from(key);
        self.after_first_read(key, outcome);
        key
    }

    /// Goes on with connection `key` from what its first read (at accept) brought: its head
    /// timer, then what the read calls for (see `on_read`, which registers the socket when
    /// it must wait for input).
    pub(super) fn after_first_read(&mut self, key: usize, outcome: ReadOutcome) {
        let conn = &mut self.conns[key];
        if matches!(outcome, ReadOutcome::Pending) && conn.bytes_received() == 0 {
            // Through a deferring listener, it came only once it had sent nothing for the
            // deferral: its head timeout counts from when it connected.
            if let Some(connected) = conn.accepted.checked_sub(self.intake.deferral) {
                conn.accepted = connected;
            }
        }
        let head_deadline = conn.accepted + self.limits.head_timeout;
        let serial = conn.serial;
        self.timers.push((head_deadline, key, serial), &self.conns);
        self.on_read(key, Phase::Head, outcome);
    }

    pub(super) fn accept_all(&mut self) {
        self.intake.pending = false;
        self.intake.more = false;
        if !self.listening {
            // Idle workers accept (doorway mode), or the listener is closed.
            return;
        }
        if process::replacing() {
            // This process asked to be replaced: the SIGTERM it sent itself is on its way to
            // the signal pipe, and the drain that follows takes the backlog in one go.
            return;
        }
        self.accept_some();
        if let Some(door) = &self.doorway {
            door.loop_holds(self.conns.len());
        }
    }

    /// Accepts what the listener has, up to [`ACCEPT_BATCH`] and within the limits.
    pub(super) fn accept_some(&mut self) {
        let mut accepted = 0;
        // Taken in this round with their head in and their body still to read: requests this
        // process has taken on that its dispatcher does not know of yet. (A complete request
        // is already in its queue; a connection whose head has not come is no work yet.)
        let mut incoming = 0;
        loop {
            let Some(listener) = &self.listener else { return };
            if accepted >= ACCEPT_BATCH {
                self.intake.more = true;
                return;
            }
            let may_hold_more = match &self.doorway {
                Some(door) => door.loop_may_accept(self.conns.len()),
                None => self.conns.len() < self.limits.max_connections,
            };
            if !may_hold_more {
                metrics::refused(Refused::MaxConnections);
                // Leave the rest in the kernel's backlog until a slot frees up.
                self.intake.pending = true;
                if overload_log_due(&mut self.intake.conn_limit_logged) {
                    warning!(
                        "server",
                        "{} connections open, the limit (--max-connections); new ones wait in the listen backlog",
                        self.conns.len()
                    );
                }
                return;
            }
            if !self.held.is_empty() || !self.dispatcher.has_room() {
                // Requests already wait for a worker: let new ones wait in the backlog.
                self.intake.pending = true;
                self.log_queue_full();
                return;
            }
            if !self.dispatcher.wants_more(incoming) {
                // Busy, and other processes share the listener: leave it to one of them.
                self.intake.pending = true;
                return;
            }
            let result = listener.accept();
            match result {
                Ok(stream) if !admitted(&stream, self.limits.allow_from.as_deref()) => continue,
                Ok(stream) => {
                    if self.intake.starved.is_some() {
                        self.accepting_again("descriptors free again");
                    }
                    let key = self.adopt(stream);
                    accepted += 1;
                    if self.conns.get(key).is_some_and(|c| c.phase == Phase::Body) {
                        incoming += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accepting_again("every waiting connection taken");
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    let now = Instant::now();
                    let starved = self.intake.starved.get_or_insert(AcceptStarved {
                        since: now,
                        failures: 0,
                        warned: false,
                    });
                    starved.failures += 1;
                    if overload_log_due(&mut self.intake.starved_warning) {
                        starved.warned = true;
                        warning!(
                            "server",
                            "cannot accept: {e} ({} connections open, {} failures in {:.0} s); retrying every {} ms",
                            self.conns.len(),
                            starved.failures,
                            now.duration_since(starved.since).as_secs_f64(),
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    self.intake.paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                // The peer gave up before we accepted it: nothing to serve.
                Err(e) => {
                    debug!("server", "accept failed: {e}");
                    continue;
                }
            }
        }
    }
    /// Takes in the connections workers handed over: a fresh one goes on from its first
    /// read, as one the loop accepted would; a running one's outbox is told its slot, and
    /// its output pumped.
    pub(super) fn take_handed(&mut self) {
        let Some(door) = self.doorway.clone() else { return };
        let mut handed = std::mem::take(&mut self.handed);
        door.take_handed(&mut handed);
        for connection in handed.drain(..) {
            match connection {
                Handed::Fresh(conn, outcome) => {
                    let key = self.conns.insert(conn);
                    door.loop_holds(self.conns.len());
                    door.let_go();
                    self.after_first_read(key, outcome);
                }
                Handed::Running(conn) => {
                    let serial = conn.serial;
                    let key = self.conns.insert(conn);
                    door.loop_holds(self.conns.len());
                    door.let_go();
                    if let Some(outbox) = &self.conns[key].outbox {
                        outbox.rebind(ConnId { key, serial });
                    }
                    self.timers
                        .push((Instant::now() + WATCH_AFTER, key, serial), &self.conns);
                    self.pump_output(key);
                }
            }
        }
        self.handed = handed;
    }

    /// Ends an episode of failed accepts (out of descriptors), with a line if it was warned
    /// about: `how` says what showed it over.
    fn accepting_again(&mut self, how: &str) {
        if let Some(starved) = self.intake.starved.take().filter(|s| s.warned) {
            info!(
                "server",
                "accepting normally again ({how}) after {:.1} s of failed accepts ({} failures)",
                starved.since.elapsed().as_secs_f64(),
                starved.failures
            );
        }
    }

    /// Follows the doorway's mode: the loop accepts only in loop mode (see `doorway`).
    pub(super) fn follow_doorway(&mut self) {
        let Some(door) = &self.doorway else { return };
        let called = door.take_loop_call();
        let wanted = door.loop_mode() && self.listener.is_some();
        if wanted == self.listening {
            if called && wanted {
                // Still registered from before: a connection a worker was woken for and left
                // announces itself no more (see `Doorway::take_loop_call`).
                self.accept_all();
            }
            return;
        }
        let Some(listener) = &self.listener else { return };
        let fd = listener.raw_fd();
        if wanted {
            if let Err(e) = Doorway::watch_in(self.poll.as_raw_fd(), fd, LISTENER.0 as u64) {
                error!("server", "cannot watch the listening socket: {e}");
                return;
            }
            self.listening = true;
            self.accept_all();
        } else {
            // The worker threads accept again (they step aside while descriptors lack).
            self.accepting_again("worker threads accept again");
            Doorway::unwatch_in(self.poll.as_raw_fd(), fd);
            self.listening = false;
            self.intake.pending = false;
            self.intake.more = false;
        }
    }
}
