//! The trait the event loop drives whatever runs the app through: it hands over complete
//! requests and asks, without ever waiting, whether to take more. The worker pool and the
//! external-interpreter mode implement it, above this layer.

use std::sync::Arc;

use super::doorway::Doorway;
use crate::seam::notifier::Notifier;
use crate::seam::request::Request;

/// How many complete requests may wait for a worker before the loop stops reading further
/// request bodies into memory ([`Dispatcher::wants_bodies`]): enough to keep workers fed, few
/// enough that a crowd of uploads waits in the kernel's socket buffers, not in ours.
pub const READ_AHEAD: usize = 4;

/// Once the loop has held back, a worker taking a request wakes it when at most this many
/// wait: each wake-up then lets the loop read several bodies, not one (a wake-up per request
/// cost about a tenth of the CPU time of a 64 KiB upload, see `benches/RESULTS.md`).
pub const RESUME_AT: usize = 1;

/// A dispatcher's record of the loop holding back (request bodies left unread, connections
/// left to sibling processes) because enough requests wait, and of when to wake it again.
#[derive(Debug, Default)]
pub struct HoldBack {
    held: bool,
}

impl HoldBack {
    /// Whether the loop may take one more, with `waiting` requests waiting and `limit` the
    /// most; a refusal is recorded, for [`HoldBack::resumes`].
    pub fn admits(&mut self, waiting: usize, limit: usize) -> bool {
        let admits = waiting < limit;
        if !admits {
            self.held = true;
        }
        admits
    }

    /// Worker side, as a request is taken with `waiting` left: whether to wake the loop
    /// (once per hold, when the queue has run down to [`RESUME_AT`]).
    pub fn resumes(&mut self, waiting: usize) -> bool {
        let resumes = self.held && waiting <= RESUME_AT;
        if resumes {
            self.held = false;
        }
        resumes
    }
}

/// Runs complete requests. The event loop calls it and never waits on it.
pub trait Dispatcher {
    /// Hands over a request. Returns it back when no more can be queued (the loop answers 503).
    fn dispatch(&mut self, request: Request) -> Result<(), Request>;
    /// Whether another request can be taken now; the loop stops accepting while not. The loop
    /// asks only when it has a connection it would accept.
    fn has_room(&self) -> bool {
        true
    }
    /// Whether to take another connection now although there is room, `incoming` requests
    /// having been taken in this round that are not in the queue yet (their bodies still to
    /// read): false when processes share the listening socket and this one's workers are
    /// busy, so that a sibling takes it. The dispatcher wakes the loop (see
    /// [`Dispatcher::set_waker`]) when that changes.
    fn wants_more(&self, _incoming: usize) -> bool {
        true
    }
    /// Whether the loop may read another request body into memory now: false while enough
    /// complete requests already wait for a worker. The loop then leaves bodies in the kernel
    /// and the dispatcher wakes it (see [`Dispatcher::set_waker`]) when a worker takes one.
    fn wants_bodies(&self) -> bool {
        true
    }
    /// How many requests may wait for a worker (for log lines).
    fn queue_limit(&self) -> usize {
        usize::MAX
    }
    /// Gives the dispatcher a way to wake the loop when it has room again after refusing.
    fn set_waker(&mut self, _notifier: Arc<Notifier>) {}

    /// Offers the dispatcher a doorway (see `doorway`): its idle workers may accept
    /// connections themselves. Returns whether it takes it; if not, the loop accepts every
    /// connection.
    fn set_doorway(&mut self, _doorway: Arc<Doorway>) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_back_loop_is_woken_once_when_the_queue_has_run_down() {
        let mut hold = HoldBack::default();
        assert!(hold.admits(READ_AHEAD - 1, READ_AHEAD));
        assert!(!hold.resumes(0), "nothing was held back");
        assert!(!hold.admits(READ_AHEAD, READ_AHEAD));
        assert!(!hold.admits(READ_AHEAD + 1, READ_AHEAD));
        for waiting in (RESUME_AT + 1..=READ_AHEAD).rev() {
            assert!(!hold.resumes(waiting), "woken with {waiting} still waiting");
        }
        assert!(hold.resumes(RESUME_AT));
        assert!(!hold.resumes(0), "one wake-up per hold");
    }
}
