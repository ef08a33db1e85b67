//! The pre-fork master (`--processes N`, N > 1): it holds the listening socket, forks worker
//! processes that each run the whole single-process server (event loop and Python), restarts
//! workers that die, reloads on SIGHUP, drains on SIGTERM. It never initialises Python.
//!
//! Workers talk back through one pipe shared by all of them: five-byte messages (a kind byte
//! and the sender's pid), which the kernel writes atomically (under `PIPE_BUF`).
//!
//! Signals to the master: SIGTERM/SIGINT drain every worker (bounded by --graceful-timeout),
//! a second one or SIGQUIT stops them at once; SIGHUP starts a fresh set of workers (which
//! import the app anew) and, once all of them are ready, lets the old ones finish and exit;
//! SIGUSR1 is passed on to the workers (they reopen the access log).

use std::io;
use std::os::fd::RawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::listen::Listener;
use crate::setup::signal_name;
use crate::{error, info, warning};

/// Extra time past --graceful-timeout before a worker that has not exited is killed.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long workers told to stop at once get before they are killed.
const QUIT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between restarts of a worker that keeps failing at start-up.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A worker's message to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The app is loaded and the worker accepts connections.
    Ready = b'U' as isize,
    /// The worker reached --max-requests: replace it.
    Recycle = b'R' as isize,
    /// A request ran past --request-timeout: replace the worker.
    Hung = b'T' as isize,
}

/// Write end of the pipe to the master, in a worker; -1 without a master.
static MASTER_PIPE: AtomicI32 = AtomicI32::new(-1);
/// Write end of the master's signal pipe; -1 in a worker.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Whether this process is a worker under a master.
pub fn has_master() -> bool {
    MASTER_PIPE.load(Ordering::Relaxed) >= 0
}

/// Tells the master something; `false` without a master (a single process).
pub fn tell_master(message: Message) -> bool {
    let fd = MASTER_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return false;
    }
    let mut bytes = [0u8; 5];
    bytes[0] = message as u8;
    bytes[1..].copy_from_slice(&std::process::id().to_le_bytes());
    loop {
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n == bytes.len() as isize {
            return true;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        error!(
            "server",
            "cannot reach the master process: {}",
            io::Error::last_os_error()
        );
        return true;
    }
}

/// Asks to be replaced: the master starts a replacement; this process stops accepting at
/// once and drains as on SIGTERM (so it takes no more than a few requests past its limit).
/// Without a master, whatever started the process (callscgi, systemd) starts a fresh one.
pub fn request_replacement(message: Message) {
    if !tell_master(message) {
        info!(
            "server",
            "no master process (--processes 1): finishing open requests and exiting"
        );
    }
    // Under a master the worker gets SIGTERM from it too, which only continues the drain.
    REPLACING.store(true, std::sync::atomic::Ordering::Relaxed);
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

/// Set when this process sent itself SIGTERM to be replaced (see [`request_replacement`]).
static REPLACING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a SIGTERM came from this process asking to be replaced, not from someone stopping it.
pub fn replacing() -> bool {
    REPLACING.load(std::sync::atomic::Ordering::Relaxed)
}

/// What [`run`] returns: the master's exit, or, in a freshly forked worker, the listener to
/// serve on (the caller then runs the single-process server).
pub enum Role {
    /// This is the master, and it is done.
    Master(ExitCode),
    /// This is a new worker process.
    Worker(Listener),
}

/// Settings of the master.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Number of workers to keep running.
    pub processes: usize,
    /// How long draining workers get.
    pub graceful_timeout: Duration,
    /// Forward SIGUSR1 to the workers (there is an access log to reopen).
    pub forward_usr1: bool,
}

#[derive(Debug)]
struct Worker {
    pid: libc::pid_t,
    generation: u64,
    ready: bool,
    /// Set once the worker was told to stop: when to kill it if it has not exited.
    kill_at: Option<Instant>,
}

struct Master {
    plan: Plan,
    listener: Option<Listener>,
    workers: Vec<Worker>,
    generation: u64,
    reloading: bool,
    ever_ready: bool,
    start_failures: u32,
    next_start: Option<Instant>,
    stopping: bool,
    exit_code: u8,
    signal_read: RawFd,
    message_read: RawFd,
    message_write: RawFd,
}

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // Only write(2) here: it is async-signal-safe. A full pipe loses nothing that matters.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}

const MASTER_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGUSR1,
];

fn set_handler(signal: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

/// Runs the master until it is told to stop; in each forked worker, returns
/// [`Role::Worker`] instead.
pub fn run(plan: Plan, listener: Listener) -> Role {
    let set_up = (|| {
        let (signal_read, signal_write) = pipe()?;
        let (message_read, message_write) = pipe()?;
        // Workers block on a full pipe rather than lose a message.
        unsafe {
            let flags = libc::fcntl(message_write, libc::F_GETFL);
            libc::fcntl(message_write, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
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
            return Role::Master(ExitCode::from(1));
        }
    };
    let mut master = Master {
        plan,
        listener: Some(listener),
        workers: Vec::new(),
        generation: 1,
        reloading: false,
        ever_ready: false,
        start_failures: 0,
        next_start: None,
        stopping: false,
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
                return Role::Master(ExitCode::from(self.exit_code));
            }
            let mut fds = [
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
            let timeout = self
                .next_deadline()
                .map(|t| {
                    let left = t.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                    left.as_millis().min(60_000) as libc::c_int
                })
                .unwrap_or(60_000);
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                error!("server", "master: poll failed: {}", io::Error::last_os_error());
                return Role::Master(ExitCode::from(1));
            }
            self.read_messages();
            self.read_signals();
            self.reap();
            self.enforce_kill_deadlines();
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.workers
            .iter()
            .filter_map(|w| w.kill_at)
            .chain(self.next_start.filter(|_| !self.stopping))
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
        let current = self
            .workers
            .iter()
            .filter(|w| w.generation == self.generation && w.kill_at.is_none())
            .count();
        for _ in current..self.plan.processes {
            // Signals wait until the child has dropped the master's handlers: one arriving in
            // between would otherwise be written to the master's signal pipe as its own.
            let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
            let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
            unsafe {
                libc::sigfillset(&mut all);
                libc::sigprocmask(libc::SIG_SETMASK, &all, &mut previous);
            }
            let pid = unsafe { libc::fork() };
            if pid != 0 {
                unsafe { libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
            }
            match pid {
                0 => return Some(self.become_worker()),
                -1 => {
                    let e = io::Error::last_os_error();
                    error!("server", "cannot start a worker process: {e}; retrying in 1 s");
                    self.next_start = Some(Instant::now() + Duration::from_secs(1));
                    return None;
                }
                pid => {
                    crate::debug!("server", "started worker {pid}");
                    self.workers.push(Worker {
                        pid,
                        generation: self.generation,
                        ready: false,
                        kill_at: None,
                    });
                }
            }
        }
        None
    }

    /// In the child right after fork: drop everything of the master, keep the listener.
    fn become_worker(&mut self) -> Listener {
        unsafe {
            for signal in MASTER_SIGNALS {
                libc::signal(signal, libc::SIG_DFL);
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            let signal_write = SIGNAL_PIPE.swap(-1, Ordering::Relaxed);
            libc::close(signal_write);
            libc::close(self.signal_read);
            libc::close(self.message_read);
            // A terminal's Ctrl-C goes to the master, which passes the stop on: a worker
            // hit by both would take the second as "stop at once".
            libc::setpgid(0, 0);
            // If the master dies, drain and exit rather than serve on unsupervised.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        }
        MASTER_PIPE.store(self.message_write, Ordering::Relaxed);
        let mut listener = self.listener.take().expect("the master holds the listener");
        listener.forget_socket_file();
        listener
    }

    fn read_signals(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            let n = unsafe { libc::read(self.signal_read, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
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
                let name = crate::setup::signal_abbrev(signal).unwrap_or("SIGTERM");
                info!(
                    "server",
                    "{name}: stopping {} worker(s); they finish open requests (up to {:.0} s)",
                    self.workers.len(),
                    self.plan.graceful_timeout.as_secs_f64()
                );
                self.stopping = true;
                self.stop_listening();
                let pids: Vec<_> = self.workers.iter().map(|w| w.pid).collect();
                for pid in pids {
                    self.retire(pid);
                }
            }
            libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => {
                info!("server", "stopping {} worker(s) at once", self.workers.len());
                self.stopping = true;
                self.stop_listening();
                let deadline = Instant::now() + QUIT_GRACE;
                for worker in &mut self.workers {
                    unsafe { libc::kill(worker.pid, libc::SIGQUIT) };
                    worker.kill_at = Some(worker.kill_at.map_or(deadline, |t| t.min(deadline)));
                }
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
            libc::SIGUSR1 if self.plan.forward_usr1 => {
                info!("server", "SIGUSR1: workers reopen the access log");
                for worker in &self.workers {
                    unsafe { libc::kill(worker.pid, libc::SIGUSR1) };
                }
            }
            _ => {}
        }
    }

    /// Tells a worker to finish what it has and exit, and sets when to kill it otherwise.
    fn retire(&mut self, pid: libc::pid_t) {
        let deadline = Instant::now() + self.plan.graceful_timeout + KILL_GRACE;
        if let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) {
            if worker.kill_at.is_none() {
                worker.kill_at = Some(deadline);
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }

    fn read_messages(&mut self) {
        let mut buf = [0u8; 5];
        loop {
            let n = unsafe { libc::read(self.message_read, buf.as_mut_ptr().cast(), buf.len()) };
            if n != 5 {
                return;
            }
            let pid = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as libc::pid_t;
            if !self.workers.iter().any(|w| w.pid == pid) {
                continue;
            }
            match buf[0] {
                b'U' => self.on_ready(pid),
                b'R' if !self.stopping => {
                    info!("server", "worker {pid} reached --max-requests; replacing it");
                    self.retire(pid);
                }
                b'T' if !self.stopping => {
                    warning!(
                        "server",
                        "worker {pid} has a request past --request-timeout; replacing it"
                    );
                    self.retire(pid);
                }
                _ => {}
            }
        }
    }

    fn on_ready(&mut self, pid: libc::pid_t) {
        let Some(worker) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        worker.ready = true;
        self.ever_ready = true;
        self.start_failures = 0;
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
                self.retire(pid);
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(index) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let worker = self.workers.swap_remove(index);
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
                crate::debug!("server", "worker {pid} finished and exited");
            } else {
                warning!("server", "worker {pid}, told to stop, {how}");
            }
            return;
        }
        if self.stopping {
            info!("server", "worker {pid} {how}");
            return;
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
                unsafe { libc::kill(worker.pid, libc::SIGQUIT) };
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
                unsafe { libc::kill(worker.pid, libc::SIGKILL) };
                // Reaping will remove it; do not kill it again meanwhile.
                worker.kill_at = Some(now + Duration::from_secs(3600));
            }
        }
    }
}
