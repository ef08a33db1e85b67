//! Forks: this program's own (a master making its workers), and the app's (`os.fork()`,
//! `multiprocessing`'s fork start method, the default before Python 3.14), whose children
//! must not act as the server. Once [`guard_app_forks`] has run, every forked child gets the
//! default actions for the signals the server catches: the server's handlers write to its
//! own pipes, so a pool's SIGTERM to its worker process (as `Pool.terminate()` sends)
//! reached the server as its own and made it drain and exit. A child the app forks also gets
//! /dev/null in place of the server's listening sockets: held open there, they kept taking
//! connections for a server that had stopped accepting, and a frontend's connect hung
//! instead of being refused.

use std::io;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The signals this program catches, in a worker or a master.
const CAUGHT: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGCHLD,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Set while this program forks one of its own processes, which keep the sockets.
static OWN_FORK: AtomicBool = AtomicBool::new(false);
/// /dev/null, put over the [`HIDDEN`] descriptors in the app's children.
static DEV_NULL: AtomicI32 = AtomicI32::new(-1);
/// Descriptors the app's children must not hold (-1: a free slot).
static HIDDEN: [AtomicI32; 4] = [const { AtomicI32::new(-1) }; 4];

/// Registers the fork handler described in the module doc. Call it once, before anything
/// may fork.
pub fn guard_app_forks() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    DEV_NULL.store(null.into_raw_fd(), Ordering::Relaxed);
    // SAFETY: the child handler only calls signal(2) and dup2(2), which are
    // async-signal-safe, so it may run in the child of a process with other threads.
    match unsafe { libc::pthread_atfork(None, None, Some(in_the_child)) } {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

/// Keeps listening socket `fd` from the children the app forks: they get /dev/null there.
/// (There are slots for the request listener and the metrics endpoint's, and two to spare.)
pub fn hide_from_app_forks(fd: RawFd) {
    let _ = HIDDEN.iter().any(|slot| {
        slot.compare_exchange(-1, fd, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    });
}

/// The child side of every fork (see the module doc).
extern "C" fn in_the_child() {
    for signal in CAUGHT {
        // SAFETY: signal(2) is async-signal-safe and restoring a default action has no
        // memory-safety requirement; it cannot fail for these signals.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let null = DEV_NULL.load(Ordering::Relaxed);
    if OWN_FORK.load(Ordering::Relaxed) || null < 0 {
        return;
    }
    for slot in &HIDDEN {
        let fd = slot.load(Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: dup2(2) is async-signal-safe and takes only descriptor numbers; `fd`
            // becomes /dev/null in this child alone (and if it was closed meanwhile, it is
            // /dev/null from here on, which harms nothing). A failure leaves the socket as
            // it was: there is nowhere to report it from here.
            unsafe { libc::dup2(null, fd) };
        }
    }
}

/// Runs `fork` (fork(2), or a fork done through an interpreter) as one of this program's own:
/// the child keeps the listening sockets. Every signal is blocked meanwhile, so that none is
/// taken in the child before it has put its own handlers in place. The parent's mask is
/// restored; the child starts with every signal blocked and opens them with
/// [`unblock_signals`] once it is ready. Block as late as possible: whatever `fork` waits for
/// first (an interpreter's lock) should be taken before calling this.
pub fn fork_with_signals_blocked(fork: impl FnOnce() -> io::Result<libc::pid_t>) -> io::Result<libc::pid_t> {
    let previous = set_signal_mask(&signal_set(true));
    OWN_FORK.store(true, Ordering::Relaxed);
    let forked = fork();
    OWN_FORK.store(false, Ordering::Relaxed);
    if !matches!(forked, Ok(0)) {
        set_signal_mask(&previous);
    }
    forked
}

/// Unblocks every signal of the calling thread (a child of [`fork_with_signals_blocked`]).
pub fn unblock_signals() {
    set_signal_mask(&signal_set(false));
}

/// Sets the calling thread's blocked signals to `set`, returning the ones blocked before.
fn set_signal_mask(set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid; both pointers are to live sigset_t values. With a
    // valid `how` and set, sigprocmask cannot fail.
    unsafe {
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, set, &mut previous);
        previous
    }
}

/// The set of all signals (`all`) or of none.
fn signal_set(all: bool) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is valid, and filled or emptied in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if all {
            libc::sigfillset(&mut set);
        } else {
            libc::sigemptyset(&mut set);
        }
        set
    }
}
