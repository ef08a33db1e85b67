//! A worker thread as the monitor sees it: whether it runs a request, and where a running
//! one is (on a CPU, on a lock, blocked in a system call).

use std::cell::RefCell;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// What a worker thread is doing, as the monitor sees it.
pub(super) const IDLE: u8 = 0;
pub(super) const RUNNING: u8 = 1;
/// Running a request, but waiting for its client to take output (without the GIL).
pub(super) const WAITING: u8 = 2;

/// A worker thread as the monitor sees it.
pub(super) struct WorkerSlot {
    pub(super) state: AtomicU8,
    /// The thread's id, as the kernel knows it.
    tid: libc::pid_t,
    /// The thread's id, as Python knows it (for its stack, see `watchdog::StackSource`).
    pub(super) ident: u64,
}

/// Where a running worker is, from its system call.
pub(super) enum Activity {
    /// On a CPU or ready for one.
    Computing,
    /// Waiting on a lock: the GIL, most likely.
    Lock,
    /// In any other blocking call: sleep, socket, pipe, disk.
    Blocked,
}

impl WorkerSlot {
    pub(super) fn for_current_thread() -> WorkerSlot {
        WorkerSlot {
            state: AtomicU8::new(IDLE),
            ident: super::watchdog::thread_ident(),
            // SAFETY: gettid has no preconditions.
            tid: unsafe { libc::gettid() },
        }
    }

    pub(super) fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }

    pub(super) fn activity(&self) -> Activity {
        // Opened for each look rather than kept: the server's descriptors stay its sockets and
        // files. Where there is no such file, the thread counts as computing, so requests run
        // one at a time unless they wait in our own waits (see `waiting_on_client`).
        let Ok(mut file) = File::open(format!("/proc/self/task/{}/syscall", self.tid)) else {
            return Activity::Computing;
        };
        let mut text = [0u8; 32];
        match file.read(&mut text) {
            Ok(n) => classify_syscall(&text[..n]),
            Err(_) => Activity::Computing,
        }
    }
}

/// Reads the first field of a `/proc/.../syscall` line: "running", "-1" (not in a system
/// call) or the number of the call the thread is blocked in.
fn classify_syscall(line: &[u8]) -> Activity {
    let first = line.split(|b| b.is_ascii_whitespace()).next().unwrap_or(b"");
    match std::str::from_utf8(first)
        .ok()
        .and_then(|f| f.parse::<libc::c_long>().ok())
    {
        Some(libc::SYS_futex) => Activity::Lock,
        Some(n) if n >= 0 => Activity::Blocked,
        _ => Activity::Computing,
    }
}

thread_local! {
    pub(super) static CURRENT_SLOT: RefCell<Option<Arc<WorkerSlot>>> = const { RefCell::new(None) };
}

/// Runs `wait`, a wait for the client made without the GIL, with the calling worker counted
/// as blocked, so the pool may let another request run meanwhile.
pub fn waiting_on_client<R>(wait: impl FnOnce() -> R) -> R {
    let slot = CURRENT_SLOT.with(|slot| slot.borrow().clone());
    if let Some(slot) = &slot {
        slot.set(WAITING);
    }
    let result = wait();
    if let Some(slot) = &slot {
        slot.set(RUNNING);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_calls_tell_computing_from_locked_from_blocked() {
        let futex = format!("{} 0x7f 0x89 0x0\n", libc::SYS_futex);
        let sleep = format!("{} 0x1 0x1 0x7ff\n", libc::SYS_clock_nanosleep);
        let cases: [(&[u8], &str); 6] = [
            (b"running\n", "computing"),
            (b"-1 0x7ffd 0x7f12\n", "computing"),
            (futex.as_bytes(), "lock"),
            (sleep.as_bytes(), "blocked"),
            (b"0 0x5 0x7ff 0x10000\n", "blocked"),
            (b"", "computing"),
        ];
        for (line, want) in cases {
            let got = match classify_syscall(line) {
                Activity::Computing => "computing",
                Activity::Lock => "lock",
                Activity::Blocked => "blocked",
            };
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(line));
        }
    }
}
