//! The single-process server, as it runs alone (`--processes 1`) or in each worker: the app
//! side started (embedded interpreter or external worker), then the event loop until a stop.

use std::sync::Arc;

use pyo3::prelude::*;

use super::dump;
use super::metrics::render_own;
use super::metrics_http::{self, Endpoint};
use super::recycle;
use super::setup::tune_malloc;
use crate::base::access;
use crate::base::config::{Config, Launch};
use crate::base::log::{self, fatal, info, warning};
use crate::base::process::{self, Message};
use crate::base::sys;
use crate::external::{ExternalDispatcher, WorkerSpec};
use crate::net::listen::Listener;
use crate::pool::watchdog::{jittered, RequestWatch, Watchdog};
use crate::pool::{RequestHandler, WorkerPool};
use crate::server::dispatcher::Dispatcher;
use crate::server::{Exit, Server, SignalPipe};
use crate::wsgi;
use crate::wsgi::stacks::PythonStacks;

/// The signals a serving process handles: stop (TERM, INT, QUIT), reload or its note (HUP),
/// log reopening or its note (USR1), stacks (USR2).
const SERVER_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The single-process server: what runs in each worker, or alone with --processes 1.
pub(super) fn run_server(
    config: Config,
    listener: Listener,
    signals: Option<SignalPipe>,
    metrics: Option<Endpoint>,
) -> u8 {
    if let Some(path) = &config.process.access_log {
        if let Err(e) = access::start(path, config.process.access_log_format.clone()) {
            return fatal(format!("cannot open the access log {}: {e}", path.display()));
        }
    }
    if let Some(endpoint) = metrics {
        if let Err(e) = metrics_http::spawn(endpoint, render_own) {
            return fatal(format!("cannot start the metrics thread: {e}"));
        }
    }
    if let Err(e) = dump::install() {
        warning!(
            "server",
            "cannot install the SIGUSR2 handler (stacks on demand): {e}"
        );
    }
    ignore_sighup();
    if config.process.access_log.is_none() {
        ignore_sigusr1();
    }
    let watch = request_watch(&config);
    if let Some(interpreter) = config.interpreter.clone() {
        let dispatcher = match start_external(&config, interpreter, watch.clone()) {
            Ok(dispatcher) => dispatcher,
            Err(message) => return fatal(message),
        };
        if let Some(watch) = &watch {
            watch.set_stacks(dispatcher.stack_source());
        }
        dump::set(dispatcher.busy_requests(), dispatcher.stack_source(), "request");
        tune_malloc();
        return serve(config, listener, signals, dispatcher);
    }
    // The server's signals stay the server's: an app that sets a handler of its own at
    // import (Python runs it only on the main thread, which here never runs Python, so the
    // signal would be lost) gets a warning, and the server's handler back. (Those the server
    // installs only after the import, in a worker under a master, replace the app's then.)
    let ours = sys::SignalActions::save(&SERVER_SIGNALS);
    let handler = match start_python(&config) {
        Ok(handler) => handler,
        Err(message) => return fatal(message),
    };
    let taken: Vec<&str> = ours
        .restore_changed()
        .into_iter()
        .map(|signal| sys::signal_abbrev(signal).unwrap_or("a signal"))
        .collect();
    if !taken.is_empty() {
        warning!(
            "server",
            "the app set its own handler for {taken} at import; this server handles {taken} itself (see SIGNALS in the manual), so its own handler is back (an app can run code at exit with atexit)",
            taken = taken.join(", ")
        );
    }
    tune_malloc();
    let handler: Arc<dyn RequestHandler> = match watch {
        Some(watch) => {
            watch.set_stacks(Arc::new(PythonStacks));
            Arc::new(Watchdog::new(Arc::new(handler), watch))
        }
        None => Arc::new(handler),
    };
    let pool = WorkerPool::new(
        &config.model,
        handler,
        config.limits.max_queue,
        config.process.processes > 1,
    );
    dump::set(pool.busy_threads(), Arc::new(PythonStacks), "worker thread");
    let exit = serve(config, listener, signals, pool);
    // Let the app's atexit handlers run and its output reach the streams.
    Python::attach(|py| {
        let _ = py.run(
            c"import atexit, sys\natexit._run_exitfuncs()\nsys.stdout.flush()\nsys.stderr.flush()",
            None,
            None,
        );
    });
    exit
}

/// `--max-requests` and `--request-timeout`, when either is given.
fn request_watch(config: &Config) -> Option<Arc<RequestWatch>> {
    let process = &config.process;
    if process.max_requests.is_none() && process.request_timeout.is_none() {
        return None;
    }
    let max_requests = process
        .max_requests
        .map(|n| jittered(n, process.max_requests_jitter));
    Some(RequestWatch::new(max_requests, process.request_timeout))
}

/// Starts the external-interpreter worker (`--interpreter`), in the virtualenv if one is named.
fn start_external(
    config: &Config,
    interpreter: String,
    watch: Option<Arc<RequestWatch>>,
) -> Result<ExternalDispatcher, String> {
    if let Some(spec) = &config.pdm {
        warning!(
            "server",
            "-m {spec}: no PDM debugging socket: not available with --interpreter (the app runs in another process)"
        );
    }
    let mut env = Vec::new();
    let mut interpreter = interpreter;
    if let Some(venv) = &config.virtualenv {
        let bin = venv.join("bin");
        if !venv.join("pyvenv.cfg").exists() {
            return Err(format!(
                "cannot use virtualenv {}: it has no pyvenv.cfg",
                venv.display()
            ));
        }
        // The virtualenv's own interpreter: the same name in its bin/, else its bin/python.
        let name = std::path::Path::new(&interpreter)
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        interpreter = [bin.join(&name), bin.join("python")]
            .into_iter()
            .find(|candidate| candidate.exists())
            .ok_or_else(|| format!("cannot use virtualenv {}: it has no bin/python", venv.display()))?
            .to_string_lossy()
            .into_owned();
        let path = std::env::var("PATH").unwrap_or_default();
        env.push(("VIRTUAL_ENV".to_string(), venv.to_string_lossy().into_owned()));
        env.push(("PATH".to_string(), format!("{}:{path}", bin.display())));
    }
    let spec = WorkerSpec {
        interpreter,
        module: config.module.clone(),
        use_application: config.use_application,
        args: config.args.clone(),
        paths: config
            .module_paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        no_logging: config.no_logging,
        model: config.model.clone(),
        multiprocess: config.process.processes > 1,
        window: config.limits.write_buffer,
        env,
        mount: config.mount.clone(),
        max_queue: config.limits.max_queue,
        watch,
    };
    ExternalDispatcher::start(spec, config.argv.clone())
}

/// SIGHUP reloads only under a master; a single process (or a worker) is not ended by it.
fn ignore_sighup() {
    if process::has_master() {
        // SAFETY: ignoring a signal has no memory-safety requirement.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        return;
    }
    ignore_with_note(
        libc::SIGHUP,
        b"scgi-wsgi[server]: WARNING: SIGHUP ignored: reloading needs --processes 2 or more\n",
    );
}

/// With no access log to reopen, SIGUSR1 (which log rotation hooks send routinely) must not
/// kill the server, as its default action would: it notes it and carries on.
fn ignore_sigusr1() {
    ignore_with_note(
        libc::SIGUSR1,
        b"scgi-wsgi[server]: INFO: SIGUSR1 ignored: there is no --access-log to reopen\n",
    );
}

/// Replaces `signal`'s default action (ending the process) with writing `note` to stderr.
fn ignore_with_note(signal: libc::c_int, note: &'static [u8]) {
    // SAFETY: only write(2) runs in the handler, which is async-signal-safe, from a static
    // buffer; its result is ignored (nowhere to report a failure from a handler).
    let installed = unsafe {
        signal_hook::low_level::register(signal, move || {
            libc::write(2, note.as_ptr().cast(), note.len());
        })
    };
    if let Err(e) = installed {
        let name = sys::signal_abbrev(signal).unwrap_or("signal");
        warning!("server", "cannot install a {name} handler: {e}");
    }
}

fn start_python(config: &Config) -> Result<wsgi::WsgiHandler, String> {
    match config.launch {
        Launch::Standalone => {
            let program = match &config.virtualenv {
                Some(dir) => Some(wsgi::interp::virtualenv_python(dir).map_err(|e| e.to_string())?),
                None => None,
            };
            wsgi::interp::initialize(program.as_deref(), &config.argv).map_err(|e| e.to_string())?;
        }
        Launch::InPython => {
            wsgi::interp::join(config.virtualenv.as_deref(), config.virtualenv_from_env)
                .map_err(|e| e.to_string())?;
        }
    }
    Python::attach(|py| {
        if !config.no_logging {
            wsgi::interp::configure_logging(py, &log::worker_tag())
                .map_err(|e| format!("cannot configure logging: {e}"))?;
        }
        wsgi::interp::prepend_paths(py, &config.module_paths)
            .map_err(|e| format!("cannot set sys.path: {e}"))?;
        if config.launch == Launch::Standalone {
            // The pip-installed form has the real package, wsgidir.py among it.
            wsgi::wsgidir::register(py).map_err(|e| format!("cannot register scgi_wsgi.wsgidir: {e}"))?;
        }
        if let Some(spec) = &config.pdm {
            start_pdm(py, spec);
        }
        let app = wsgi::app::load(py, &config.module, config.use_application, &config.args)
            .map_err(|e| e.to_string())?;
        let mut handler =
            wsgi::WsgiHandler::new(py, app, config.model.multithread(), config.process.processes > 1)
                .map(|handler| handler.with_mount(config.mount.clone()))
                .map_err(|e| format!("cannot prepare the environ: {e}"))?;
        if config.model.multiplexes_responses() {
            handler
                .start_response_thread()
                .map_err(|e| format!("cannot start the rplex response thread: {e}"))?;
        }
        Ok(handler)
    })
}

/// The original's -m: a PDM remote-debugging socket, when the `pdm` library is installed.
fn start_pdm(py: Python<'_>, spec: &str) {
    let started = py
        .import("pdm.srv")
        .and_then(|srv| srv.call_method1("listen", (spec,)));
    if let Err(err) = started {
        warning!(
            "server",
            "-m {spec}: no PDM debugging socket: {}",
            wsgi::app::one_line(py, &err)
        );
    }
}

fn serve<D: Dispatcher>(config: Config, listener: Listener, signals: Option<SignalPipe>, pool: D) -> u8 {
    let description = listener.describe();
    let signals = match signals.map_or_else(SignalPipe::install, Ok) {
        Ok(signals) => signals,
        Err(e) => return fatal(format!("cannot install signal handlers: {e}")),
    };
    let poll = match mio::Poll::new() {
        Ok(poll) => poll,
        Err(e) => return fatal(format!("cannot create the event loop: {e}")),
    };
    let mut server = match Server::new(
        poll,
        listener,
        signals,
        pool,
        config.limits.clone(),
        config.graceful_timeout,
    ) {
        Ok(server) => server,
        Err(e) => return fatal(format!("cannot set up the event loop: {e}")),
    };
    info!(
        "server",
        "serving {} on {description} (pid {})",
        config.module,
        std::process::id()
    );
    process::tell_master(Message::Ready);
    // A worker's age counts from here: a slow import does not use it up.
    recycle::spawn_watch(&config.process);
    let exit = server.run();
    drop(server);
    access::flush();
    match exit {
        Ok(Exit::Drained) => {
            info!("server", "all requests finished; exiting");
            0
        }
        Ok(Exit::GracefulTimeout) | Ok(Exit::Immediate) => 0,
        Err(e) => fatal(format!("event loop failed: {e}")),
    }
}
