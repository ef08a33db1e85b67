//! scgi-wsgi: serve Python WSGI applications over SCGI.
//!
//! The event loop ([`server`]) reads complete requests without the GIL and hands them through
//! the [`dispatch`] seam to Python worker threads ([`handling`], [`wsgi`]).

pub mod access;
pub mod cli;
pub mod conn;
pub mod dispatch;
pub mod doorway;
pub mod error;
pub mod external;
pub mod handling;
pub mod listen;
pub mod log;
pub mod scgi;
pub mod server;
pub mod setup;
pub mod supervisor;
pub mod watchdog;
pub mod wsgi;

use std::process::ExitCode;
use std::sync::Arc;

use pyo3::prelude::*;

use crate::cli::Config;
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

/// glibc's malloc returns memory to the kernel once 128 KiB lie free at the top of a heap,
/// and moves its mmap threshold as it goes. A server that allocates and frees request bodies
/// and responses of tens of KiB on several threads then takes fresh pages, page faults and
/// TLB-shootdown interrupts on every request: about a fifth of the CPU time of a 64 KiB echo.
/// Fixed thresholds keep up to 1 MiB free per heap and map only blocks of 1 MiB or more.
///
/// Each heap keeping that much makes their number matter: glibc makes up to 8 per CPU, one
/// for each new thread, each with pages of its own. No more threads than CPUs run at once, so
/// one heap per CPU is kept, plus the event loop's. With 32 threads on 2 CPUs that is about
/// 0.1 MiB less resident, and 3 heaps instead of 16 that may each keep 1 MiB free.
///
/// A threshold or heap count set in the environment (`MALLOC_TRIM_THRESHOLD_` and the like,
/// `GLIBC_TUNABLES`) leaves malloc as it is.
///
/// Called once the interpreter is up and the app imported, not at start: CPython's object
/// allocator takes its address map (zeroed blocks of 256 and 128 KiB, mostly never written)
/// during initialisation. Under the default threshold those are fresh mappings that stay
/// sparse; from the heap they would cost about 0.2 MiB of resident memory per process.
/// Another thread (the access log's, or one the app started) may be allocating meanwhile:
/// it sees the old settings or the new ones, both valid, and a heap it has already made
/// stays in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const KEEP: libc::c_int = 1024 * 1024;
    let user_set = [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_ARENA_MAX",
        "MALLOC_ARENA_TEST",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if !user_set {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let heaps = libc::c_int::try_from(cpus + 1).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters, under the main arena's lock.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
            libc::mallopt(libc::M_ARENA_MAX, heaps);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// The whole program: parse, listen, load the app, serve until told to stop.
pub fn main_entry() -> ExitCode {
    let args = match cli::parse_args(std::env::args_os()) {
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
    raise_fd_limit();
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
    let listener = match Listener::open(&config.listen, config.backlog, config.defer_accept) {
        Ok(listener) => listener,
        Err(e) => return fatal(e),
    };
    if config.listen == cli::ListenSpec::Activated {
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
        };
        match supervisor::run(plan, listener) {
            supervisor::Role::Master(code) => code,
            // A worker: the single-process server from here on; the master owns the pid file.
            supervisor::Role::Worker(listener) => return run_server(config, listener, None),
        }
    } else {
        run_server(config, listener, early_signals)
    };
    if let Some(pid_file) = pid_file {
        pid_file.remove();
    }
    code
}

/// Pid file, access log file and privileges: everything done once the socket is open and
/// before any worker or Python starts.
fn prepare_process(config: &Config, listener: &Listener) -> Result<Option<setup::PidFile>, String> {
    let process = &config.process;
    let identity = setup::resolve(process.user.as_deref(), process.group.as_deref())?;
    if let (Some(id), Some(path)) = (&identity, listener.created_socket_file()) {
        // The frontend connects as --user or --group (with --unix-mode 660, say): the socket
        // file is theirs, as gunicorn and uWSGI make it.
        if unsafe { libc::geteuid() } == 0 {
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
            .filter(|_| unsafe { libc::geteuid() } == 0)
            .map(|id| (id.uid.unwrap_or(0), id.gid));
        access::prepare(path, owner)
            .map_err(|e| format!("cannot open the access log {}: {e}", path.display()))?;
    }
    if let Some(identity) = &identity {
        // Which interpreter is found on PATH is settled before the switch, as root sees it.
        let python = match (&config.interpreter, &config.virtualenv) {
            (Some(command), _) => external::resolve_command(command),
            (None, Some(dir)) => Some(dir.join("bin").join("python")),
            (None, None) => Some(std::path::PathBuf::from(wsgi::interp::BUILD_PYTHON)),
        };
        setup::drop_privileges(identity)?;
        if let Some(python) = python {
            setup::check_python_reachable(&python)?;
        }
    }
    Ok(pid_file)
}

/// The single-process server: what runs in each worker, or alone with --processes 1.
fn run_server(config: Config, listener: Listener, signals: Option<SignalPipe>) -> ExitCode {
    if let Some(path) = &config.process.access_log {
        if let Err(e) = access::start(path) {
            return fatal(format!("cannot open the access log {}: {e}", path.display()));
        }
    }
    ignore_sighup();
    if config.process.access_log.is_none() {
        ignore_sigusr1();
    }
    let watch = request_watch(&config);
    if let Some(interpreter) = config.interpreter.clone() {
        let dispatcher = match start_external(&config, interpreter, watch) {
            Ok(dispatcher) => dispatcher,
            Err(message) => return fatal(message),
        };
        tune_malloc();
        return serve(config, listener, signals, dispatcher);
    }
    let handler = match start_python(&config) {
        Ok(handler) => handler,
        Err(message) => return fatal(message),
    };
    tune_malloc();
    let handler: Arc<dyn handling::RequestHandler> = match watch {
        Some(watch) => Arc::new(watchdog::Watchdog::new(Arc::new(handler), watch)),
        None => Arc::new(handler),
    };
    let pool = WorkerPool::new(
        &config.model,
        handler,
        config.limits.max_queue,
        config.process.processes > 1,
    );
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
fn request_watch(config: &Config) -> Option<Arc<watchdog::RequestWatch>> {
    let process = &config.process;
    if process.max_requests.is_none() && process.request_timeout.is_none() {
        return None;
    }
    let max_requests = process
        .max_requests
        .map(|n| watchdog::jittered(n, process.max_requests_jitter));
    Some(watchdog::RequestWatch::new(max_requests, process.request_timeout))
}

/// Starts the external-interpreter worker (`--interpreter`), in the virtualenv if one is named.
fn start_external(
    config: &Config,
    interpreter: String,
    watch: Option<Arc<watchdog::RequestWatch>>,
) -> Result<external::ExternalDispatcher, String> {
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
        multiprocess: config.process.processes > 1,
        window: config.limits.write_buffer,
        env,
        mount: config.mount.clone(),
        max_queue: config.limits.max_queue,
        watch,
    };
    external::ExternalDispatcher::start(spec, std::env::args().collect())
}

/// SIGHUP reloads only under a master; a single process (or a worker) is not ended by it.
fn ignore_sighup() {
    if supervisor::has_master() {
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
    // Only write(2) runs in the handler: it is async-signal-safe.
    let installed = unsafe {
        signal_hook::low_level::register(signal, move || {
            libc::write(2, note.as_ptr().cast(), note.len());
        })
    };
    if let Err(e) = installed {
        let name = setup::signal_abbrev(signal).unwrap_or("signal");
        warning!("server", "cannot install a {name} handler: {e}");
    }
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

fn serve<D: dispatch::Dispatcher>(
    config: Config,
    listener: Listener,
    signals: Option<SignalPipe>,
    pool: D,
) -> ExitCode {
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
    server.set_repeat_stops_at_once(!supervisor::has_master());
    supervisor::tell_master(supervisor::Message::Ready);
    let exit = server.run();
    drop(server);
    access::flush();
    match exit {
        Ok(Exit::Drained) => {
            info!("server", "all requests finished; exiting");
            ExitCode::SUCCESS
        }
        Ok(Exit::GracefulTimeout) | Ok(Exit::Immediate) => ExitCode::SUCCESS,
        Err(e) => fatal(format!("event loop failed: {e}")),
    }
}
