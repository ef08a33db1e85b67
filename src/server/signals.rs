//! Stop signals: SIGTERM, SIGINT and SIGQUIT reach the loop through a pipe its handler writes
//! to, and start the drain (or stop at once).

use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::Instant;

use mio::net::UnixStream;

use super::dispatcher::Dispatcher;
use super::doorway::Doorway;
use super::{Exit, Server};
use crate::base::log::info;
use crate::base::process;
use crate::base::sys;

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

impl<D: Dispatcher> Server<D> {
    pub(super) fn on_signals(&mut self) -> Option<Exit> {
        // Connections their producers have already ended are not open ones: close them first,
        // so the counts below are the requests still in flight.
        if self.notifier.has_quiet() {
            self.collect_completions();
        }
        for signal in self.signals.read_signals() {
            if signal == libc::SIGQUIT || (self.draining_since.is_some() && self.repeat_stops_at_once) {
                info!(
                    "server",
                    "stopping at once ({} connection(s) open)",
                    self.conns.len()
                );
                return Some(Exit::Immediate);
            }
            if self.draining_since.is_some() {
                continue;
            }
            let name = match sys::signal_abbrev(signal) {
                Some("SIGTERM") | None if process::replacing() => "being replaced",
                Some(name) => name,
                None => "SIGTERM",
            };
            info!(
                "server",
                "{name}: no longer accepting; finishing {} open connection(s) (up to {:.0} s)",
                self.conns.len() + self.workers_hold(),
                self.graceful_timeout.as_secs_f64()
            );
            self.draining_since = Some(Instant::now());
            if let Some(door) = &self.doorway {
                door.close();
            }
            self.take_backlog();
            if let Some(mut listener) = self.listener.take() {
                if self.listening && self.doorway.is_some() {
                    Doorway::unwatch_in(self.poll.as_raw_fd(), listener.raw_fd());
                } else if self.listening {
                    let _ = self.poll.registry().deregister(&mut listener);
                }
                self.listening = false;
                // Dropping closes our descriptor and removes a socket file we created.
            }
            self.accept_pending = false;
            self.accept_more = false;
            self.accept_paused_until = None;
        }
        None
    }

    /// As the listener closes: connections the kernel has already completed are clients
    /// sending (or done sending) their requests, which closing it would reset. They are
    /// taken in and served with the rest of the drain, whatever the limits.
    pub(super) fn take_backlog(&mut self) {
        let mut taken = 0;
        while let Some(listener) = &self.listener {
            match listener.accept() {
                Ok(stream) => {
                    self.adopt(stream);
                    taken += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if taken > 0 {
            info!(
                "server",
                "took {taken} connection(s) waiting in the listen backlog, to answer them before exiting"
            );
        }
    }
}
