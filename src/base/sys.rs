//! The one way raw system calls are checked: a libc call's `-1` becomes the `errno` it set,
//! as an [`io::Error`] ([`check`]), with [`retry`] for calls a signal may interrupt. Every
//! `unsafe` libc call in the crate goes through one of them, except the few whose failure
//! has nowhere to go (a write from a signal handler), which say so where they are made.
//! Also the names of signals, for log lines.

use std::ffi::CStr;
use std::io;

/// A system call's return type, whose `-1` means failure (the reason is in `errno`).
pub trait SysResult: Copy + PartialEq {
    /// The failure value.
    const FAILED: Self;
}

impl SysResult for i32 {
    const FAILED: i32 = -1;
}

impl SysResult for isize {
    const FAILED: isize = -1;
}

impl SysResult for i64 {
    const FAILED: i64 = -1;
}

/// `result` of a system call, or the error it reported.
pub fn check<T: SysResult>(result: T) -> io::Result<T> {
    if result == T::FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Makes the system call `call` makes until a signal does not interrupt it (`EINTR`).
pub fn retry<T: SysResult>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match check(call()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The effective user id of this process.
pub fn euid() -> libc::uid_t {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// How many threads this process has (1 when that cannot be read).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |entries| entries.count())
}

/// Runs `fork` (fork(2), or a fork done through an interpreter) with every signal blocked,
/// so that none is taken in the child before it has put its own handlers in place. The
/// parent's mask is restored; the child starts with every signal blocked and opens them with
/// [`unblock_signals`] once it is ready. Block as late as possible: whatever `fork` waits for
/// first (an interpreter's lock) should be taken before calling this.
pub fn fork_with_signals_blocked(fork: impl FnOnce() -> io::Result<libc::pid_t>) -> io::Result<libc::pid_t> {
    let previous = set_signal_mask(&signal_set(true));
    let forked = fork();
    if !matches!(forked, Ok(0)) {
        set_signal_mask(&previous);
    }
    forked
}

/// Unblocks every signal of the calling thread (a child of [`fork_with_signals_blocked`]).
pub fn unblock_signals() {
    set_signal_mask(&signal_set(false));
}

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

/// Gives every child forked from now on the default actions for the signals this program
/// catches. The app may fork (`multiprocessing`'s fork start method, the default before
/// Python 3.14, or `os.fork()`), and the child would otherwise run the server's handlers,
/// which write to the server's own pipes: a pool's SIGTERM to its worker process, as
/// `Pool.terminate()` sends, reached the server as its own and made it drain and exit. This
/// program's own forks put their handlers back themselves. Call it once.
pub fn default_signals_in_forked_children() -> io::Result<()> {
    // SAFETY: the child handler only calls signal(2), which is async-signal-safe, so it may
    // run in the child of a process with other threads.
    match unsafe { libc::pthread_atfork(None, None, Some(caught_signals_to_default)) } {
        0 => Ok(()),
        error => Err(io::Error::from_raw_os_error(error)),
    }
}

extern "C" fn caught_signals_to_default() {
    for signal in CAUGHT {
        // SAFETY: signal(2) is async-signal-safe and restoring a default action has no
        // memory-safety requirement; it cannot fail for these signals.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
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

/// The conventional name of a signal (`SIGTERM`), when it is one of the common ones.
pub fn signal_abbrev(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}

/// The name of a signal, for log lines (`signal 9 (SIGKILL)`), or its number.
pub fn signal_name(signal: i32) -> String {
    if let Some(abbrev) = signal_abbrev(signal) {
        return format!("signal {signal} ({abbrev})");
    }
    // SAFETY: strsignal returns a pointer to a NUL-terminated string (or NULL), valid until
    // the next call in this thread; it is copied at once.
    let name = unsafe { libc::strsignal(signal) };
    if name.is_null() {
        return format!("signal {signal}");
    }
    // SAFETY: non-NULL, NUL-terminated, see above.
    let described = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    if described.is_empty() {
        format!("signal {signal}")
    } else {
        format!("signal {signal} ({described})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_errno_and_interruptions_are_retried() {
        // SAFETY: closing a descriptor number that is not open only fails.
        let closed = check(unsafe { libc::close(-1) });
        assert_eq!(closed.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(check(0i32).unwrap(), 0);
        assert_eq!(check(12isize).unwrap(), 12);
        let mut calls = 0;
        let result = retry(|| {
            calls += 1;
            if calls < 3 {
                // SAFETY: setting errno, as an interrupted call would.
                unsafe { *libc::__errno_location() = libc::EINTR };
                -1i32
            } else {
                7
            }
        });
        assert_eq!((result.unwrap(), calls), (7, 3));
    }

    #[test]
    fn signals_have_names() {
        assert_eq!(signal_name(libc::SIGKILL), "signal 9 (SIGKILL)");
        assert!(signal_name(libc::SIGRTMIN() + 1).starts_with("signal "));
    }
}
