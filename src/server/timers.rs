//! The loop's timers: when each connection's head, body, write or linger time runs out, and
//! when a request that came whole is watched after all (what the loop does when one is due
//! is in `connections`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::net::conn::Conn;

/// How long a request that came whole with its connection runs before the loop watches its
/// socket anyway: long enough that most requests end first (and never cost the loop a system
/// call), short enough that a client resetting a long request frees its slot, and input
/// arriving past a request is read and noted (so the end lingers instead of resetting).
pub(super) const WATCH_AFTER: Duration = Duration::from_millis(20);

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

#[cfg(test)]
mod tests {
    use super::*;

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
