//! The pre-fork master (`--processes N`, N > 1): it holds the listening socket, forks worker
//! processes that each run the whole single-process server (event loop and Python), restarts
//! workers that die, reloads on SIGHUP, drains on SIGTERM. It never runs app code: the binary's
//! master never starts Python; the pip-installed command's master is the Python process that
//! started it, which never imports the app.
//!
//! Workers talk back through one pipe shared by all of them (see `base::process`).
//!
//! Signals to the master: SIGTERM/SIGINT drain every worker (bounded by --graceful-timeout),
//! a repeated SIGTERM continues that drain, a second SIGINT or SIGQUIT stops them at once; SIGHUP starts a fresh set of workers (which
//! import the app anew) and, once all of them are ready, lets the old ones finish and exit;
//! SIGUSR1 is passed on to the workers (they reopen the access log).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::metrics::{self, RestartReason, Restarts};
use super::metrics_http::Endpoint;
use crate::base::fork;
use crate::base::log::{debug, error, info, warning};
use crate::base::metrics::{Counters, SharedSlots};
use crate::base::process::{self, Message};
use crate::base::sys::{self, signal_name};
use crate::net::listen::Listener;

/// Extra time past --graceful-timeout before a worker that has not exited is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long workers told to stop at once get before they are killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between restarts of a worker that keeps failing at start-up.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Write end of the master's signal pipe; -1 in a worker.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// What [`run`] returns: the master's exit, or, in a freshly forked worker, the listener to
/// serve on (the caller then runs the single-process server).
pub enum Role {
    /// This is the master, and it is done.
    Master(u8),
    /// This is a new worker process.
    Worker(Listener),
}

/// Settings of the master.
pub struct Plan {
    /// Number of workers to keep running.
    pub processes: usize,
    /// How long draining workers get.
    pub graceful_timeout: Duration,
    /// Forward SIGUSR1 to the workers (there is an access log to reopen).
    pub forward_usr1: bool,
    /// The `--metrics` endpoint, which the master serves.
    pub metrics: Option<Endpoint>,
    /// Makes a worker process: [`plain_fork`], or for a master that runs inside a Python
    /// process, a fork that keeps that interpreter sound in the child. Called with no other
    /// thread in the process; returns 0 in the child, as fork(2) does, with every signal
    /// blocked there ([`fork::fork_with_signals_blocked`]).
    pub fork: fn() -> io::Result<libc::pid_t>,
}

/// fork(2), for a master with no interpreter in it.
pub fn plain_fork() -> io::Result<libc::pid_t> {
    fork::fork_with_signals_blocked(|| {
        // SAFETY: the master is single-threaded, so the child may run on (see
        // `Master::become_worker`).
        sys::check(unsafe { libc::fork() })
    })
}

#[derive(Debug)]
struct Worker {
    pid: libc::pid_t,
    generation: u64,
    ready: bool,
    /// Set once the worker was told to stop: when to kill it if it has not exited.
    kill_at: Option<Instant>,
    /// Its slot of the shared counters (with `--metrics`).
    slot: Option<usize>,
    /// It asked to be replaced (`--max-rss`, `--max-lifetime`) and serves on until its
    /// replacement is ready.
    recycle: Option<RestartReason>,
}

/// What the master keeps for `--metrics`: the endpoint, the workers' shared counters, the
/// counts of the workers gone, and its own count of restarts.
struct MasterMetrics {
    endpoint: Endpoint,
    slots: SharedSlots,
    retired: Box<Counters>,
    restarts: Restarts,
}

struct Master {
    plan: Plan,
    metrics: Option<MasterMetrics>,
    listener: Option<Listener>,
    workers: Vec<Worker>,
    generation: u64,
    reloading: bool,
    ever_ready: bool,
    start_failures: u32,
    next_start: Option<Instant>,
    stopping: bool,
    /// A SIGINT came: a second one (Ctrl-C twice) stops the workers at once.
    sigint_seen: bool,
    exit_code: u8,
    signal_read: RawFd,
    message_read: RawFd,
    message_write: RawFd,
}

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: only write(2) here, which is async-signal-safe, from a live local byte. A
        // full pipe loses nothing that matters: the master reads it empty anyway.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

const MASTER_SIGNALS: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn set_handler(signal: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only writes to a pipe (see `on_signal`).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is fully set; the old action is not asked for.
    sys::check(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
    Ok(())
}

fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    sys::check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    Ok((fds[0], fds[1]))
}

/// Sends `signal` to process `pid`. One that has exited meanwhile (and is reaped soon) is no
/// error worth reporting.
fn send_signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety requirement.
    let _ = sys::check(unsafe { libc::kill(pid, signal) });
}

/// The master's part of `--metrics`: the endpoint from the plan, and shared counters with a
/// slot for every worker there may be at once (a reload's old and new sets, and a few
/// replacements starting).
fn plan_metrics(plan: &mut Plan) -> io::Result<Option<MasterMetrics>> {
    let Some(endpoint) = plan.metrics.take() else {
        return Ok(None);
    };
    Ok(Some(MasterMetrics {
        endpoint,
        slots: SharedSlots::map(2 * plan.processes + 8)?,
        retired: Box::new(Counters::new()),
        restarts: Restarts::default(),
    }))
}

/// Runs the master until it is told to stop; in each forked worker, returns
/// [`Role::Worker`] instead.
pub fn run(mut plan: Plan, listener: Listener) -> Role {
    let set_up = (|| {
        let (signal_read, signal_write) = pipe()?;
        let (message_read, message_write) = pipe()?;
        // Workers block on a full pipe rather than lose a message.
        // SAFETY: fcntl on a descriptor just made; no memory is passed.
        let flags = sys::check(unsafe { libc::fcntl(message_write, libc::F_GETFL) })?;
        // SAFETY: as above.
        sys::check(unsafe { libc::fcntl(message_write, libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
        SIGNAL_PIPE.store(signal_write, Ordering::Relaxed);
        for signal in MASTER_SIGNALS {
            set_handler(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )?;
        }
        Ok::<_, io::Error>((signal_read, message_read, message_write))
    })();
    let (signal_read, message_read, message_write) = match set_up {
        Ok(fds) => fds,
        Err(e) => {
            error!("server", "cannot set up the master process: {e}");
            return Role::Master(1);
        }
    };
    let threads = sys::thread_count();
    if threads > 1 {
        // Only the forking thread lives on in a child: a lock another one held stays held.
        warning!(
            "server",
            "the master process has {threads} threads (something started at import?): a worker forked now may hang on a lock one of them held"
        );
    }
    let metrics = match plan_metrics(&mut plan) {
        Ok(metrics) => metrics,
        Err(e) => {
            error!("server", "cannot set up the shared counters for --metrics: {e}");
            return Role::Master(1);
        }
    };
    let mut master = Master {
        plan,
        metrics,
        listener: Some(listener),
        workers: Vec::new(),
        generation: 1,
        reloading: false,
        ever_ready: false,
        start_failures: 0,
        next_start: None,
        stopping: false,
        sigint_seen: false,
        exit_code: 0,
        signal_read,
        message_read,
        message_write,
    };
    info!(
        "server",
        "master process {} starting {} workers on {}",
        std::process::id(),
        master.plan.processes,
        master
            .listener
            .as_ref()
            .map(Listener::describe)
            .unwrap_or_default()
    );
    master.main_loop()
}

impl Master {
    fn main_loop(&mut self) -> Role {
        loop {
            if let Some(listener) = self.keep_workers() {
                return Role::Worker(listener);
            }
            if self.stopping && self.workers.is_empty() {
                info!("server", "all workers have exited; master exiting");
                return Role::Master(self.exit_code);
            }
            let mut fds = vec![
                libc::pollfd {
                    fd: self.signal_read,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.message_read,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if let Some(metrics) = &self.metrics {
                metrics.endpoint.poll_fds(&mut fds);
            }
            let timeout = self
                .next_deadline()
                .map(|t| {
                    let left = t.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                    left.as_millis().min(60_000) as libc::c_int
                })
                .unwrap_or(60_000);
            // SAFETY: `fds` holds `fds.len()` pollfd entries.
            match sys::check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) }) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                    error!("server", "master: poll failed: {e}");
                    return Role::Master(1);
                }
                _ => {}
            }
            self.read_messages();
            self.read_signals();
            self.reap();
            self.enforce_kill_deadlines();
            if let Some(m) = &mut self.metrics {
                m.endpoint
                    .serve(&mut || metrics::render_master(&m.slots, &m.retired, &m.restarts));
            }
        }
    }

    /// Counts a worker's replacement, for the metrics.
    fn count_restart(&mut self, reason: RestartReason) {
        if let Some(metrics) = &mut self.metrics {
            metrics.restarts.count(reason);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| w.kill_at)
            .chain(self.next_start.filter(|_| !self.stopping))
            .chain(self.metrics.as_ref().and_then(|m| m.endpoint.next_deadline()))
            .min()
    }

    /// Starts workers until the current generation has its number; returns the listener in
    /// a newly forked worker.
    fn keep_workers(&mut self) -> Option<Listener> {
        if self.stopping {
            return None;
        }
        if self.next_start.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        self.next_start = None;
        // A worker that asked to be replaced serves on, but counts as gone: its replacement
        // starts now.
        let current = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && w.kill_at.is_none() && w.recycle.is_none())
            .count();
        for _ in current..self.plan.processes {
            let slot = self.metrics.as_ref().and_then(|m| m.slots.claim());
            // Signals wait until the child has dropped the master's handlers (the fork blocks
            // them): one arriving in between would be written to the master's signal pipe as
            // its own.
            match (self.plan.fork)() {
                Ok(0) => return Some(self.become_worker(slot)),
                Err(e) => {
                    if let (Some(m), Some(slot)) = (&self.metrics, slot) {
                        m.slots.unclaim(slot);
                    }
                    error!("server", "cannot start a worker process: {e}; retrying in 1 s");
                    self.next_start = Some(Instant::now() + Duration::from_secs(1));
                    return None;
                }
                Ok(pid) => {
                    debug!("server", "started worker {pid}");
                    if let (Some(m), Some(slot)) = (&self.metrics, slot) {
                        m.slots.assign(slot, pid);
                    }
                    self.workers.push(Worker {
                        pid,
                        generation: self.generation,
                        ready: false,
                        kill_at: None,
                        slot,
                        recycle: None,
                    });
                }
            }
        }
        None
    }

    /// In the child right after fork: drop everything of the master, keep the listener (and
    /// count into `slot` of the shared counters).
    fn become_worker(&mut self, slot: Option<usize>) -> Listener {
        if let Some(m) = self.metrics.take() {
            if let Some(slot) = slot {
                m.slots.use_slot(slot);
            }
            // The endpoint is the master's: its socket closes here, its file stays.
            m.endpoint.forget();
        }
        for signal in MASTER_SIGNALS {
            // SAFETY: restoring the default action has no memory-safety requirement.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        fork::unblock_signals();
        let signal_write = SIGNAL_PIPE.swap(-1, Ordering::Relaxed);
        for fd in [signal_write, self.signal_read, self.message_read] {
            // SAFETY: the master's own descriptors, which this process no longer uses.
            let _ = sys::check(unsafe { libc::close(fd) });
        }
        // A terminal's Ctrl-C goes to the master, which passes the stop on: a worker hit by
        // both would take the second as "stop at once".
        // SAFETY: no memory is passed. It fails only for a session leader, which a fork is not.
        let _ = sys::check(unsafe { libc::setpgid(0, 0) });
        // If the master dies, drain and exit rather than serve on unsupervised.
        // SAFETY: no memory is passed.
        let _ = sys::check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) });
        process::set_master_pipe(self.message_write);
        let mut listener = self.listener.take().expect("the master holds the listener");
        listener.forget_socket_file();
        listener
    }

    fn read_signals(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n = match sys::retry(|| unsafe {
                libc::read(self.signal_read, buf.as_mut_ptr().cast(), buf.len())
            }) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            for &signal in &buf[..n as usize] {
                self.on_signal(signal as libc::c_int);
            }
        }
    }

    /// The master's copy of the listening socket goes as the workers close theirs, so that new
    /// connections are refused rather than left waiting for nobody; a socket file is removed.
    fn stop_listening(&mut self) {
        self.listener = None;
    }

    fn on_signal(&mut self, signal: libc::c_int) {
        match signal {
            libc::SIGCHLD => {}
            libc::SIGTERM | libc::SIGINT if !self.stopping => {
                let name = sys::signal_abbrev(signal).unwrap_or("SIGTERM");
                info!(
                    "server",
                    "{name}: stopping {} worker(s); they finish open requests (up to {:.0} s)",
                    self.workers.len(),
                    self.plan.graceful_timeout.as_secs_f64()
                );
                self.stopping = true;
                self.sigint_seen = signal == libc::SIGINT;
                self.stop_listening();
                let pids: Vec<_> = self.workers.iter().map(|w| w.pid).collect();
                for pid in pids {
                    self.retire(pid);
                }
            }
            // Ctrl-C twice, or SIGQUIT: the workers stop at once.
            libc::SIGINT if self.sigint_seen => self.stop_at_once("SIGINT again"),
            libc::SIGQUIT => self.stop_at_once("SIGQUIT"),
            // A repeated SIGTERM (a service manager, or a supervisor that signals again) is the
            // same request: the workers go on finishing what they have.
            libc::SIGTERM | libc::SIGINT => {
                self.sigint_seen |= signal == libc::SIGINT;
                info!(
                    "server",
                    "{}: already stopping; {} worker(s) still finishing open requests (SIGQUIT stops them at once)",
                    sys::signal_abbrev(signal).unwrap_or("SIGTERM"),
                    self.workers.len()
                );
            }
            libc::SIGHUP if !self.stopping => {
                if self.reloading {
                    // Superseded before it took over: the workers of the last good generation
                    // keep serving until the newest set is ready.
                    let superseded: Vec<_> = self
                        .workers
                        .iter()
                        .filter(|w| w.generation == self.generation)
                        .map(|w| w.pid)
                        .collect();
                    for pid in superseded {
                        self.retire(pid);
                    }
                }
                self.generation += 1;
                self.reloading = true;
                self.start_failures = 0;
                self.next_start = None;
                info!(
                    "server",
                    "SIGHUP: starting {} new worker(s); the old ones stop once all new ones are ready",
                    self.plan.processes
                );
            }
            libc::SIGUSR2 => {
                // Workers still starting have no handler for it yet: it would end them.
                info!(
                    "server",
                    "SIGUSR2: the workers log the stacks of their running requests"
                );
                for worker in self.workers.iter().filter(|w| w.ready) {
                    send_signal(worker.pid, libc::SIGUSR2);
                }
            }
            libc::SIGUSR1 if self.plan.forward_usr1 => {
                info!("server", "SIGUSR1: workers reopen the access log");
                for worker in &self.workers {
                    send_signal(worker.pid, libc::SIGUSR1);
                }
            }
            _ => {}
        }
    }

    /// Tells every worker to stop at once (SIGQUIT), and kills those still there after a moment.
    fn stop_at_once(&mut self, why: &str) {
        info!(
            "server",
            "{why}: stopping {} worker(s) at once",
            self.workers.len()
        );
        self.stopping = true;
        self.stop_listening();
        let deadline = Instant::now() + QUIT_GRACE;
        for worker in &mut self.workers {
            send_signal(worker.pid, libc::SIGQUIT);
            worker.kill_at = Some(worker.kill_at.map_or(deadline, |t| t.min(deadline)));
        }
    }

    /// Tells a worker to finish what it has and exit, and sets when to kill it otherwise.
    fn retire(&mut self, pid: libc::pid_t) {
        let deadline = Instant::now() + self.plan.graceful_timeout + KILL_GRACE;
        if let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) {
            if worker.kill_at.is_none() {
                worker.kill_at = Some(deadline);
                send_signal(pid, libc::SIGTERM);
            }
        }
    }

    fn read_messages(&mut self) {
        let mut buf = [0u8; 5];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let read =
                sys::retry(|| unsafe { libc::read(self.message_read, buf.as_mut_ptr().cast(), buf.len()) });
            if read.ok() != Some(buf.len() as isize) {
                return;
            }
            let Some((message, pid)) = Message::decode(buf) else {
                continue;
            };
            let pid = pid as libc::pid_t;
            if !self.workers.iter().any(|w| w.pid == pid) {
                continue;
            }
            match message {
                Message::Ready => self.on_ready(pid),
                _ if self.stopping => {}
                Message::Recycle => {
                    info!("server", "worker {pid} reached --max-requests; replacing it");
                    self.count_restart(RestartReason::MaxRequests);
                    self.retire(pid);
                }
                Message::Hung => {
                    warning!(
                        "server",
                        "worker {pid} has a request past --request-timeout; replacing it"
                    );
                    self.count_restart(RestartReason::RequestTimeout);
                    self.retire(pid);
                }
                Message::MaxRss | Message::MaxLifetime => self.on_recycle_asked(pid, message),
            }
        }
    }

    /// A worker asked to be replaced for its memory or its age: it serves on until its
    /// replacement is ready (`keep_workers` starts it, `on_ready` retires the old one), so
    /// that the number of workers accepting never drops.
    fn on_recycle_asked(&mut self, pid: libc::pid_t, message: Message) {
        let (reason, limit) = match message {
            Message::MaxRss => (RestartReason::MaxRss, "--max-rss"),
            _ => (RestartReason::MaxLifetime, "--max-lifetime"),
        };
        let Some(worker) = self
            .workers
            .iter_mut()
            .find(|w| w.pid == pid && w.kill_at.is_none() && w.recycle.is_none())
        else {
            return;
        };
        worker.recycle = Some(reason);
        info!(
            "server",
            "worker {pid} passed {limit}; starting its replacement, and it stops once that one is ready"
        );
    }

    /// A new worker is ready: one that asked to be replaced may stop now.
    fn retire_one_recycled(&mut self, ready: libc::pid_t) {
        let old = self
            .workers
            .iter()
            .find(|w| w.pid != ready && w.kill_at.is_none() && w.recycle.is_some())
            .map(|w| (w.pid, w.recycle));
        if let Some((pid, Some(reason))) = old {
            info!(
                "server",
                "worker {ready} is ready; worker {pid} finishes its requests and exits"
            );
            self.count_restart(reason);
            self.retire(pid);
        }
    }

    fn on_ready(&mut self, pid: libc::pid_t) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        worker.ready = true;
        self.ever_ready = true;
        self.start_failures = 0;
        self.retire_one_recycled(pid);
        if !self.reloading || self.stopping {
            return;
        }
        let generation = self.generation;
        let fresh = self
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.kill_at.is_none());
        let (count, ready) = fresh.fold((0, 0), |(c, r), w| (c + 1, r + usize::from(w.ready)));
        if count >= self.plan.processes && ready == count {
            self.reloading = false;
            let old: Vec<_> = self
                .workers
                .iter()
                .filter(|w| w.generation < generation && w.kill_at.is_none())
                .map(|w| w.pid)
                .collect();
            info!(
                "server",
                "reload: {ready} new worker(s) ready; {} old worker(s) finish their requests and exit",
                old.len()
            );
            for pid in old {
                self.count_restart(RestartReason::Reload);
                self.retire(pid);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a live int for waitpid to fill.
            let pid = match sys::check(unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
                Ok(pid) if pid > 0 => pid,
                _ => return,
            };
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.swap_remove(index);
            if let (Some(m), Some(slot)) = (&self.metrics, worker.slot) {
                // Its counts join the retired ones: no counter goes backwards.
                m.slots.release(slot, &m.retired);
            }
            self.on_exit(worker, status);
        }
    }

    fn on_exit(&mut self, worker: Worker, status: libc::c_int) {
        let pid = worker.pid;
        let how = if libc::WIFSIGNALED(status) {
            format!("was killed by {}", signal_name(libc::WTERMSIG(status)))
        } else {
            format!("exited with status {}", libc::WEXITSTATUS(status))
        };
        // One told to stop before it could catch SIGTERM (still starting) simply ends by it.
        let clean = (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
            || (!worker.ready && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
        if worker.kill_at.is_some() {
            if clean {
                debug!("server", "worker {pid} finished and exited");
            } else {
                warning!("server", "worker {pid}, told to stop, {how}");
            }
            return;
        }
        if self.stopping {
            info!("server", "worker {pid} {how}");
            return;
        }
        if worker.ready {
            self.count_restart(RestartReason::Died);
        }
        if worker.ready && clean {
            // Someone else told it to stop (a service manager signalling every process).
            info!("server", "worker {pid} {how}; starting a replacement");
            return;
        }
        if worker.ready {
            error!("server", "worker {pid} {how}; starting a replacement");
            return;
        }
        self.count_restart(RestartReason::StartFailed);
        // It died while starting (importing the app, most likely).
        if self.reloading && worker.generation == self.generation {
            error!(
                "server",
                "reload failed: new worker {pid} {how} while starting; keeping the old workers"
            );
            self.reloading = false;
            let fresh: Vec<_> = self
                .workers
                .iter()
                .filter(|w| w.generation == self.generation)
                .map(|w| w.pid)
                .collect();
            for pid in fresh {
                self.retire(pid);
            }
            self.generation = self
                .workers
                .iter()
                .filter(|w| w.kill_at.is_none())
                .map(|w| w.generation)
                .max()
                .unwrap_or(self.generation);
            return;
        }
        if !self.ever_ready {
            error!(
                "server",
                "worker {pid} {how} while starting (see its messages above); stopping"
            );
            self.exit_code = 1;
            self.stopping = true;
            let deadline = Instant::now() + QUIT_GRACE;
            for worker in &mut self.workers {
                send_signal(worker.pid, libc::SIGQUIT);
                worker.kill_at = Some(deadline);
            }
            return;
        }
        self.start_failures += 1;
        let backoff =
            (Duration::from_millis(250) * 2u32.saturating_pow(self.start_failures.min(10))).min(MAX_BACKOFF);
        error!(
            "server",
            "worker {pid} {how} while starting; next start in {:.1} s",
            backoff.as_secs_f64()
        );
        self.next_start = Some(Instant::now() + backoff);
    }

    fn enforce_kill_deadlines(&mut self) {
        let now = Instant::now();
        for worker in &mut self.workers {
            if worker.kill_at.is_some_and(|t| t <= now) {
                warning!(
                    "server",
                    "worker {} did not exit in time; killing it (SIGKILL)",
                    worker.pid
                );
                send_signal(worker.pid, libc::SIGKILL);
                // Reaping will remove it; do not kill it again meanwhile.
                worker.kill_at = Some(now + Duration::from_secs(3600));
            }
        }
    }
}
