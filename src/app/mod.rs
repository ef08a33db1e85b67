//! Start-up: the command line, the master process, process set-up, and what the pieces
//! below are put together into. The top layer: everything may be used from here, and
//! nothing below imports it.

mod cli;
mod dump;
mod metrics;
mod metrics_http;
mod recycle;
mod serve;
mod setup;
mod supervisor;

use std::ffi::OsString;
use std::process::ExitCode;

use pyo3::prelude::*;

use self::metrics_http::Endpoint;
use crate::base;
use crate::base::access;
use crate::base::config::{Config, Launch, ListenSpec};
use crate::base::fork;
use crate::base::log::{self, fatal, info, warning};
use crate::base::sys;
use crate::external;
use crate::net::listen::Listener;
use crate::server::SignalPipe;
use crate::wsgi;

/// The `scgi-wsgi` binary: the whole program, with the process's own command line.
pub fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os().collect(), Launch::Standalone))
}

/// The entry of the pip-installed command: the `scgi_wsgi._core` extension module calls this
/// from the Python process that imported it (the virtualenv's interpreter), which the server
/// then joins instead of starting one of its own. Runs the whole program with `argv` as its
/// command line, then ends the process with the program's exit status. Python is not
/// finalised, as the binary does not finalise the interpreter it starts: threads the app
/// started may still be running, and the app's atexit handlers have run already.
pub fn run_in_python(py: Python<'_>, argv: Vec<OsString>) -> ! {
    default_sigint(py);
    // The event loop and the master never hold the GIL: it is released for the whole run.
    let code = py.detach(|| run(argv, Launch::InPython));
    let _ = py.run(c"import sys\nsys.stdout.flush()\nsys.stderr.flush()", None, None);
    std::process::exit(code.into())
}

/// Gives SIGINT its default action back in a Python process that runs one of this crate's
/// programs. Python's own handler would run behind the server's and raise
/// KeyboardInterrupt at the next chance, or, while the program runs without the GIL, only
/// set a flag that nobody reads; the server handles SIGINT itself, as the binary does, and
/// `scgi-request` ends on Ctrl-C.
pub fn default_sigint(py: Python<'_>) {
    let _ = py
        .import("signal")
        .and_then(|signal| signal.call_method1("signal", (libc::SIGINT, 0)));
    // SAFETY: restoring the default action has no memory-safety requirement.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

/// The whole program: parse `argv`, listen, load the app, serve until told to stop. Returns
/// the exit status.
fn run(argv: Vec<OsString>, launch: Launch) -> u8 {
    let args = match cli::parse_args(&argv) {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let mut config = match args.into_config() {
        Ok(config) => config,
        Err(e) => return fatal(e),
    };
    config.launch = launch;
    config.argv = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if let Err(e) = fork::guard_app_forks() {
        // The app's own forks then keep the server's handlers and sockets.
        warning!(
            "server",
            "cannot guard the app's child processes from the server's signals and sockets: {e}"
        );
    }
    if let Err(message) = setup::early(config.process.umask, config.process.chdir.as_deref()) {
        return fatal(message);
    }
    if std::env::var_os("ASHD_USESYSLOG").is_some() {
        // Without a syslog daemon (a container, say) every line would be lost: stay on stderr.
        if std::path::Path::new("/dev/log").exists() {
            log::use_syslog();
        } else {
            warning!(
                "server",
                "ASHD_USESYSLOG is set but there is no /dev/log: logging to stderr"
            );
        }
    }
    if config.verbose {
        log::set_min_level(log::Level::Debug);
    }
    setup::raise_fd_limit();
    // Before anything slow: a stop signal during start-up then ends in an orderly exit. With
    // a master, the supervisor owns signals until each worker installs its own after the fork.
    let early_signals = if config.process.processes > 1 {
        None
    } else {
        match SignalPipe::install() {
            Ok(signals) => Some(signals),
            Err(e) => return fatal(format!("cannot install signal handlers: {e}")),
        }
    };
    let (listener, metrics) = match open_sockets(&config) {
        Ok(sockets) => sockets,
        Err(message) => return fatal(message),
    };
    if config.listen == ListenSpec::Activated {
        if std::env::var("LISTEN_FDS").is_ok_and(|n| n.trim() != "1") {
            warning!(
                "server",
                "LISTEN_FDS={}: serving only the first passed socket (fd 3)",
                std::env::var("LISTEN_FDS").unwrap_or_default()
            );
        }
        // Consumed: the app and its child processes must not take the socket for theirs.
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let pid_file = match prepare_process(&config, &listener) {
        Ok(pid_file) => pid_file,
        Err(message) => return fatal(message),
    };
    let code = if config.process.processes > 1 {
        let plan = supervisor::Plan {
            processes: config.process.processes,
            graceful_timeout: config.graceful_timeout,
            forward_usr1: config.process.access_log.is_some(),
            metrics,
            fork: match config.launch {
                Launch::Standalone => supervisor::plain_fork,
                Launch::InPython => wsgi::interp::fork,
            },
        };
        match supervisor::run(plan, listener) {
            supervisor::Role::Master(code) => code,
            // A worker: the single-process server from here on; the master owns the pid file.
            supervisor::Role::Worker(listener) => return serve::run_server(config, listener, None, None),
        }
    } else {
        serve::run_server(config, listener, early_signals, metrics)
    };
    if let Some(pid_file) = pid_file {
        pid_file.remove();
    }
    code
}

/// The listening socket, and the `--metrics` endpoint's (metrics are counted from here on).
fn open_sockets(config: &Config) -> Result<(Listener, Option<Endpoint>), String> {
    let listener =
        Listener::open(&config.listen, config.backlog, config.defer_accept).map_err(|e| e.to_string())?;
    if config.limits.allow_from.is_some() && !matches!(listener, Listener::Tcp(_)) {
        return Err(format!(
            "--allow-from applies to TCP listeners, and {} is not one (who may connect to a Unix socket is decided by its file's permissions: --unix-mode)",
            listener.describe()
        ));
    }
    let metrics = config.metrics.as_ref().map(Endpoint::open).transpose()?;
    fork::hide_from_app_forks(listener.raw_fd());
    if let Some(endpoint) = &metrics {
        fork::hide_from_app_forks(endpoint.raw_fd());
    }
    if let Some(endpoint) = &metrics {
        base::metrics::enable();
        info!("server", "metrics at /metrics on {}", endpoint.describe());
    }
    Ok((listener, metrics))
}

/// Pid file, access log file and privileges: everything done once the socket is open and
/// before any worker or Python starts.
fn prepare_process(config: &Config, listener: &Listener) -> Result<Option<setup::PidFile>, String> {
    let process = &config.process;
    let identity = setup::resolve(process.user.as_deref(), process.group.as_deref())?;
    if let (Some(id), Some(path)) = (&identity, listener.created_socket_file()) {
        // The frontend connects as --user or --group (with --unix-mode 660, say): the socket
        // file is theirs, as gunicorn and uWSGI make it.
        if sys::euid() == 0 {
            std::os::unix::fs::chown(path, id.uid, Some(id.gid)).map_err(|e| {
                format!(
                    "cannot hand the socket file {} to --user/--group: {e}",
                    path.display()
                )
            })?;
        }
    }
    let pid_file = process
        .pid_file
        .as_deref()
        .map(setup::PidFile::write)
        .transpose()?;
    if let Some(path) = &process.access_log {
        let owner = identity
            .as_ref()
            .filter(|_| sys::euid() == 0)
            .map(|id| (id.uid.unwrap_or(0), id.gid));
        access::prepare(path, owner)
            .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?;
    }
    if let Some(identity) = &identity {
        // Which interpreter is found on PATH is settled before the switch, as root sees it.
        let python = match (&config.interpreter, &config.virtualenv) {
            (Some(command), _) => external::resolve_command(command),
            (None, Some(dir)) => Some(dir.join("bin").join("python")),
            // The pip-installed command runs in a Python that is already up, but its standard
            // library is still to be read from where that interpreter was installed.
            (None, None) if config.launch == Launch::InPython => std::env::current_exe().ok(),
            (None, None) => Some(std::path::PathBuf::from(wsgi::interp::BUILD_PYTHON)),
        };
        setup::drop_privileges(identity)?;
        if let Some(python) = python {
            setup::check_python_reachable(&python)?;
        }
    }
    Ok(pid_file)
}
