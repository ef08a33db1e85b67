//! The drain: a stop signal makes the loop stop accepting, take in what waits in the backlog,
//! and finish the requests it holds (or stop at once).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::dispatcher::Dispatcher;
use super::doorway::Doorway;
use super::{Exit, Server};
use crate::base::log::info;
use crate::base::process;
use crate::base::sys;
use crate::net::listen::admitted;

impl<D: Dispatcher> Server<D> {
    pub(super) fn on_signals(&mut self) -> Option<Exit> {
        // Connections their producers have already ended are not open ones: close them first,
        // so the counts below are the requests still in flight.
        if self.notifier.has_quiet() {
            self.collect_completions();
        }
        for signal in self.signals.read_signals() {
            // SIGQUIT, or Ctrl-C twice at a terminal, stops at once. A repeated SIGTERM is the
            // same request again (callscgi sends one when it replaces a server that stopped
            // accepting; a service manager may signal every process): the drain goes on.
            let second_sigint = signal == libc::SIGINT && self.drain.sigint_seen;
            if signal == libc::SIGQUIT || second_sigint {
                info!(
                    "server",
                    "{}: stopping at once ({} connection(s) open)",
                    if second_sigint { "SIGINT again" } else { "SIGQUIT" },
                    self.conns.len() + self.workers_hold()
                );
                return Some(Exit::Immediate);
            }
            self.drain.sigint_seen |= signal == libc::SIGINT;
            if let Some(first) = self.drain.started_by {
                info!(
                    "server",
                    "{}{}: still finishing {} open connection(s) (SIGQUIT stops at once)",
                    sys::signal_abbrev(signal).unwrap_or("SIGTERM"),
                    if signal == first { " again" } else { "" },
                    self.conns.len() + self.workers_hold()
                );
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
                self.drain.graceful_timeout.as_secs_f64()
            );
            self.drain.since = Some(Instant::now());
            self.drain.started_by = Some(signal);
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
            self.intake.pending = false;
            self.intake.more = false;
            self.intake.paused_until = None;
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
                Ok(stream) if !admitted(&stream, self.limits.allow_from.as_deref()) => continue,
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
