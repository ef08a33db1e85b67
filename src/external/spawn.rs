//! Starting the worker process: which interpreter, with what configuration, and the wait
//! for its first frame (ready, or why it could not start).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::frames::FrameReader;
use crate::base::config::Model;
use crate::base::log;
use crate::base::metrics;
use crate::base::sys;
use crate::pool::watchdog::RequestWatch;
use crate::proto::pathinfo::Mount;

/// The worker program, run with `PYTHON -c`.
pub(super) const WORKER_SOURCE: &str = include_str!("worker.py");

/// What the interpreter is given to run (`-c`): the worker's source, from the environment.
const WORKER_BOOT: &str =
    "import os; exec(compile(os.environ.pop('SCGI_WSGI_WORKER_SOURCE'), '<string>', 'exec'))";
/// The environment variables that carry the worker's source and configuration.
const SOURCE_VARIABLE: &str = "SCGI_WSGI_WORKER_SOURCE";
const CONFIG_VARIABLE: &str = "SCGI_WSGI_WORKER_CONFIG";

/// The fd number the worker finds its socket on.
const WORKER_FD: i32 = 3;
/// The `scgi_wsgi.wsgidir` handler module, which the worker makes importable (the embedded
/// interpreter has the same source: one file).
const WSGIDIR_SOURCE: &str = include_str!("../../python/scgi_wsgi/wsgidir.py");

/// What starting the worker needs.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The interpreter command (`pypy3`, `/usr/bin/python3.12`, ...).
    pub interpreter: String,
    /// Handler module.
    pub module: String,
    /// `-A`.
    pub use_application: bool,
    /// wmain() arguments.
    pub args: Vec<String>,
    /// `-p` directories.
    pub paths: Vec<String>,
    /// `-L`.
    pub no_logging: bool,
    /// The handling model.
    pub model: Model,
    /// `wsgi.multiprocess`.
    pub multiprocess: bool,
    /// Bytes a response may run ahead of its client.
    pub window: usize,
    /// Environment variables to add (virtualenv).
    pub env: Vec<(String, String)>,
    /// The mount point from `--script-name`.
    pub mount: Option<Mount>,
    /// `--max-queue`: requests that may wait for the worker (pool uses its `queue=`).
    pub max_queue: usize,
    /// `--max-requests` / `--request-timeout`, when given.
    pub watch: Option<Arc<RequestWatch>>,
}

impl WorkerSpec {
    pub(super) fn config_json(&self, argv: &[String]) -> String {
        let list = |items: &[String]| {
            format!(
                "[{}]",
                items.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
            )
        };
        format!(
            "{{\"fd\":{WORKER_FD},\"module\":{},\"application\":{},\"args\":{},\"paths\":{},\"no_logging\":{},\
             \"threads\":{},\"multithread\":{},\"multiprocess\":{},\"window\":{},\"rplex\":{},\"argv\":{},\
             \"log_tag\":{},\"modules\":{{\"scgi_wsgi.wsgidir\":{}}}}}",
            json_str(&self.module),
            self.use_application,
            list(&self.args),
            list(&self.paths),
            self.no_logging,
            self.model.max_running(),
            self.model.multithread(),
            self.multiprocess,
            self.window,
            matches!(self.model, Model::Rplex { .. }),
            list(argv),
            json_str(&log::worker_tag()),
            json_str(WSGIDIR_SOURCE),
        )
    }
}

/// Finds an interpreter command the way `exec` will: a path as given, else the first
/// executable of that name on PATH.
pub fn resolve_command(command: &str) -> Option<std::path::PathBuf> {
    if command.contains('/') {
        return Some(std::path::PathBuf::from(command));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

/// A JSON string literal.
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A started worker: its process and the two ends of its socket.
pub(super) struct Started {
    pub(super) child: Child,
    pub(super) reader: FrameReader,
    pub(super) writer: UnixStream,
    pub(super) version: String,
}

/// Starts a worker and waits for it to report ready (or why it could not start).
/// Signals the front handles for the whole server, which its worker processes leave alone.
const FRONT_OWNED_SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

pub(super) fn start_worker(spec: &WorkerSpec, argv: &[String]) -> Result<Started, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
    let theirs: OwnedFd = theirs.into();
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(&spec.interpreter);
    command
        .arg("-c")
        .arg(WORKER_BOOT)
        // In the environment, not on the command line, which ps and top show: the worker
        // takes both out before the app is loaded.
        .env(SOURCE_VARIABLE, WORKER_SOURCE)
        .env(CONFIG_VARIABLE, spec.config_json(argv))
        .stdin(Stdio::null())
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            sys::check(libc::dup2(their_fd, WORKER_FD))?;
            // The front decides when the worker ends (it closes the channel). A stop signal
            // sent to the whole process group (Ctrl-C, systemd's default KillMode) or a
            // rotation hook's SIGUSR1 to every process must not end it, and with it the
            // requests the front is letting finish. Ignored until the worker installs its own
            // handlers (which its children do not inherit).
            for signal in FRONT_OWNED_SIGNALS {
                libc::signal(signal, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run the interpreter {:?}: {e}", spec.interpreter))?;
    // Its memory and CPU time count as this worker's (`--max-rss`, the metrics).
    metrics::set_app_pid(child.id());
    drop(theirs);
    let socket = ours
        .try_clone()
        .map_err(|e| format!("cannot share the worker socket: {e}"))?;
    let mut reader = FrameReader::new(socket);
    let (kind, _, payload) = match reader.next_frame() {
        Ok(frame) => frame,
        Err(_) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(format!(
                "the interpreter {:?} ended before the worker started ({status}); is it Python 3.8 or later?",
                spec.interpreter
            ));
        }
    };
    let text = String::from_utf8_lossy(&payload).into_owned();
    match kind {
        b'Y' => Ok(Started {
            child,
            reader,
            writer: ours,
            version: text,
        }),
        b'X' => {
            let _ = child.wait();
            Err(text)
        }
        other => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the worker sent an unexpected first frame {:?}",
                other as char
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_json_with_escapes() {
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
