//! The event loop: owns the Poll, the listener, every connection, the timers and the waker.
//! It owns every socket (it alone accepts, reads and closes them; workers may only write a
//! response to one until the loop revokes it, see `dispatch`), and it never takes the GIL.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::cli::Limits;
use crate::conn::{Conn, Phase, ReadOutcome, Refusal, Watching};
use crate::dispatch::{ConnId, Dispatcher, End, Notifier, Outbox, Request, QUIET_CLOSE_DELAY};
use crate::doorway::{Doorway, Handed};
use crate::listen::{Listener, Stream};
use crate::{debug, error, info, warning};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Timer entries allowed beyond twice the live ones before closed connections' are dropped.
const TIMERS_SLACK: usize = 1024;
/// Most connections one call of `accept_all` takes (each with its first read, and its request
/// dispatched when complete) before the loop looks at its other work: completions to close,
/// events, timers. The rest are taken in the next round, which does not wait.
const ACCEPT_BATCH: usize = 64;
/// How long a request that came whole with its connection runs before the loop watches its
/// socket anyway: long enough that most requests end first (and never cost the loop a system
/// call), short enough that a client resetting a long request frees its slot, and input
/// arriving past a request is read and noted (so the end lingers instead of resetting).
pub(crate) const WATCH_AFTER: Duration = Duration::from_millis(20);
/// How long to stop accepting after the process ran out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An episode of accept failing for lack of descriptors or memory.
#[derive(Debug, Clone, Copy)]
struct AcceptStarved {
    since: Instant,
    failures: u64,
    /// A warning was logged during this episode, so its end is logged too.
    warned: bool,
}

/// Least time between two log lines about the same overload (a full queue, the connection
/// limit), so that sustained overload is reported without flooding the log.
const OVERLOAD_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every request in flight finished after a stop signal.
    Drained,
    /// The graceful timeout ran out with requests still in flight.
    GracefulTimeout,
    /// A second stop signal (or SIGQUIT) asked to stop at once.
    Immediate,
}

/// Signals the loop reacts to, delivered through a pipe written by the signal handler.
pub struct SignalPipe {
    reader: UnixStream,
}

impl SignalPipe {
    /// Installs handlers for SIGTERM, SIGINT and SIGQUIT that write the signal number to a pipe.
    pub fn install() -> io::Result<SignalPipe> {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let fd = writer.into_raw_fd();
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            let byte = signal as u8;
            // Only write(2) runs in the handler: it is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(signal, move || {
                    libc::write(fd, (&byte as *const u8).cast(), 1);
                })
            }?;
        }
        Ok(SignalPipe {
            reader: UnixStream::from_std(reader),
        })
    }

    fn read_signals(&mut self) -> Vec<i32> {
        let mut buf = [0u8; 32];
        let mut seen = Vec::new();
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend(buf[..n].iter().map(|b| *b as i32)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        seen
    }
}

/// The event loop and everything it owns.
pub struct Server<D: Dispatcher> {
    listener: Option<Listener>,
    conns: Slab<Conn>,
    notifier: Arc<Notifier>,
    dispatcher: D,
    limits: Limits,
    timers: Timers,
    scratch: Vec<u8>,
    next_serial: u64,
    ready: Vec<ConnId>,
    signals: SignalPipe,
    graceful_timeout: Duration,
    draining_since: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// The listener may have connections we left waiting (at the connection limit).
    accept_pending: bool,
    /// `accept_all` stopped at [`ACCEPT_BATCH`]: the listener may have more, which no event
    /// will announce again (it is edge-triggered), so the loop polls without waiting.
    accept_more: bool,
    /// Accepting fails for lack of descriptors (or memory): since when and how often. The
    /// episode ends when the backlog is empty again, so a few lines describe it instead of
    /// one per retry.
    accept_starved: Option<AcceptStarved>,
    /// When the last starvation warning was logged: at most one per [`OVERLOAD_LOG_INTERVAL`],
    /// across episodes, as a load that keeps descriptors scarce starts and ends many.
    starved_warning: Option<Instant>,
    /// Complete requests the full worker queue could not take yet, oldest first. They hold
    /// no thread; they go to the queue as it drains.
    held: VecDeque<Request>,
    /// Connections whose head is in and whose body the loop leaves in the kernel's buffer
    /// while enough requests wait for a worker (key, serial), oldest first: the memory held
    /// for waiting requests stays bounded however many clients upload at once.
    deferred: VecDeque<(usize, u64)>,
    /// Connections whose turn ended at the read budget with input left (key, serial): read
    /// again in the next round, after the others had theirs.
    read_again: Vec<(usize, u64)>,
    /// When the last "queue full" and "connection limit" lines were logged.
    queue_full_logged: Option<Instant>,
    conn_limit_logged: Option<Instant>,
    /// How long the kernel holds back a connection that sends nothing (`TCP_DEFER_ACCEPT`):
    /// one accepted with nothing to read connected that much earlier.
    accept_deferral: Duration,
    /// A second SIGTERM/SIGINT stops at once (off under a master, which escalates with SIGQUIT).
    repeat_stops_at_once: bool,
    /// Idle workers accept connections themselves (see `doorway`); the loop accepts only in
    /// loop mode.
    doorway: Option<Arc<Doorway>>,
    /// The listener is in the loop's epoll set.
    listening: bool,
    /// Connections workers handed over, taken in at the next round (reused).
    handed: Vec<Handed>,
    /// Last, so that it drops last: producers may take sockets out of it until the
    /// connections (dropped before it) revoke their outboxes.
    poll: Poll,
}

impl<D: Dispatcher> Server<D> {
    /// Sets up the loop around an open listener. `make_dispatcher` receives nothing of the
    /// loop: the dispatcher only ever sees complete requests.
    pub fn new(
        poll: Poll,
        mut listener: Listener,
        signals: SignalPipe,
        dispatcher: D,
        limits: Limits,
        graceful_timeout: Duration,
    ) -> io::Result<Server<D>> {
        let accept_deferral = listener.accept_deferral();
        let mut signals = signals;
        poll.registry()
            .register(&mut signals.reader, SIGNALS, Interest::READABLE)?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let notifier = Notifier::new(waker, Some(poll.as_raw_fd()));
        let mut dispatcher = dispatcher;
        dispatcher.set_waker(Arc::clone(&notifier));
        // Workers accept themselves only where requests come whole at accept: over a TCP
        // socket that defers accepting until the first bytes (otherwise they would mostly
        // hand connections on to the loop).
        let mut doorway = None;
        if let (Listener::Tcp(_), false) = (&listener, accept_deferral.is_zero()) {
            let door = Arc::new(Doorway::new(
                listener.raw_fd(),
                limits.clone(),
                Arc::clone(&notifier),
            )?);
            if dispatcher.set_doorway(Arc::clone(&door)) {
                doorway = Some(door);
            }
        }
        if doorway.is_none() {
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)?;
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            conns: Slab::with_capacity(256),
            notifier,
            dispatcher,
            limits,
            timers: Timers::new(),
            scratch: vec![0; 64 * 1024],
            next_serial: 0,
            ready: Vec::with_capacity(64),
            signals,
            graceful_timeout,
            draining_since: None,
            accept_paused_until: None,
            accept_pending: false,
            accept_more: false,
            accept_starved: None,
            starved_warning: None,
            held: VecDeque::new(),
            deferred: VecDeque::new(),
            read_again: Vec::new(),
            queue_full_logged: None,
            conn_limit_logged: None,
            accept_deferral,
            repeat_stops_at_once: true,
            listening: doorway.is_none(),
            doorway,
            handed: Vec::new(),
        })
    }

    /// Makes a repeated SIGTERM/SIGINT only continue the drain. For a worker process: a service
    /// manager may signal every process as the master passes the stop on; only SIGQUIT (which
    /// the master sends on a second stop signal) stops at once.
    pub fn set_repeat_stops_at_once(&mut self, at_once: bool) {
        self.repeat_stops_at_once = at_once;
    }

    /// Runs until a stop signal and the drain that follows it.
    pub fn run(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => self.collect_completions(),
                    SIGNALS => {
                        if let Some(exit) = self.on_signals() {
                            return Ok(exit);
                        }
                    }
                    Token(key) => self.on_conn_event(key, event.is_readable(), event.is_writable()),
                }
            }
            if self.notifier.has_quiet() {
                self.collect_completions();
            }
            self.follow_doorway();
            self.read_more();
            self.expire_timers();
            if self.accept_pending
                || self.accept_more
                || self.accept_paused_until.is_some_and(|t| t <= Instant::now())
            {
                self.accept_paused_until = None;
                self.accept_all();
            }
            if let Some(since) = self.draining_since {
                if self.conns.is_empty() && self.workers_hold() == 0 {
                    return Ok(Exit::Drained);
                }
                if since.elapsed() >= self.graceful_timeout {
                    warning!(
                        "server",
                        "graceful timeout ({:.0} s) ran out with {} connection(s) still open; exiting",
                        self.graceful_timeout.as_secs_f64(),
                        self.conns.len() + self.workers_hold()
                    );
                    return Ok(Exit::GracefulTimeout);
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.read_again.is_empty() || self.accept_more {
            // Input or connections are waiting that no event will announce again.
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.timers.peek().map(|(t, _, _)| t);
        for candidate in [
            self.accept_paused_until,
            self.draining_since.map(|s| s + self.graceful_timeout),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(candidate, |n| n.min(candidate)));
        }
        let timeout = next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1));
        if self.conns.is_empty() && (self.draining_since.is_none() || self.workers_hold() == 0) {
            timeout
        } else {
            // A producer may end a connection without waking the loop.
            Some(timeout.map_or(QUIET_CLOSE_DELAY, |t| t.min(QUIET_CLOSE_DELAY)))
        }
    }

    fn on_signals(&mut self) -> Option<Exit> {
        // Connections their producers have already ended are not open ones: close them first,
        // so the counts below are the requests still in flight.
        if self.notifier.has_quiet() {
            self.collect_completions();
        }
        for signal in self.signals.read_signals() {
            if signal == libc::SIGQUIT || (self.draining_since.is_some() && self.repeat_stops_at_once) {
                info!(
                    "server",
                    "stopping at once ({} connection(s) open)",
                    self.conns.len()
                );
                return Some(Exit::Immediate);
            }
            if self.draining_since.is_some() {
                continue;
            }
            let name = match crate::setup::signal_abbrev(signal) {
                Some("SIGTERM") | None if crate::supervisor::replacing() => "being replaced",
                Some(name) => name,
                None => "SIGTERM",
            };
            info!(
                "server",
                "{name}: no longer accepting; finishing {} open connection(s) (up to {:.0} s)",
                self.conns.len() + self.workers_hold(),
                self.graceful_timeout.as_secs_f64()
            );
            self.draining_since = Some(Instant::now());
            if let Some(door) = &self.doorway {
                door.close();
            }
            self.take_backlog();
            if let Some(mut listener) = self.listener.take() {
                if self.listening && self.doorway.is_some() {
                    Doorway::unwatch_in(self.poll.as_raw_fd(), listener.raw_fd());
                } else if self.listening {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.listening = false;
                // Dropping closes our descriptor and removes a socket file we created.
            }
            self.accept_pending = false;
            self.accept_more = false;
            self.accept_paused_until = None;
        }
        None
    }

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
    fn adopt(&mut self, stream: Stream) -> usize {
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
    fn after_first_read(&mut self, key: usize, outcome: ReadOutcome) {
        let conn = &mut self.conns[key];
        if matches!(outcome, ReadOutcome::Pending) && conn.bytes_received() == 0 {
            // Through a deferring listener, it came only once it had sent nothing for the
            // deferral: its head timeout counts from when it connected.
            if let Some(connected) = conn.accepted.checked_sub(self.accept_deferral) {
                conn.accepted = connected;
            }
        }
        let head_deadline = conn.accepted + self.limits.head_timeout;
        let serial = conn.serial;
        self.timers.push((head_deadline, key, serial), &self.conns);
        self.on_read(key, Phase::Head, outcome);
    }

    /// Makes sure connection `key`'s socket is watched for at least `wanted` (see
    /// [`Watching`]). On failure the connection is closed (its producer told the client is
    /// gone) and false returned.
    fn watch(&mut self, key: usize, wanted: Watching) -> bool {
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

    /// As the listener closes: connections the kernel has already completed are clients
    /// sending (or done sending) their requests, which closing it would reset. They are
    /// taken in and served with the rest of the drain, whatever the limits.
    fn take_backlog(&mut self) {
        let mut taken = 0;
        while let Some(listener) = &self.listener {
            match listener.accept() {
                Ok(stream) => {
                    self.adopt(stream);
                    taken += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if taken > 0 {
            info!(
                "server",
                "took {taken} connection(s) waiting in the listen backlog, to answer them before exiting"
            );
        }
    }

    fn accept_all(&mut self) {
        self.accept_pending = false;
        self.accept_more = false;
        if !self.listening {
            // Idle workers accept (doorway mode), or the listener is closed.
            return;
        }
        if crate::supervisor::replacing() {
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
    fn accept_some(&mut self) {
        let mut accepted = 0;
        // Taken in this round with their head in and their body still to read: requests this
        // process has taken on that its dispatcher does not know of yet. (A complete request
        // is already in its queue; a connection whose head has not come is no work yet.)
        let mut incoming = 0;
        loop {
            let Some(listener) = &self.listener else { return };
            if accepted >= ACCEPT_BATCH {
                self.accept_more = true;
                return;
            }
            let may_hold_more = match &self.doorway {
                Some(door) => door.loop_may_accept(self.conns.len()),
                None => self.conns.len() < self.limits.max_connections,
            };
            if !may_hold_more {
                // Leave the rest in the kernel's backlog until a slot frees up.
                self.accept_pending = true;
                if overload_log_due(&mut self.conn_limit_logged) {
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
                self.accept_pending = true;
                self.log_queue_full();
                return;
            }
            if !self.dispatcher.wants_more(incoming) {
                // Busy, and other processes share the listener: leave it to one of them.
                self.accept_pending = true;
                return;
            }
            let result = listener.accept();
            match result {
                Ok(stream) => {
                    let key = self.adopt(stream);
                    accepted += 1;
                    if self.conns.get(key).is_some_and(|c| c.phase == Phase::Body) {
                        incoming += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Some(starved) = self.accept_starved.take().filter(|s| s.warned) {
                        info!(
                            "server",
                            "accepting normally again: every waiting connection taken after {:.1} s of failed accepts ({} failures)",
                            starved.since.elapsed().as_secs_f64(),
                            starved.failures
                        );
                    }
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
                    let starved = self.accept_starved.get_or_insert(AcceptStarved {
                        since: now,
                        failures: 0,
                        warned: false,
                    });
                    starved.failures += 1;
                    if overload_log_due(&mut self.starved_warning) {
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
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
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

    fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
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
    fn read_from(&mut self, key: usize) -> ReadOutcome {
        let conn = &mut self.conns[key];
        // First come, first read: behind bodies already deferred, a new one waits too.
        let dispatcher = &self.dispatcher;
        let none_deferred = self.deferred.is_empty();
        let mut may_read_body = || none_deferred && dispatcher.wants_bodies();
        conn.on_readable(&mut self.scratch, &self.limits, &mut may_read_body)
    }

    /// Gives the connections that used up their read budget another turn.
    fn read_more(&mut self) {
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
    fn on_read(&mut self, key: usize, phase_before: Phase, outcome: ReadOutcome) -> bool {
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
    fn resume_deferred(&mut self) {
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

    fn on_peer_closed(&mut self, key: usize) {
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
                    let refusal = Refusal::new("400 Bad Request", cause);
                    return self.answer(key, &refusal, crate::log::Level::Info);
                }
                info!("server", "{cause}");
            }
            Phase::Body => {
                let (got, declared) = conn.body_progress();
                let cause = format!(
                    "client closed the connection after {got} of {declared} body bytes; request dropped"
                );
                if may_answer {
                    let refusal = Refusal::new("400 Bad Request", cause);
                    return self.answer(key, &refusal, crate::log::Level::Warning);
                }
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

    fn dispatch(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let (buf, payload, body) = conn.take_request();
        let outbox = Outbox::new(
            ConnId {
                key,
                serial: conn.serial,
            },
            Arc::clone(&self.notifier),
            self.limits.write_buffer,
            Some(conn.stream.as_raw_fd()),
        );
        if conn.wants_linger() {
            outbox.note_extra_input();
        }
        let unwatched = conn.watching == Watching::Nothing;
        if unwatched {
            outbox.set_watched(false);
        }
        conn.outbox = Some(Arc::clone(&outbox));
        let serial = conn.serial;
        let request = Request {
            buf,
            payload,
            body,
            outbox,
            accepted: conn.accepted,
        };
        if unwatched {
            self.timers
                .push((Instant::now() + WATCH_AFTER, key, serial), &self.conns);
        }
        if !self.held.is_empty() {
            self.held.push_back(request);
            return;
        }
        if let Err(request) = self.dispatcher.dispatch(request) {
            // The queue is full: hold the request here (no thread, no GIL) and stop accepting
            // until a worker takes one; the client is answered late, never dropped.
            self.log_queue_full();
            self.held.push_back(request);
        }
    }

    fn log_queue_full(&mut self) {
        if overload_log_due(&mut self.queue_full_logged) {
            warning!(
                "server",
                "the request queue is full ({} waiting for a worker thread; --max-queue, or queue= for pool): new connections wait in the listen backlog",
                self.dispatcher.queue_limit()
            );
        }
    }

    /// Moves held requests to the worker queue as it has room, then resumes accepting.
    fn release_held(&mut self) {
        while let Some(request) = self.held.pop_front() {
            if request.outbox.client_gone() {
                continue; // Its client gave up while it waited; its connection is gone.
            }
            if let Err(request) = self.dispatcher.dispatch(request) {
                self.held.push_front(request);
                return;
            }
        }
        if self.accept_pending {
            self.accept_all();
        }
    }

    fn refuse(&mut self, key: usize, refusal: &Refusal) {
        let level = if refusal.status.starts_with('5') {
            crate::log::Level::Error
        } else {
            crate::log::Level::Warning
        };
        self.answer(key, refusal, level);
    }

    /// Logs `refusal` at `level`, then answers it and closes.
    fn answer(&mut self, key: usize, refusal: &Refusal, level: crate::log::Level) {
        let conn = &mut self.conns[key];
        crate::log::write(
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
        if let Some(mut entry) = crate::access::begin(conn.header_block(), conn.accepted) {
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

    fn collect_completions(&mut self) {
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
        if !self.held.is_empty() || self.accept_pending {
            self.release_held();
        }
        if !self.deferred.is_empty() {
            self.resume_deferred();
        }
    }

    /// Connections workers hold (see `doorway`), or handed over and not taken in yet.
    fn workers_hold(&self) -> usize {
        self.doorway.as_ref().map_or(0, |door| door.held())
    }

    /// Takes in the connections workers handed over: a fresh one goes on from its first
    /// read, as one the loop accepted would; a running one's outbox is told its slot, and
    /// its output pumped.
    fn take_handed(&mut self) {
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

    /// Follows the doorway's mode: the loop accepts only in loop mode (see `doorway`).
    fn follow_doorway(&mut self) {
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
            Doorway::unwatch_in(self.poll.as_raw_fd(), fd);
            self.listening = false;
            self.accept_pending = false;
            self.accept_more = false;
        }
    }

    /// Moves the app's output to the socket and closes the connection when the response is done.
    fn pump_output(&mut self, key: usize) {
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

    fn expire_timers(&mut self) {
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
                    &Refusal {
                        status: "408 Request Timeout",
                        cause: format!(
                            "the SCGI head did not arrive within {:.1} s (--head-timeout)",
                            self.limits.head_timeout.as_secs_f64()
                        ),
                    },
                ),
                Phase::Body => {
                    let (got, declared) = conn.body_progress();
                    self.refuse(
                        key,
                        &Refusal {
                            status: "408 Request Timeout",
                            cause: format!(
                                "request body stalled at {got} of {declared} bytes for {:.1} s (--body-timeout)",
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

    fn close(&mut self, key: usize) {
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
        if self.accept_pending {
            self.accept_all();
        }
    }
}

/// The loop's timers: (deadline, connection key, serial), earliest first. An entry stays
/// until its time even when its connection closed first (a head timer per connection: ten
/// seconds of them at thousands of requests a second), so when they pile up those whose
/// connection is gone are dropped, at a cost that amortises to a constant per entry.
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Size at which the heap is cleared of closed connections' entries.
    compact_at: usize,
}

impl Timers {
    fn new() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            compact_at: TIMERS_SLACK,
        }
    }

    /// Adds a timer for a connection of `conns`.
    fn push(&mut self, entry: (Instant, usize, u64), conns: &Slab<Conn>) {
        self.push_if_live(entry, |key, serial| {
            conns.get(key).is_some_and(|c| c.serial == serial)
        });
    }

    /// Adds a timer; `live` says which entries' connections are still open.
    fn push_if_live(&mut self, entry: (Instant, usize, u64), live: impl Fn(usize, u64) -> bool) {
        self.heap.push(Reverse(entry));
        if self.heap.len() >= self.compact_at {
            self.heap.retain(|Reverse((_, key, serial))| live(*key, *serial));
            self.compact_at = (2 * self.heap.len()).max(TIMERS_SLACK);
        }
    }

    /// The earliest entry.
    fn peek(&self) -> Option<(Instant, usize, u64)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    /// Removes the earliest entry.
    fn pop(&mut self) {
        self.heap.pop();
    }
}

/// Whether an overload line may be logged now (at most one per [`OVERLOAD_LOG_INTERVAL`]).
fn overload_log_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < OVERLOAD_LOG_INTERVAL) {
        return false;
    }
    *last = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_of_closed_connections_do_not_pile_up() {
        let mut timers = Timers::new();
        let later = Instant::now() + Duration::from_secs(10);
        // 100,000 connections come and go (a head timer each); every 1,000th is still open.
        let live = |key: usize, _serial: u64| key % 1000 == 0;
        for key in 0..100_000 {
            timers.push_if_live((later, key, key as u64), live);
            assert!(
                timers.heap.len() <= 2 * TIMERS_SLACK,
                "{} entries after {key}",
                timers.heap.len()
            );
        }
        // The open connections keep their timers.
        let kept = timers
            .heap
            .iter()
            .filter(|Reverse((_, key, _))| key % 1000 == 0)
            .count();
        assert_eq!(kept, 100);
    }
}
