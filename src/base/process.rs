//! Process-wide facts and flags: whether this process is a worker under a master, the
//! messages a worker sends its master, and the flag a worker raises when it asks to be
//! replaced (which makes it stop accepting at once, wherever it accepts).
//!
//! Workers talk to the master through one pipe shared by all of them: five-byte messages (a
//! kind byte and the sender's pid), which the kernel writes atomically (under `PIPE_BUF`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::log::{error, info};
use super::sys;

/// A worker's message to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// The app is loaded and the worker accepts connections.
    Ready = b'U' as isize,
    /// The worker reached --max-requests: replace it.
    Recycle = b'R' as isize,
    /// A request ran past --request-timeout: replace the worker.
    Hung = b'T' as isize,
    /// The worker's memory passed --max-rss: replace it once a replacement is ready.
    MaxRss = b'M' as isize,
    /// The worker has lived --max-lifetime: replace it once a replacement is ready.
    MaxLifetime = b'L' as isize,
}

impl Message {
    /// The message a kind byte stands for.
    pub fn from_byte(byte: u8) -> Option<Message> {
        [
            Message::Ready,
            Message::Recycle,
            Message::Hung,
            Message::MaxRss,
            Message::MaxLifetime,
        ]
        .into_iter()
        .find(|m| *m as u8 == byte)
    }

    /// One message on the wire: its kind, then the sender's pid.
    pub fn encode(self, pid: u32) -> [u8; 5] {
        let mut bytes = [0u8; 5];
        bytes[0] = self as u8;
        bytes[1..].copy_from_slice(&pid.to_le_bytes());
        bytes
    }

    /// A message read off the wire, and its sender's pid.
    pub fn decode(bytes: [u8; 5]) -> Option<(Message, u32)> {
        let pid = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        Message::from_byte(bytes[0]).map(|m| (m, pid))
    }
}

/// Write end of the pipe to the master, in a worker; -1 without a master.
static MASTER_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Set when this process sent itself SIGTERM to be replaced (see [`request_replacement`]).
static REPLACING: AtomicBool = AtomicBool::new(false);

/// Makes this process a worker that reports to its master through `pipe` (right after fork);
/// its log lines name it from now on.
pub fn set_master_pipe(pipe: RawFd) {
    MASTER_PIPE.store(pipe, Ordering::Relaxed);
    super::log::set_worker(std::process::id());
}

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
    let bytes = message.encode(std::process::id());
    // SAFETY: the pointer and length describe the live array `bytes`; the pipe is blocking,
    // so the message goes out whole.
    let written = sys::retry(|| unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) });
    match written {
        Ok(n) if n == bytes.len() as isize => {}
        Ok(_) => error!("server", "cannot reach the master process: short write"),
        Err(e) => error!("server", "cannot reach the master process: {e}"),
    }
    true
}

/// Asks to be replaced. For `--max-rss` and `--max-lifetime`, under a master, this process
/// serves on: the master starts a replacement and tells this one to stop (SIGTERM) once
/// that one is ready. Otherwise this process stops accepting at once and drains as on
/// SIGTERM (so it takes no more than a few requests past its limit); without a master,
/// whatever started it (callscgi, systemd) starts a fresh one.
pub fn request_replacement(message: Message) {
    let told = tell_master(message);
    if told && matches!(message, Message::MaxRss | Message::MaxLifetime) {
        return;
    }
    if !told {
        info!(
            "server",
            "no master process (--processes 1): finishing open requests and exiting"
        );
    }
    // Under a master the worker gets SIGTERM from it too, which only continues the drain.
    REPLACING.store(true, Ordering::Relaxed);
    // SAFETY: sending a signal to this very process has no memory-safety requirement.
    if let Err(e) = sys::check(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }) {
        error!("server", "cannot start the drain (SIGTERM to myself): {e}");
    }
}

/// Whether a SIGTERM came from this process asking to be replaced, not from someone stopping it.
pub fn replacing() -> bool {
    REPLACING.load(Ordering::Relaxed)
}

/// A random number, different in each process (for jitter: workers forked in the same
/// instant get different ones).
pub fn random() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for message in [
            Message::Ready,
            Message::Recycle,
            Message::Hung,
            Message::MaxRss,
            Message::MaxLifetime,
        ] {
            assert_eq!(Message::decode(message.encode(4242)), Some((message, 4242)));
        }
        assert_eq!(Message::decode([b'?', 1, 0, 0, 0]), None);
    }
}
