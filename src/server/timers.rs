//! The loop's timers, and what it does when one is due: a head or body that took too long
//! (408), a client that stopped reading, a linger that ran out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

use super::dispatcher::Dispatcher;
use super::Server;
use crate::base::log::{debug, warning};
use crate::net::conn::{Conn, Phase, Watching};
use crate::proto::cgi::Answer;

/// Timer entries allowed beyond twice the live ones before closed connections' are dropped.
const TIMERS_SLACK: usize = 1024;

/// The loop's timers: (deadline, connection key, serial), earliest first. An entry stays
/// until its time even when its connection closed first (a head timer per connection: ten
/// seconds of them at thousands of requests a second), so when they pile up those whose
/// connection is gone are dropped, at a cost that amortises to a constant per entry.
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Size at which the heap is cleared of closed connections' entries.
    compact_at: usize,
}

impl Timers {
    pub(super) fn new() -> Timers {
        Timers {
            heap: BinaryHeap::new(),
            compact_at: TIMERS_SLACK,
        }
    }

    /// Adds a timer for a connection of `conns`.
    pub(super) fn push(&mut self, entry: (Instant, usize, u64), conns: &Slab<Conn>) {
        self.push_if_live(entry, |key, serial| {
            conns.get(key).is_some_and(|c| c.serial == serial)
        });
    }

    /// Adds a timer; `live` says which entries' connections are still open.
    pub(super) fn push_if_live(&mut self, entry: (Instant, usize, u64), live: impl Fn(usize, u64) -> bool) {
        self.heap.push(Reverse(entry));
        if self.heap.len() >= self.compact_at {
            self.heap.retain(|Reverse((_, key, serial))| live(*key, *serial));
            self.compact_at = (2 * self.heap.len()).max(TIMERS_SLACK);
        }
    }

    /// The earliest entry.
    pub(super) fn peek(&self) -> Option<(Instant, usize, u64)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    /// Removes the earliest entry.
    pub(super) fn pop(&mut self) {
        self.heap.pop();
    }
}

impl<D: Dispatcher> Server<D> {
    pub(super) fn expire_timers(&mut self) {
        let now = Instant::now();
        while let Some((when, key, serial)) = self.timers.peek() {
            if when > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get(key).filter(|c| c.serial == serial) else {
                continue;
            };
            if conn.phase == Phase::Running && conn.watching == Watching::Nothing {
                // It has run WATCH_AFTER (or longer): from now on its input and its client's
                // departure are seen. Nothing else can be due: its output never waited.
                self.watch(key, Watching::Readable);
                continue;
            }
            match conn.deadline(&self.limits) {
                None => continue,
                Some(deadline) if deadline > now => {
                    self.timers.push((deadline, key, serial), &self.conns);
                    continue;
                }
                Some(_) => {}
            }
            match conn.phase {
                Phase::Head if conn.bytes_received() == 0 => {
                    debug!("server", "closing a connection that sent nothing");
                    self.close(key);
                }
                Phase::Head => self.refuse(
                    key,
                    &Answer {
                        status: "408 Request Timeout",
                        cause: format!(
                            "the SCGI head did not arrive within {:.1} s (--head-timeout)",
                            self.limits.head_timeout.as_secs_f64()
                        ),
                    },
                ),
                Phase::Body => {
                    let (got, declared) = conn.body_progress();
                    self.refuse(
                        key,
                        &Answer {
                            status: "408 Request Timeout",
                            cause: format!(
                                "request body stalled at {got} of {declared} bytes for {:.1} s (--body-timeout)",
                                self.limits.body_timeout.as_secs_f64()
                            ),
                        },
                    )
                }
                Phase::Running | Phase::Closing => {
                    warning!(
                        "server",
                        "client has not read any of the response for {:.1} s (--write-timeout); dropping it",
                        self.limits.write_timeout.as_secs_f64()
                    );
                    if let Some(outbox) = &conn.outbox {
                        outbox.mark_client_gone();
                    }
                    self.close(key);
                }
                Phase::Lingering => self.close(key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_of_closed_connections_do_not_pile_up() {
        let mut timers = Timers::new();
        let later = Instant::now() + Duration::from_secs(10);
        // 100,000 connections come and go (a head timer each); every 1,000th is still open.
        let live = |key: usize, _serial: u64| key % 1000 == 0;
        for key in 0..100_000 {
            timers.push_if_live((later, key, key as u64), live);
            assert!(
                timers.heap.len() <= 2 * TIMERS_SLACK,
                "{} entries after {key}",
                timers.heap.len()
            );
        }
        // The open connections keep their timers.
        let kept = timers
            .heap
            .iter()
            .filter(|Reverse((_, key, _))| key % 1000 == 0)
            .count();
        assert_eq!(kept, 100);
    }
}
