//! scgi-wsgi: serve Python WSGI applications over SCGI.
//!
//! The event loop ([`server`]) reads complete requests without the GIL and hands them through
//! the [`dispatch`] seam to Python worker threads ([`handling`], [`wsgi`]).

pub mod cli;
pub mod conn;
pub mod dispatch;
pub mod error;
pub mod external;
pub mod handling;
pub mod listen;
pub mod log;
pub mod scgi;
pub mod server;
pub mod wsgi;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pyo3::prelude::*;

use crate::cli::{Args, Config};
use crate::handling::WorkerPool;
use crate::listen::Listener;
use crate::server::{Exit, Server, SignalPipe};

/// Prints a start-up failure on one line and gives exit status 1.
fn fatal(message: impl std::fmt::Display) -> ExitCode {
    log::write_stderr(format!("scgi-wsgi: {message}\n").as_bytes());
    ExitCode::from(1)
}

/// Lets the process hold as many connections as the hard limit allows.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The whole program: parse, listen, load the app, serve until told to stop.
pub fn main_entry() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => return fatal(e),
    };
    if std::env::var_os("ASHD_USESYSLOG").is_some() {
        log::use_syslog();
    }
    if config.verbose {
        log::set_min_level(log::Level::Debug);
    }
    raise_fd_limit();
    // Before anything slow: a stop signal during start-up then ends in an orderly exit.
    let signals = match SignalPipe::install() {
        Ok(signals) => signals,
        Err(e) => return fatal(format!("cannot install signal handlers: {e}")),
    };
    let listener = match Listener::open(&config.listen, config.backlog) {
        Ok(listener) => listener,
        Err(e) => return fatal(e),
    };
    if let Some(interpreter) = config.interpreter.clone() {
        let dispatcher = match start_external(&config, interpreter) {
            Ok(dispatcher) => dispatcher,
            Err(message) => return fatal(message),
        };
        return serve(config, listener, signals, dispatcher);
    }
    let handler = match start_python(&config) {
        Ok(handler) => handler,
        Err(message) => return fatal(message),
    };
    let pool = WorkerPool::new(&config.model, Arc::new(handler), config.limits.max_queue);
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

/// Starts the external-interpreter worker (`--interpreter`), in the virtualenv if one is named.
fn start_external(config: &Config, interpreter: String) -> Result<external::ExternalDispatcher, String> {
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
    let spec = external::WorkerSpec {
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
        multiprocess: false,
        window: config.limits.write_buffer,
        env,
        mount: config.mount.clone(),
        max_queue: config.limits.max_queue,
    };
    external::ExternalDispatcher::start(spec, std::env::args().collect())
}

fn start_python(config: &Config) -> Result<wsgi::WsgiHandler, String> {
    let program = match &config.virtualenv {
        Some(dir) => Some(wsgi::interp::virtualenv_python(dir).map_err(|e| e.to_string())?),
        None => None,
    };
    let argv: Vec<String> = std::env::args().collect();
    wsgi::interp::initialize(program.as_deref(), &argv).map_err(|e| e.to_string())?;
    Python::attach(|py| {
        if !config.no_logging {
            wsgi::interp::configure_logging(py).map_err(|e| format!("cannot configure logging: {e}"))?;
        }
        wsgi::interp::prepend_paths(py, &config.module_paths)
            .map_err(|e| format!("cannot set sys.path: {e}"))?;
        wsgi::wsgidir::register(py).map_err(|e| format!("cannot register scgi_wsgi.wsgidir: {e}"))?;
        if let Some(spec) = &config.pdm {
            start_pdm(py, spec);
        }
        let app = wsgi::app::load(py, &config.module, config.use_application, &config.args)
            .map_err(|e| e.to_string())?;
        let mut handler = wsgi::WsgiHandler::new(py, app, config.model.multithread(), false)
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

fn serve<D: dispatch::Dispatcher>(
    config: Config,
    listener: Listener,
    signals: SignalPipe,
    pool: D,
) -> ExitCode {
    let description = listener.describe();
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
    let exit = server.run();
    drop(server);
    match exit {
        Ok(Exit::Drained) => {
            info!("server", "all requests finished; exiting");
            ExitCode::SUCCESS
        }
        Ok(Exit::GracefulTimeout) | Ok(Exit::Immediate) => ExitCode::SUCCESS,
        Err(e) => fatal(format!("event loop failed: {e}")),
    }
}
