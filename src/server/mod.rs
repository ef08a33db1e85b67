//! The event loop: owns the Poll, the listener, every connection, the timers and the waker.
//! It owns every socket (it alone accepts, reads and closes them; workers may only write a
//! response to one until the loop revokes it, see `seam::outbox`), and it never takes the GIL.
//!
//! Beside it: the [`Dispatcher`](dispatcher::Dispatcher) trait it drives the app side
//! through, and the [`doorway`], where idle workers accept connections themselves.
//! The loop's work is spread over `accept` (taking connections in), `connections` (reading
//! requests, dispatching them, writing responses, timing out, closing) and `drain` (stop
//! signals); `signals` and `timers` hold what it keeps for them.

mod accept;
mod connections;
pub mod dispatcher;
pub mod doorway;
mod drain;
mod signals;
mod timers;

pub use signals::SignalPipe;

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use self::dispatcher::Dispatcher;
use self::doorway::{Doorway, Handed};
use self::timers::Timers;
use crate::base::config::Limits;
use crate::base::log::warning;
use crate::base::metrics::{self, Gauge};
use crate::net::conn::Conn;
use crate::net::listen::Listener;
use crate::seam::notifier::{ConnId, Notifier, QUIET_CLOSE_DELAY};
use crate::seam::request::Request;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

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

/// What the loop keeps about taking connections in (see `accept`).
#[derive(Debug, Default)]
struct Intake {
    /// No accepting until then (the process ran out of descriptors).
    paused_until: Option<Instant>,
    /// The listener may have connections we left waiting (at the connection limit).
    pending: bool,
    /// `accept_all` stopped at `ACCEPT_BATCH`: the listener may have more, which no event
    /// will announce again (it is edge-triggered), so the loop polls without waiting.
    more: bool,
    /// Accepting fails for lack of descriptors (or memory): since when and how often. The
    /// episode ends when the backlog is empty again, so a few lines describe it instead of
    /// one per retry.
    starved: Option<AcceptStarved>,
    /// When the last starvation warning was logged: at most one per [`OVERLOAD_LOG_INTERVAL`],
    /// across episodes, as a load that keeps descriptors scarce starts and ends many.
    starved_warning: Option<Instant>,
    /// When the last "connection limit" line was logged.
    conn_limit_logged: Option<Instant>,
    /// How long the kernel holds back a connection that sends nothing (`TCP_DEFER_ACCEPT`):
    /// one accepted with nothing to read connected that much earlier.
    deferral: Duration,
}

/// Stop signals and the drain they start (see `drain`).
#[derive(Debug)]
struct Drain {
    /// Bound on the wait for requests in flight.
    graceful_timeout: Duration,
    /// Since when the loop drains, once a stop signal came.
    since: Option<Instant>,
    /// The signal that started the drain.
    started_by: Option<i32>,
    /// A SIGINT came: a second one (Ctrl-C twice) stops at once.
    sigint_seen: bool,
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
    /// Stop signals and the drain they start.
    drain: Drain,
    /// What the loop keeps about taking connections in.
    intake: Intake,
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
    /// When the last "queue full" line was logged.
    queue_full_logged: Option<Instant>,
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
        // Idle workers accept where the listener suits it and the dispatcher takes it up
        // (see `doorway`).
        let mut doorway = None;
        if let Some(door) = Doorway::for_listener(&listener, &limits, &notifier)? {
            let door = Arc::new(door);
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
            drain: Drain {
                graceful_timeout,
                since: None,
                started_by: None,
                sigint_seen: false,
            },
            intake: Intake {
                deferral: accept_deferral,
                ..Intake::default()
            },
            held: VecDeque::new(),
            deferred: VecDeque::new(),
            read_again: Vec::new(),
            queue_full_logged: None,
            listening: doorway.is_none(),
            doorway,
            handed: Vec::new(),
        })
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
            if metrics::enabled() {
                metrics::set(Gauge::OpenConnections, self.conns.len() + self.workers_hold());
                metrics::set(Gauge::Held, self.held.len());
            }
            if self.intake.pending
                || self.intake.more
                || self.intake.paused_until.is_some_and(|t| t <= Instant::now())
            {
                self.intake.paused_until = None;
                self.accept_all();
            }
            if let Some(since) = self.drain.since {
                if self.conns.is_empty() && self.workers_hold() == 0 {
                    return Ok(Exit::Drained);
                }
                if since.elapsed() >= self.drain.graceful_timeout {
                    warning!(
                        "server",
                        "graceful timeout ({:.0} s) ran out with {} connection(s) still open; exiting",
                        self.drain.graceful_timeout.as_secs_f64(),
                        self.conns.len() + self.workers_hold()
                    );
                    return Ok(Exit::GracefulTimeout);
                }
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.read_again.is_empty() || self.intake.more {
            // Input or connections are waiting that no event will announce again.
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.timers.peek().map(|(t, _, _)| t);
        for candidate in [
            self.intake.paused_until,
            self.drain.since.map(|s| s + self.drain.graceful_timeout),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(candidate, |n| n.min(candidate)));
        }
        let timeout = next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1));
        if self.conns.is_empty() && (self.drain.since.is_none() || self.workers_hold() == 0) {
            timeout
        } else {
            // A producer may end a connection without waking the loop.
            Some(timeout.map_or(QUIET_CLOSE_DELAY, |t| t.min(QUIET_CLOSE_DELAY)))
        }
    }

    /// Connections workers hold (see `doorway`), or handed over and not taken in yet.
    fn workers_hold(&self) -> usize {
        self.doorway.as_ref().map_or(0, |door| door.held())
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
