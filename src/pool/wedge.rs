//! The original's wedge rule: `free timeout=` and `pool abort=` abort the process (so that a
//! supervisor restarts it) when requests stop getting through.

use std::thread;
use std::time::Duration;

use crate::base::config::Model;
use crate::base::log::error;

/// When the process decides the app is wedged and aborts, as the original does.
#[derive(Debug, Clone, Copy)]
pub enum Wedge {
    /// free's `timeout=`: a request waited this long for a thread.
    ThreadWait(Duration),
    /// pool's `abort=`: the queue stayed full this long with a request waiting to get in.
    QueueFull(Duration),
}

/// Aborts the process (so a supervisor restarts it) when requests stop getting through.
impl Wedge {
    /// The wedge rule of a model, if its parameters ask for one (free timeout=, pool abort=).
    pub fn for_model(model: &Model) -> Option<Wedge> {
        match *model {
            Model::Free { timeout, .. } => timeout.map(Wedge::ThreadWait),
            Model::Pool { abort, .. } => abort.map(Wedge::QueueFull),
            Model::Rplex { .. } | Model::Single => None,
        }
    }
}

/// Starts the thread that aborts the process when `waited` (asked with the rule) says a
/// request has waited longer than the rule allows, as the original does.
pub fn spawn_wedge_watch(wedge: Wedge, waited: impl Fn(Wedge) -> Option<Duration> + Send + 'static) {
    let _ = thread::Builder::new()
        .name("wedge-watch".into())
        .spawn(move || watch_for_wedge(wedge, waited));
}

fn watch_for_wedge(wedge: Wedge, waited: impl Fn(Wedge) -> Option<Duration>) {
    let limit = match wedge {
        Wedge::ThreadWait(limit) | Wedge::QueueFull(limit) => limit,
    };
    let tick = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        thread::sleep(tick);
        let waited = waited(wedge);
        let Some(waited) = waited.filter(|w| *w > limit) else {
            continue;
        };
        match wedge {
            Wedge::ThreadWait(_) => error!(
                "server",
                "a request has waited {:.1} s for a worker thread (free timeout={:.1}): the app seems wedged; aborting",
                waited.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Wedge::QueueFull(_) => error!(
                "server",
                "the request queue has been full for {:.1} s (pool abort={:.1}): the app seems wedged; aborting",
                waited.as_secs_f64(),
                limit.as_secs_f64()
            ),
        }
        std::process::abort();
    }
}
