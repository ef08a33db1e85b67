//! Stop signals: SIGTERM, SIGINT and SIGQUIT reach the loop through a pipe its handler writes
//! to (what the loop does about them is in `drain`).

use std::io::{self, Read};
use std::os::fd::IntoRawFd;

use mio::net::UnixStream;

/// Signals the loop reacts to, delivered through a pipe written by the signal handler.
pub struct SignalPipe {
    pub(super) reader: UnixStream,
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
            // SAFETY: the handler only calls write(2), which is async-signal-safe, on a
            // descriptor that stays open for the life of the process. Its result is ignored:
            // a full pipe already holds signals for the loop to read.
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

    pub(super) fn read_signals(&mut self) -> Vec<i32> {
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
