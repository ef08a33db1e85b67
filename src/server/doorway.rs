//! The doorway: idle worker threads accept connections themselves and serve the requests
//! that came whole with them, so a request the workers keep up with costs one thread no
//! hand-off at all. Everything else goes to the event loop: a connection whose request is
//! not all there, a response the socket does not take at once, one that must end gently.
//!
//! The listening socket is watched by two epoll sets: the doorway's, where idle workers wait,
//! and the loop's. Both watch it with `EPOLLEXCLUSIVE`, the doorway's first, so the kernel
//! hands each new connection to a waiting worker when there is one and wakes the loop only
//! when none waits. While workers are all busy, the loop leaves new connections in the
//! backlog for them (doorway mode); when they stay busy past a grace period, the worker
//! pool's monitor lets the loop accept again (loop mode) until a worker is idle once more.
//!
//! Who accepts, in one place: workers accept only where requests come whole with their
//! connection, a TCP listener that defers accepting until the first bytes arrive
//! ([`Doorway::for_listener`]; elsewhere they would mostly hand connections on to the loop),
//! and only when the dispatcher takes the doorway up (`Dispatcher::set_doorway`: the worker
//! pool does, with two threads or more and not under rplex, whose responses outlive the app
//! call). Otherwise the loop accepts every connection. Either side stops accepting at once
//! when the process asks to be replaced (`process::replacing`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::timers::WATCH_AFTER;
use crate::base::config::Limits;
use crate::base::process;
use crate::base::sys;
use crate::net::conn::{Conn, ReadOutcome, HEAD_READ};
use crate::net::listen::{admitted, Listener, Stream};
use crate::seam::notifier::{ConnId, Notifier};
use crate::seam::outbox::Outbox;
use crate::seam::request::Request;

/// How long workers leave accepting to the loop when they may not take a connection that
/// waits (see [`Doorway::step_aside`]).
const STEP_ASIDE: Duration = Duration::from_millis(100);

const KICK: u64 = 1;
const LISTENER: u64 = 2;

/// A connection a worker hands to the loop: fresh (with what its first read brought) or
/// with its request running and its response needing the loop.
pub enum Handed {
    /// Its request is not all in (or is refused, or the client left): the loop goes on from
    /// this read.
    Fresh(Conn, ReadOutcome),
    /// Its request runs (or ran); its outbox now notifies the loop.
    Running(Conn),
}

/// Why a worker waiting in the doorway woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Work was queued for the workers (or the doorway closed).
    Kicked,
    /// The listener has a connection.
    Connection,
    /// The wait timed out.
    Timeout,
}

/// See the module documentation.
pub struct Doorway {
    epoll: OwnedFd,
    /// A duplicate of the loop's listener, so that accepting from it never races the loop
    /// closing its own; `None` once the doorway has closed.
    listener: Mutex<Option<OwnedFd>>,
    kick: OwnedFd,
    limits: Limits,
    notifier: Arc<Notifier>,
    handed: Mutex<Vec<Handed>>,
    /// Serial numbers of the connections workers accept (apart from the loop's).
    serial: AtomicU64,
    /// Connections workers hold, and those handed to the loop and not yet taken in.
    held: AtomicUsize,
    /// Connections the loop holds, as it last said (before accepting, one more).
    loop_held: AtomicUsize,
    /// The loop accepts as well (the workers have been busy past the grace period).
    loop_mode: AtomicBool,
    /// Loop mode came on since the loop last looked (see [`Doorway::take_loop_call`]).
    loop_called: AtomicBool,
    open: AtomicBool,
    /// For the first read of a connection a worker accepts.
    scratch: Mutex<Vec<u8>>,
    /// Workers stay out of the doorway until then (see [`Doorway::step_aside`]).
    starved: AtomicBool,
    starved_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Doorway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorway")
            .field("held", &self.held)
            .field("loop_mode", &self.loop_mode)
            .finish()
    }
}

impl Doorway {
    /// A doorway on `listener` when workers may accept there: a TCP listener that defers
    /// accepting until a connection's first bytes arrive (see the module documentation).
    pub fn for_listener(
        listener: &Listener,
        limits: &Limits,
        notifier: &Arc<Notifier>,
    ) -> io::Result<Option<Doorway>> {
        if !matches!(listener, Listener::Tcp(_)) || listener.accept_deferral().is_zero() {
            return Ok(None);
        }
        Doorway::new(listener.raw_fd(), limits.clone(), Arc::clone(notifier)).map(Some)
    }

    /// A doorway on `listener` (the loop's; it is duplicated). The caller then adds the
    /// listener to the loop's epoll set with [`Doorway::watch_in`], after this one.
    pub fn new(listener: RawFd, limits: Limits, notifier: Arc<Notifier>) -> io::Result<Doorway> {
        // SAFETY: plain system calls; every descriptor returned is owned at once.
        unsafe {
            let epoll = OwnedFd::from_raw_fd(sys::check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let dup = OwnedFd::from_raw_fd(sys::check(libc::fcntl(listener, libc::F_DUPFD_CLOEXEC, 0))?);
            let kick = OwnedFd::from_raw_fd(sys::check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE,
            ))?);
            // Level-triggered: a connection a worker could not take yet is reported again.
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
                u64: LISTENER,
            };
            sys::check(libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                dup.as_raw_fd(),
                &mut event,
            ))?;
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: KICK,
            };
            sys::check(libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                kick.as_raw_fd(),
                &mut event,
            ))?;
            Ok(Doorway {
                epoll,
                listener: Mutex::new(Some(dup)),
                kick,
                limits,
                notifier,
                handed: Mutex::new(Vec::new()),
                serial: AtomicU64::new(1 << 62),
                held: AtomicUsize::new(0),
                loop_held: AtomicUsize::new(0),
                loop_mode: AtomicBool::new(false),
                loop_called: AtomicBool::new(false),
                open: AtomicBool::new(true),
                starved: AtomicBool::new(false),
                starved_until: Mutex::new(None),
                scratch: Mutex::new(vec![0; HEAD_READ]),
            })
        }
    }

    /// Adds `listener` to the epoll set `poller` (the loop's), behind the doorway's waiters,
    /// edge-triggered, reported as `token`.
    pub fn watch_in(poller: RawFd, listener: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
            u64: token,
        };
        // SAFETY: plain system call on descriptors the caller owns.
        sys::check(unsafe { libc::epoll_ctl(poller, libc::EPOLL_CTL_ADD, listener, &mut event) }).map(|_| ())
    }

    /// Takes `listener` out of the epoll set `poller` (added with [`Doorway::watch_in`], so
    /// not through mio, which would refuse: it did not register it).
    pub fn unwatch_in(poller: RawFd, listener: RawFd) {
        // SAFETY: plain system call on descriptors the caller owns. A failure means it was
        // not in the set: nothing to undo.
        let _ = sys::check(unsafe {
            libc::epoll_ctl(poller, libc::EPOLL_CTL_DEL, listener, std::ptr::null_mut())
        });
    }

    fn lock_listener(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.listener.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether workers may still accept.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn lock_starved(&self) -> MutexGuard<'_, Option<Instant>> {
        self.starved_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a worker may wait in the doorway now: it is open, and accepting has not just
    /// failed for lack of descriptors.
    pub fn accepting(&self) -> bool {
        if !self.is_open() {
            return false;
        }
        if !self.starved.load(Ordering::Acquire) {
            return true;
        }
        let mut until = self.lock_starved();
        if until.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        *until = None;
        self.starved.store(false, Ordering::Release);
        true
    }

    /// Stops the workers accepting (the process drains): every waiter wakes and leaves.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
        if let Some(listener) = self.lock_listener().take() {
            // SAFETY: both descriptors are open; the duplicate closes as it drops (which
            // takes it out of the set anyway, should this fail).
            let _ = sys::check(unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            });
        }
        self.kick_all();
    }

    /// Waits (without the GIL) until a connection comes, work is queued, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Woke {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `events` has room for the 2 events asked for.
        let waited =
            sys::check(unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, millis) });
        // A signal or an error ends the wait as a timeout does: the caller looks again.
        let n = match waited {
            Ok(n) if n > 0 => n,
            _ => return Woke::Timeout,
        };
        let mut woke = Woke::Timeout;
        for event in &events[..n as usize] {
            if event.u64 == KICK {
                let mut count = 0u64;
                // SAFETY: an eventfd read is 8 bytes into a u64. It fails (EAGAIN) only when
                // another waiter took the kick first, which is as good.
                let _ = sys::check(unsafe {
                    libc::read(self.kick.as_raw_fd(), (&mut count as *mut u64).cast(), 8)
                });
                return Woke::Kicked;
            }
            woke = Woke::Connection;
        }
        woke
    }

    /// Wakes one waiting worker: work was queued for it.
    pub fn kick(&self) {
        self.add_kicks(1);
    }

    /// Wakes every waiting worker (the pool stops, or the doorway closed).
    pub fn kick_all(&self) {
        self.add_kicks(1 << 20);
    }

    fn add_kicks(&self, count: u64) {
        // SAFETY: an eventfd write is 8 bytes from a u64. A full counter (it cannot be, in
        // practice) only means waiters are already woken.
        let _ = sys::check(unsafe { libc::write(self.kick.as_raw_fd(), (&count as *const u64).cast(), 8) });
    }

    /// Whether the loop accepts too.
    pub fn loop_mode(&self) -> bool {
        self.loop_mode.load(Ordering::Acquire)
    }

    /// Lets the loop accept (the workers stayed busy), or leaves accepting to idle workers
    /// again. Returns whether that changed.
    pub fn set_loop_mode(&self, on: bool) -> bool {
        let changed = self.loop_mode.swap(on, Ordering::AcqRel) != on;
        if changed && on {
            self.loop_called.store(true, Ordering::Release);
        }
        changed
    }

    /// Loop side: whether loop mode came on since the last call. The loop then accepts even
    /// if its registration on the listener is still there from before: the listener's
    /// wake-ups are exclusive, and a worker woken for a connection it did not take (it had to
    /// wait its turn) took the edge the loop would otherwise have seen.
    pub fn take_loop_call(&self) -> bool {
        // Looked at every loop round: read first, so the line the workers' counters share
        // is written only when the call is there.
        self.loop_called.load(Ordering::Acquire) && self.loop_called.swap(false, Ordering::AcqRel)
    }

    /// A connection waits that workers may not take (at the connection limit, or out of
    /// descriptors): the loop takes over accepting (loop mode), and workers stay away from
    /// the doorway for [`STEP_ASIDE`], as the connection would wake them again and again.
    fn step_aside(&self) {
        *self.lock_starved() = Some(Instant::now() + STEP_ASIDE);
        self.starved.store(true, Ordering::Release);
        if self.set_loop_mode(true) {
            self.notifier.wake();
        }
    }

    /// Loop side: whether it may take one more connection under `--max-connections`, given
    /// the `own` it holds. When it may, it is counted as held (say [`Doorway::loop_holds`]
    /// after the accept).
    pub fn loop_may_accept(&self, own: usize) -> bool {
        self.loop_held.store(own + 1, Ordering::SeqCst);
        if own + self.held.load(Ordering::SeqCst) >= self.limits.max_connections {
            self.loop_held.store(own, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Loop side: it holds `own` connections now.
    pub fn loop_holds(&self, own: usize) {
        self.loop_held.store(own, Ordering::SeqCst);
    }

    /// Loop side: takes the connections workers handed over. Each then counts as the loop's.
    pub fn take_handed(&self, into: &mut Vec<Handed>) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *handed, into);
    }

    /// Connections workers hold, and those handed over that the loop has not taken in.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Gives a connection to the loop (it stays counted as held until the loop takes it in).
    pub fn hand_over(&self, handed: Handed) {
        self.handed.lock().unwrap_or_else(|e| e.into_inner()).push(handed);
        self.notifier.wake();
    }

    /// A connection counted as held is no longer: its worker closed it, or the loop took it
    /// in (it is the loop's to count then).
    pub fn let_go(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    /// Worker side: accepts one connection and reads it. A request that came whole is
    /// returned, with its connection in the slot its outbox hands it to the loop from should
    /// the response need the loop. Anything else is handed to the loop, and `None` returned,
    /// as when there is no connection to take or the connection limit is reached.
    pub fn take(self: &Arc<Self>) -> Option<(Request, Direct)> {
        if process::replacing() {
            // This process asked to be replaced (--max-requests, --request-timeout): it takes
            // no more connections, even before its loop has begun the drain.
            self.close();
            return None;
        }
        let held = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        if held + self.loop_held.load(Ordering::SeqCst) > self.limits.max_connections {
            // At --max-connections: the loop leaves the rest in the backlog until a slot frees.
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.step_aside();
            return None;
        }
        let accepted = match self.lock_listener().as_ref() {
            // SAFETY: the descriptor is open while the lock is held.
            Some(listener) => sys::check(unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            }),
            None => Err(io::ErrorKind::WouldBlock.into()),
        };
        let accepted = match accepted {
            Ok(fd) => fd,
            Err(error) => {
                self.held.fetch_sub(1, Ordering::SeqCst);
                if !matches!(
                    error.raw_os_error(),
                    Some(libc::EAGAIN | libc::ECONNABORTED | libc::EINTR | libc::EPROTO) | None
                ) {
                    // Out of descriptors or memory: the loop logs it, backs off and retries.
                    self.step_aside();
                }
                return None;
            }
        };
        // SAFETY: accept4 returned a new descriptor, owned from here on.
        let stream = Stream::Tcp(unsafe { mio::net::TcpStream::from_raw_fd(accepted) });
        if !admitted(&stream, self.limits.allow_from.as_deref()) {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn::new(stream, serial, Instant::now());
        // One buffer for every worker (they rarely accept at the same moment), rather than
        // one per thread, of which there may be many.
        let outcome = {
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            conn.on_readable(&mut scratch, &self.limits, &mut || true)
        };
        if !matches!(outcome, ReadOutcome::Complete) {
            self.hand_over(Handed::Fresh(conn, outcome));
            return None;
        }
        let accepted_at = conn.accepted;
        let id = ConnId {
            key: usize::MAX,
            serial,
        };
        let request = conn.start_request(id, &self.notifier, self.limits.write_buffer);
        let outbox = Arc::clone(&request.outbox);
        let slot = Arc::new(Mutex::new(Some(conn)));
        let doorway = Arc::clone(self);
        let in_slot = Arc::clone(&slot);
        outbox.detach(Box::new(move || {
            let conn = in_slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(conn) = conn {
                doorway.hand_over(Handed::Running(conn));
            }
        }));
        Some((
            request,
            Direct {
                started: accepted_at,
                outbox,
                slot,
                doorway: Arc::clone(self),
            },
        ))
    }
}

/// A connection a worker accepted and serves, until it closes it or hands it to the loop.
pub struct Direct {
    /// When its connection was accepted (its request came whole with it).
    started: Instant,
    outbox: Arc<Outbox>,
    slot: Arc<Mutex<Option<Conn>>>,
    doorway: Arc<Doorway>,
}

impl Direct {
    /// After the app: closes the connection when its response went out whole and ended,
    /// otherwise gives it to the loop (to send the rest, linger, or reset it).
    #[inline(never)] // Its locals stay off the stack the app runs on (see handling::worker_main).
    pub fn finish(self) {
        if !self.outbox.ended_alone() {
            self.outbox.attach();
            return;
        }
        let Some(mut conn) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        // As the loop watches a request that runs this long (and so sees input sent past it),
        // look for such input before closing: closing over it would reset the connection,
        // and the client could lose the end of its response. The loop closes gently instead.
        if self.started.elapsed() >= WATCH_AFTER && unread_input(&conn) {
            conn.note_extra_input();
            self.doorway.hand_over(Handed::Running(conn));
            return;
        }
        drop(conn);
        self.doorway.let_go();
    }
}

/// Whether input waits in `conn`'s socket.
fn unread_input(conn: &Conn) -> bool {
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let asked = sys::check(unsafe { libc::ioctl(conn.stream.as_raw_fd(), libc::FIONREAD, &mut waiting) });
    asked.is_ok() && waiting > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seam::outbox::End;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_head: 64 * 1024,
            max_body: 1 << 20,
            body_buffer: 1 << 20,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections,
            write_buffer: 64 * 1024,
            max_queue: 10,
            allow_from: None,
        }
    }

    /// A doorway on a fresh listener (with the loop's poll it notifies), and the listener.
    fn doorway(max_connections: usize) -> (mio::Poll, TcpListener, Arc<Doorway>) {
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let notifier = Notifier::new(waker, Some(poll.as_raw_fd()));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let door = Doorway::new(listener.as_raw_fd(), limits(max_connections), notifier).unwrap();
        (poll, listener, Arc::new(door))
    }

    fn scgi(path: &str) -> Vec<u8> {
        let head = format!("CONTENT_LENGTH\0000\0SCGI\0001\0REQUEST_METHOD\0GET\0PATH_INFO\0{path}\0");
        format!("{}:{head},", head.len()).into_bytes()
    }

    /// A client that has sent `bytes`.
    fn client_sending(listener: &TcpListener, bytes: &[u8]) -> TcpStream {
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(bytes).unwrap();
        client
    }

    /// Takes a connection once the doorway reports it.
    fn take(door: &Arc<Doorway>) -> Option<(Request, Direct)> {
        assert_eq!(door.wait(Duration::from_secs(5)), Woke::Connection);
        door.take()
    }

    /// What the doorway has handed to the loop since it was last asked.
    fn handed(door: &Doorway) -> Vec<Handed> {
        let mut handed = Vec::new();
        door.take_handed(&mut handed);
        handed
    }

    #[test]
    fn a_whole_request_is_served_and_closed_by_the_worker_alone() {
        let (_poll, listener, door) = doorway(10);
        let mut client = client_sending(&listener, &scgi("/whole"));
        let (request, direct) = take(&door).expect("a whole request");
        assert_eq!(request.header(b"PATH_INFO"), Some(&b"/whole"[..]));
        assert_eq!(door.held(), 1);
        request
            .outbox
            .send(b"Status: 200 OK\r\n\r\nhi".to_vec(), Some(End::Complete))
            .unwrap();
        assert!(request.outbox.ended_alone(), "nothing for the loop to do");
        direct.finish();
        assert_eq!(door.held(), 0);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"Status: 200 OK\r\n\r\nhi");
        assert!(handed(&door).is_empty(), "the loop never heard of it");
    }

    #[test]
    fn a_partial_request_goes_to_the_loop_with_what_was_read() {
        let (_poll, listener, door) = doorway(10);
        let _client = client_sending(&listener, &scgi("/partial")[..10]);
        assert!(take(&door).is_none());
        match handed(&door).as_slice() {
            [Handed::Fresh(conn, ReadOutcome::Pending)] => assert_eq!(conn.bytes_received(), 10),
            _ => panic!("one fresh connection, waiting for more of its head"),
        }
        assert_eq!(door.held(), 1, "counted until the loop takes it in");
        door.let_go();
        assert_eq!(door.held(), 0);
    }

    #[test]
    fn a_response_the_socket_does_not_take_hands_the_connection_to_the_loop() {
        let (_poll, listener, door) = doorway(10);
        let _client = client_sending(&listener, &scgi("/big"));
        let (request, direct) = take(&door).expect("a whole request");
        // Far more than a loopback socket takes while the client reads nothing.
        let body = vec![b'x'; 32 << 20];
        request.outbox.send(body, Some(End::Complete)).unwrap();
        assert!(!request.outbox.ended_alone());
        assert!(
            matches!(handed(&door).as_slice(), [Handed::Running(_)]),
            "handed over as soon as output was queued"
        );
        // The worker then has nothing left to do with it.
        direct.finish();
        assert!(handed(&door).is_empty(), "handed over once");
    }

    #[test]
    fn at_the_connection_limit_connections_stay_in_the_backlog_for_the_loop() {
        let (_poll, listener, door) = doorway(1);
        door.loop_holds(1);
        let _client = client_sending(&listener, b"");
        assert!(take(&door).is_none());
        assert_eq!(door.held(), 0);
        assert!(door.loop_mode(), "the loop accepts when a slot frees");
        assert!(!door.accepting(), "workers stay away meanwhile");
        assert!(listener.accept().is_ok(), "still in the backlog");
    }

    #[test]
    fn loop_mode_coming_on_calls_the_loop_once() {
        let (_poll, _listener, door) = doorway(10);
        assert!(!door.take_loop_call());
        assert!(door.set_loop_mode(true));
        assert!(!door.set_loop_mode(true), "already on");
        assert!(door.take_loop_call());
        assert!(!door.take_loop_call(), "once");
        assert!(door.set_loop_mode(false));
        assert!(!door.take_loop_call(), "going off calls nobody");
    }

    #[test]
    fn a_kick_wakes_a_waiter_and_closing_wakes_them_all_for_good() {
        let (_poll, _listener, door) = doorway(10);
        assert_eq!(door.wait(Duration::from_millis(10)), Woke::Timeout);
        door.kick();
        assert_eq!(door.wait(Duration::from_secs(5)), Woke::Kicked);
        assert_eq!(
            door.wait(Duration::from_millis(10)),
            Woke::Timeout,
            "one kick, one wake-up"
        );
        door.close();
        assert!(!door.accepting());
        assert_eq!(door.wait(Duration::from_secs(5)), Woke::Kicked);
        assert!(door.take().is_none());
    }
}
