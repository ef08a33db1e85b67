//! `--max-rss` and `--max-lifetime`: a thread that looks, once a second, at this worker's
//! resident memory (with its app's interpreter process, in the external mode) and its age,
//! and asks to be replaced when either passes its limit. Under a master the worker serves on
//! until its replacement is ready; alone, it drains and exits for its supervisor to start a
//! fresh one (see `base::process::request_replacement`).

use std::thread;
use std::time::{Duration, Instant};

use crate::base::config::ProcessConfig;
use crate::base::log::{info, warning};
use crate::base::metrics;
use crate::base::process::{self, Message};

/// How often the memory is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Starts the watch, when `--max-rss` or `--max-lifetime` asks for one.
pub fn spawn_watch(process: &ProcessConfig) {
    if process.max_rss.is_none() && process.max_lifetime.is_none() {
        return;
    }
    let max_rss = process.max_rss;
    let lifetime = process
        .max_lifetime
        .map(|age| age + jitter(process.max_lifetime_jitter));
    let started = Instant::now();
    let spawned = thread::Builder::new()
        .name("recycle-watch".into())
        .spawn(move || watch(max_rss, lifetime, started));
    if let Err(e) = spawned {
        warning!("server", "cannot start the --max-rss/--max-lifetime watch: {e}");
    }
}

fn watch(max_rss: Option<u64>, lifetime: Option<Duration>, started: Instant) {
    let pid = std::process::id();
    loop {
        let until_old = lifetime.map(|age| age.saturating_sub(started.elapsed()));
        thread::sleep(until_old.map_or(LOOK_EVERY, |left| left.min(LOOK_EVERY)));
        if let Some(limit) = max_rss {
            let rss = resident(pid);
            if rss > limit {
                info!(
                    "server",
                    "worker {pid}: resident memory {} MiB is over --max-rss {} MiB; asking to be replaced",
                    rss >> 20,
                    limit >> 20
                );
                return process::request_replacement(Message::MaxRss);
            }
        }
        if let Some(age) = lifetime.filter(|age| started.elapsed() >= *age) {
            info!(
                "server",
                "worker {pid} has run {:.0} s (--max-lifetime, with its jitter); asking to be replaced",
                age.as_secs_f64()
            );
            return process::request_replacement(Message::MaxLifetime);
        }
    }
}

/// This worker's resident memory, with its app's interpreter process (external mode).
fn resident(pid: u32) -> u64 {
    let own = metrics::process_usage(pid).map_or(0, |(rss, _)| rss);
    let app = metrics::app_pid()
        .and_then(metrics::process_usage)
        .map_or(0, |(rss, _)| rss);
    own + app
}

/// A random duration from zero to `most`, different in each process.
fn jitter(most: Duration) -> Duration {
    most.mul_f64((process::random() % 1_000_001) as f64 / 1_000_000.0)
}
