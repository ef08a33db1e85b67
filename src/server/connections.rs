//! One connection's turns in the loop: reading its request, dispatching it, writing the
//! response as it comes, refusing what cannot be served, timing out, and closing.

use std::time::{Duration, Instant};

use mio::{Interest, Token};

use super::dispatcher::Dispatcher;
use super::timers::WATCH_AFTER;
use super::{overload_log_due, Server};
use crate::base::access;
use crate::base::log::{self, debug, error, info, warning, Level};
use crate::base::metrics::{self, Refused};
use crate::net::conn::{Phase, ReadOutcome, Watching};
use crate::proto::cgi::Answer;
use crate::seam::notifier::ConnId;
use crate::seam::outbox::End;

impl<D: Dispatcher> Server<D> {
    /// Makes sure connection `key`'s socket is watched for at least `wanted` (see
    /// [`Watching`]). On failure the connection is closed (its producer told the client is
    /// gone) and false returned.
    pub(super) fn watch(&mut self, key: usize, wanted: Watching) -> bool {
        let conn = &mut self.conns[key];
        if conn.watching >= wanted {
            return true;
        }
        let interest = match wanted {
            Watching::ReadWrite => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        let registry = self.poll.registry();
        let result = if conn.watching == Watching::Nothing {
            // From now on a producer ending the connection must take it out of the set.
            if let Some(outbox) = &conn.outbox {
                outbox.set_watched(true);
            }
            registry.register(&mut conn.stream, Token(key), interest)
        } else {
            registry.reregister(&mut conn.stream, Token(key), interest)
        };
        match result {
            Ok(()) => {
                conn.watching = wanted;
                true
            }
            Err(e) => {
                error!("server", "cannot watch a connection for events: {e}");
                if let Some(outbox) = &conn.outbox {
                    outbox.mark_client_gone();
                }
                self.close(key);
                false
            }
        }
    }

    pub(super) fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.is_paused() {
            // Its body waits its turn (see `deferred`).
            return;
        }
        let serial = conn.serial;
        if readable {
            let phase_before = conn.phase;
            let outcome = self.read_from(key);
            if !self.on_read(key, phase_before, outcome) {
                return;
            }
        }
        // A refusal's answer may have found the client gone and closed the connection (and a
        // new one may already be in its slot).
        if (writable || readable) && self.conns.get(key).is_some_and(|c| c.serial == serial) {
            self.pump_output(key);
        }
    }

    /// Reads what connection `key`'s socket has (see [`Conn::on_readable`]).
    pub(super) fn read_from(&mut self, key: usize) -> ReadOutcome {
        let conn = &mut self.conns[key];
        // First come, first read: behind bodies already deferred, a new one waits too.
        let dispatcher = &self.dispatcher;
        let none_deferred = self.deferred.is_empty();
        let mut may_read_body = || none_deferred && dispatcher.wants_bodies();
        conn.on_readable(&mut self.scratch, &self.limits, &mut may_read_body)
    }

    /// Gives the connections that used up their read budget another turn.
    pub(super) fn read_more(&mut self) {
        if self.read_again.is_empty() {
            return;
        }
        for (key, serial) in std::mem::take(&mut self.read_again) {
            if self.conns.get(key).is_some_and(|c| c.serial == serial) {
                self.on_conn_event(key, true, false);
            }
        }
    }

    /// Acts on what a read of connection `key` brought. Returns whether the connection is
    /// still open and not waiting its turn, so that its output may be pumped.
    pub(super) fn on_read(&mut self, key: usize, phase_before: Phase, outcome: ReadOutcome) -> bool {
        match outcome {
            ReadOutcome::Pending => {
                if !self.watch(key, Watching::Readable) {
                    return false;
                }
                // The body's stall timer replaces the head timer once the head is in.
                let conn = &self.conns[key];
                if phase_before == Phase::Head && conn.phase == Phase::Body {
                    let serial = conn.serial;
                    if let Some(deadline) = conn.deadline(&self.limits) {
                        self.timers.push((deadline, key, serial), &self.conns);
                    }
                }
            }
            ReadOutcome::Complete => self.dispatch(key),
            ReadOutcome::Refuse(refusal) => self.refuse(key, &refusal),
            ReadOutcome::Closed => {
                self.on_peer_closed(key);
                return false;
            }
            ReadOutcome::Deferred => {
                self.deferred.push_back((key, self.conns[key].serial));
                return false;
            }
            ReadOutcome::Again => self.read_again.push((key, self.conns[key].serial)),
        }
        true
    }

    /// Reads deferred bodies, oldest first, while the dispatcher wants more (it wakes the loop
    /// when a worker takes a request).
    pub(super) fn resume_deferred(&mut self) {
        while let Some(&(key, serial)) = self.deferred.front() {
            let waiting = self
                .conns
                .get(key)
                .is_some_and(|c| c.serial == serial && c.is_paused());
            if waiting && !self.dispatcher.wants_bodies() {
                return;
            }
            self.deferred.pop_front();
            if !waiting {
                continue; // Closed meanwhile.
            }
            self.conns[key].resume();
            if let Some(deadline) = self.conns[key].deadline(&self.limits) {
                self.timers.push((deadline, key, serial), &self.conns);
            }
            let mut go_ahead = || true;
            let outcome = self.conns[key].on_readable(&mut self.scratch, &self.limits, &mut go_ahead);
            // Its stall timer is set above; it is not deferred again (`go_ahead`).
            self.on_read(key, Phase::Body, outcome);
        }
    }

    pub(super) fn on_peer_closed(&mut self, key: usize) {
        let conn = &self.conns[key];
        // A client that only shut down its sending side still reads: it gets a 400 saying
        // what was missing (one that has gone entirely resets the write, which costs nothing).
        let may_answer = conn.peer_eof();
        match conn.phase {
            Phase::Head if conn.bytes_received() > 0 => {
                let cause = format!(
                    "client closed the connection after {} bytes of an incomplete SCGI head",
                    conn.bytes_received()
                );
                if may_answer {
                    let refusal = Answer::new("400 Bad Request", cause);
                    return self.answer(key, &refusal, Level::Info);
                }
                metrics::client_gone();
                info!("server", "{cause}");
            }
            Phase::Body => {
                let (got, declared) = conn.body_progress();
                let cause = format!(
                    "client closed the connection after {got} of {declared} body bytes; request dropped"
                );
                if may_answer {
                    let refusal = Answer::new("400 Bad Request", cause);
                    return self.answer(key, &refusal, Level::Warning);
                }
                metrics::client_gone();
                warning!("server", "{cause}");
            }
            Phase::Running => {
                if let Some(outbox) = &conn.outbox {
                    debug!("server", "client went away while the app was running");
                    outbox.mark_client_gone();
                }
            }
            _ => {}
        }
        self.close(key);
    }
    pub(super) fn dispatch(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let serial = conn.serial;
        let unwatched = conn.watching == Watching::Nothing;
        let request = conn.start_request(ConnId { key, serial }, &self.notifier, self.limits.write_buffer);
        if unwatched {
            self.timers
                .push((Instant::now() + WATCH_AFTER, key, serial), &self.conns);
        }
        if !self.held.is_empty() {
            metrics::refused(Refused::QueueFull);
            self.held.push_back(request);
            return;
        }
        if let Err(request) = self.dispatcher.dispatch(request) {
            // The queue is full: hold the request here (no thread, no GIL) and stop accepting
            // until a worker takes one; the client is answered late, never dropped.
            metrics::refused(Refused::QueueFull);
            self.log_queue_full();
            self.held.push_back(request);
        }
    }

    pub(super) fn log_queue_full(&mut self) {
        if overload_log_due(&mut self.queue_full_logged) {
            warning!(
                "server",
                "the request queue is full ({} waiting for a worker thread; --max-queue, or queue= for pool): new connections wait in the listen backlog",
                self.dispatcher.queue_limit()
            );
        }
    }

    /// Moves held requests to the worker queue as it has room, then resumes accepting.
    pub(super) fn release_held(&mut self) {
        while let Some(request) = self.held.pop_front() {
            if request.outbox.client_gone() {
                continue; // Its client gave up while it waited; its connection is gone.
            }
            if let Err(request) = self.dispatcher.dispatch(request) {
                self.held.push_front(request);
                return;
            }
        }
        if self.intake.pending {
            self.accept_all();
        }
    }

    pub(super) fn refuse(&mut self, key: usize, refusal: &Answer) {
        let level = if refusal.status.starts_with('5') {
            Level::Error
        } else {
            Level::Warning
        };
        self.answer(key, refusal, level);
    }

    /// Logs `refusal` at `level`, then answers it and closes.
    pub(super) fn answer(&mut self, key: usize, refusal: &Answer, level: Level) {
        let conn = &mut self.conns[key];
        log::write(
            level,
            "server",
            format_args!(
                "{} ({} bytes received): {}",
                refusal.status,
                conn.bytes_received(),
                refusal.cause
            ),
        );
        // The access log has a line for every answer, the loop's own included (with what is
        // known of the request: nothing before its head is in).
        if let Some(cause) = Refused::of_status(refusal.code()) {
            metrics::refused(cause);
        }
        if let Some(mut entry) = access::begin_answer(conn.header_block(), conn.accepted) {
            entry.set_result(refusal.code(), refusal.body_len());
        }
        if let Some(outbox) = conn.outbox.take() {
            outbox.revoke();
        }
        conn.refuse(refusal);
        let deadline = conn.deadline(&self.limits);
        let serial = conn.serial;
        if let Some(t) = deadline {
            self.timers.push((t, key, serial), &self.conns);
        }
        self.pump_output(key);
    }

    pub(super) fn collect_completions(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        // First, as it re-arms the wake-up: a connection handed over after `take_handed`
        // looked wakes the loop again.
        self.notifier.drain(&mut ready);
        self.take_handed();
        for id in ready.drain(..) {
            let current = self.conns.get(id.key).is_some_and(|c| c.serial == id.serial);
            if current {
                self.pump_output(id.key);
            }
        }
        self.ready = ready;
        // A wake-up may also mean the worker queue has room again.
        if !self.held.is_empty() || self.intake.pending {
            self.release_held();
        }
        if !self.deferred.is_empty() {
            self.resume_deferred();
        }
    }

    /// Moves the app's output to the socket and closes the connection when the response is done.
    pub(super) fn pump_output(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Lingering {
            return;
        }
        // Blocked before this round means a write-timeout timer is already set.
        let was_blocked = !conn.output_drained();
        conn.collect_output();
        if let Err(e) = conn.write_out() {
            debug!("server", "client went away while receiving the response: {e}");
            if let Some(outbox) = &conn.outbox {
                outbox.mark_client_gone();
            }
            self.close(key);
            return;
        }
        if !conn.output_drained() {
            if !self.watch(key, Watching::ReadWrite) {
                return;
            }
            let conn = &mut self.conns[key];
            if !was_blocked || conn.phase == Phase::Closing {
                let serial = conn.serial;
                if let Some(t) = conn.deadline(&self.limits) {
                    self.timers.push((t, key, serial), &self.conns);
                }
            }
            return;
        }
        match conn.end() {
            Some(End::Complete) if conn.wants_linger() => {
                // Lingering waits for the client's end of stream: an event.
                if !self.watch(key, Watching::Readable) {
                    return;
                }
                let conn = &mut self.conns[key];
                conn.start_linger();
                let serial = conn.serial;
                if let Some(t) = conn.deadline(&self.limits) {
                    self.timers.push((t, key, serial), &self.conns);
                }
            }
            Some(End::Complete) => self.close(key),
            Some(End::Abort) => {
                // Reset rather than close cleanly, so a frontend can tell the response is cut short.
                let _ = socket2::SockRef::from(&self.conns[key].stream).set_linger(Some(Duration::ZERO));
                self.close(key);
            }
            None => {}
        }
    }

    pub(super) fn close(&mut self, key: usize) {
        let held = !self.held.is_empty();
        // No deregister: closing the socket (when `conn` drops) takes it out of the epoll set,
        // and saves a system call per connection. A stale event for the slot is harmless (a
        // read that would block).
        let conn = self.conns.remove(key);
        if let Some(door) = &self.doorway {
            door.loop_holds(self.conns.len());
        }
        if let Some(outbox) = &conn.outbox {
            // A response still being produced has nobody to go to any more.
            if conn.end().is_none() {
                outbox.mark_client_gone();
            }
        }
        if held {
            // A held request of this connection is skipped when its turn comes.
            self.held.retain(|r| !r.outbox.client_gone());
        }
        if self.intake.pending {
            self.accept_all();
        }
    }

    pub(super) fn expire_timers(&mut self) {
        let now = Instant::now();
        while let Some((when, key, serial)) = self.timers.peek() {
            if when > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get(key).filter(|c| c.serial == serial) else {
                continue;
            };
            if conn.phase == Phase::Running && conn.watching == Watching::Nothing {
                // It has run WATCH_AFTER (or longer): from now on its input and its client's
                // departure are seen. Nothing else can be due: its output never waited.
                self.watch(key, Watching::Readable);
                continue;
            }
            match conn.deadline(&self.limits) {
                None => continue,
                Some(deadline) if deadline > now => {
                    self.timers.push((deadline, key, serial), &self.conns);
                    continue;
                }
                Some(_) => {}
            }
            match conn.phase {
                Phase::Head if conn.bytes_received() == 0 => {
                    debug!("server", "closing a connection that sent nothing");
                    self.close(key);
                }
                Phase::Head => self.refuse(
                    key,
                    &Answer {
                        status: "408 Request Timeout",
                        cause: format!(
                            "the SCGI head did not arrive within {:.1} s (--head-timeout)",
                            self.limits.head_timeout.as_secs_f64()
                        ),
                    },
                ),
                Phase::Body => {
                    let (got, declared) = conn.body_progress();
                    // ashd's htparser forwards a body only with a Content-Type, yet callscgi
                    // sends the length: the body never comes. Say so, rather than leave a
                    // bare 408 after a long wait.
                    let hint = if got == 0 && !conn.has_content_type() {
                        "; no byte came, and the request has no Content-Type: behind ashd, \
                         whose htparser forwards a request body only with one, the client must send it"
                    } else {
                        ""
                    };
                    self.refuse(
                        key,
                        &Answer {
                            status: "408 Request Timeout",
                            cause: format!(
                                "request body stalled at {got} of {declared} bytes for {:.1} s (--body-timeout){hint}",
                                self.limits.body_timeout.as_secs_f64()
                            ),
                        },
                    )
                }
                Phase::Running | Phase::Closing => {
                    warning!(
                        "server",
                        "client has not read any of the response for {:.1} s (--write-timeout); dropping it",
                        self.limits.write_timeout.as_secs_f64()
                    );
                    if let Some(outbox) = &conn.outbox {
                        outbox.mark_client_gone();
                    }
                    self.close(key);
                }
                Phase::Lingering => self.close(key),
            }
        }
    }
}
