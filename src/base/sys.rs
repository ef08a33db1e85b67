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

/// The actions of some signals, saved to be put back (see [`SignalActions::restore_changed`]).
pub struct SignalActions(Vec<(libc::c_int, libc::sigaction)>);

impl SignalActions {
    /// The current actions of those of `signals` that have a handler now (not the default
    /// action, not ignored).
    pub fn save(signals: &[libc::c_int]) -> SignalActions {
        let mut saved = Vec::new();
        for &signal in signals {
            // SAFETY: a zeroed sigaction is valid to be filled in; a null new action only
            // reads the current one.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `action` is a live sigaction to write into.
            let read = check(unsafe { libc::sigaction(signal, std::ptr::null(), &mut action) });
            if read.is_ok() && action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN {
                saved.push((signal, action));
            }
        }
        SignalActions(saved)
    }

    /// Puts back every saved action that something has changed since (an app that set its
    /// own handler at import), and returns those signals.
    pub fn restore_changed(&self) -> Vec<libc::c_int> {
        let mut restored = Vec::new();
        for (signal, saved) in &self.0 {
            // SAFETY: as in `save`.
            let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: `now` is a live sigaction to write into.
            if check(unsafe { libc::sigaction(*signal, std::ptr::null(), &mut now) }).is_err() {
                continue;
            }
            if now.sa_sigaction != saved.sa_sigaction {
                // SAFETY: `saved` is an action this process had installed for `signal`.
                if check(unsafe { libc::sigaction(*signal, saved, std::ptr::null_mut()) }).is_ok() {
                    restored.push(*signal);
                }
            }
        }
        restored
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
