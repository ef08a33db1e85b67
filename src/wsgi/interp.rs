//! Starting the embedded interpreter: the same Python the binary was built against (or a
//! virtualenv made from it), with signal handling left to us; or, for the pip-installed
//! command, joining the Python that is already running, and forking it soundly.

#[cfg(not(any(Py_LIMITED_API, PyPy)))]
use std::ffi::CString;
#[cfg(not(any(Py_LIMITED_API, PyPy)))]
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

#[cfg(not(any(Py_LIMITED_API, PyPy)))]
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::base::error::AppError;
use crate::base::fork;
use crate::base::log::warning;

/// The interpreter executable found at build time.
pub const BUILD_PYTHON: &str = env!("SCGI_WSGI_BUILD_PYTHON");
/// Its major.minor version.
pub const BUILD_PYTHON_VERSION: &str = env!("SCGI_WSGI_BUILD_PYTHON_VERSION");

/// The `pyvenv.cfg` of virtualenv `dir`, or why `dir` is not one.
fn read_pyvenv_cfg(dir: &Path) -> Result<String, AppError> {
    std::fs::read_to_string(dir.join("pyvenv.cfg")).map_err(|e| AppError::Virtualenv {
        path: dir.to_path_buf(),
        reason: format!("cannot read pyvenv.cfg ({e}); is it a virtualenv?"),
    })
}

/// Checks that `dir` is a virtualenv of our Python version and returns its interpreter path.
pub fn virtualenv_python(dir: &Path) -> Result<PathBuf, AppError> {
    let fail = |reason: String| AppError::Virtualenv {
        path: dir.to_path_buf(),
        reason,
    };
    let cfg = read_pyvenv_cfg(dir)?;
    let version = cfg
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| matches!(k.trim(), "version" | "version_info"))
        .map(|(_, v)| v.trim().to_string());
    if let Some(version) = version {
        let major_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        if major_minor != BUILD_PYTHON_VERSION {
            return Err(fail(format!(
                "it was made with Python {version}, but this scgi-wsgi embeds Python {BUILD_PYTHON_VERSION}"
            )));
        }
    }
    let python = dir.join("bin").join("python");
    if !python.exists() {
        return Err(fail("it has no bin/python".into()));
    }
    Ok(python)
}

#[cfg(not(any(Py_LIMITED_API, PyPy)))]
fn status_error(status: ffi::PyStatus) -> AppError {
    let message = if status.err_msg.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: a non-NULL err_msg is a static NUL-terminated string set by CPython.
        unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
            .to_string_lossy()
            .into_owned()
    };
    AppError::Interpreter(message)
}

/// Initialises Python as if `program` had been run with `argv`, without Python signal handlers,
/// then releases the GIL so worker threads can take it.
#[cfg(not(any(Py_LIMITED_API, PyPy)))]
pub fn initialize(program: Option<&Path>, argv: &[String]) -> Result<(), AppError> {
    let program = program
        .map(Path::to_path_buf)
        .or_else(|| Some(PathBuf::from(BUILD_PYTHON)).filter(|p| !BUILD_PYTHON.is_empty() && p.exists()));
    // SAFETY: the PyConfig API used as documented: initialised before use, every string
    // passed lives until the call that copies it returns, cleared once. Python is not yet
    // initialised (this runs once, before any thread attaches); afterwards this thread
    // releases the GIL it holds, as worker threads take it with `Python::attach`.
    unsafe {
        let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let result = (|| {
            if let Some(program) = &program {
                // getpath derives sys.prefix (and a virtualenv's site-packages) from this.
                let text = CString::new(program.as_os_str().as_encoded_bytes())
                    .map_err(|_| AppError::Interpreter("interpreter path contains a NUL byte".into()))?;
                let status =
                    ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, text.as_ptr());
                if ffi::PyStatus_Exception(status) != 0 {
                    return Err(status_error(status));
                }
            }
            let args: Vec<CString> = argv
                .iter()
                .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
                .collect();
            let mut pointers: Vec<*const std::ffi::c_char> = args.iter().map(|a| a.as_ptr()).collect();
            let status = ffi::PyConfig_SetBytesArgv(
                &mut config,
                pointers.len() as ffi::Py_ssize_t,
                pointers.as_mut_ptr(),
            );
            if ffi::PyStatus_Exception(status) != 0 {
                return Err(status_error(status));
            }
            let status = ffi::Py_InitializeFromConfig(&config);
            if ffi::PyStatus_Exception(status) != 0 {
                return Err(status_error(status));
            }
            Ok(())
        })();
        ffi::PyConfig_Clear(&mut config);
        result?;
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// A stable-ABI or PyPy build is only ever the extension module, which joins the Python that
/// imports it: neither has the API that starts an interpreter.
#[cfg(any(Py_LIMITED_API, PyPy))]
pub fn initialize(_program: Option<&Path>, _argv: &[String]) -> Result<(), AppError> {
    Err(AppError::Interpreter(
        "this scgi-wsgi is an extension module (stable ABI or PyPy): it runs inside the Python that imports it, and cannot start one".into(),
    ))
}

/// Joins the interpreter that is already running, for the pip-installed command (a Python
/// process imported this server): its `sys.prefix` and site-packages are the app's. A
/// virtualenv named with `-H` must be that one; one named only by `$VIRTUAL_ENV` (a shell's
/// activated virtualenv) is noted and otherwise left aside.
pub fn join(virtualenv: Option<&Path>, from_env: bool) -> Result<(), AppError> {
    let Some(dir) = virtualenv else {
        return Ok(());
    };
    let prefix = Python::attach(|py| -> PyResult<PathBuf> { py.import("sys")?.getattr("prefix")?.extract() })
        .map_err(|e| AppError::Interpreter(format!("cannot read sys.prefix: {e}")))?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(dir, &prefix) {
        return Ok(());
    }
    if from_env {
        warning!(
            "server",
            "VIRTUAL_ENV is {}, but this scgi-wsgi runs in the Python of {}: serving with that one's packages",
            dir.display(),
            prefix.display()
        );
        return Ok(());
    }
    // Not a virtualenv at all: the same message as the binary gives.
    read_pyvenv_cfg(dir)?;
    Err(AppError::Virtualenv {
        path: dir.to_path_buf(),
        reason: format!(
            "this scgi-wsgi runs in the Python of {}, which is another: run {}/bin/scgi-wsgi (pip install scgi-wsgi there), or leave out -H",
            prefix.display(),
            dir.display()
        ),
    })
}

/// Forks the way Python's `os.fork()` does, for a master that lives in a Python process (the
/// pip-installed command): the interpreter's at-fork hooks run and its locks and thread state
/// are made right in the child. Returns 0 in the child, as fork(2) does. Signals are blocked
/// only around the fork itself, once the GIL is held: a thread that keeps the GIL delays the
/// fork, not the delivery of a signal.
pub fn fork() -> std::io::Result<libc::pid_t> {
    Python::attach(|py| {
        let os = py
            .import("os")
            .map_err(|e| std::io::Error::other(super::app::one_line(py, &e)))?;
        fork::fork_with_signals_blocked(|| {
            os.call_method0("fork")
                .and_then(|pid| pid.extract::<libc::pid_t>())
                .map_err(|e| std::io::Error::other(super::app::one_line(py, &e)))
        })
    })
}

/// Configures Python's `logging` like the original: stderr (or syslog, facility daemon, when
/// `ASHD_USESYSLOG` is set) with the `scgi-wsgi[NAME]: LEVEL: message` format, level INFO.
/// Unlike the original, every line of a record carries the prefix (a traceback's too), and
/// `worker_tag` (`worker PID: ` in a worker under a master) follows the level, as on the
/// server's own lines (see `base::log`).
///
/// An app that never logs does not pay for importing `logging` (about half a MiB): unless it
/// is loaded already, the configuration happens the moment something first imports it, before
/// any code can use it, so apps see the same set-up either way.
pub fn configure_logging(py: Python<'_>, worker_tag: &str) -> PyResult<()> {
    // A namespace of its own: the hook and the function it calls stay out of `__main__`.
    let namespace = PyDict::new(py);
    namespace.set_item("__builtins__", py.import("builtins")?)?;
    namespace.set_item("_scgi_wsgi_log_tag", worker_tag)?;
    py.run(
        cr#"
import sys

def _scgi_wsgi_configure_logging(logging):
    import os
    import re

    control = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

    class PrefixEveryLine(logging.Formatter):
        """`scgi-wsgi[NAME]: LEVEL: ` on every line of a record, its traceback included."""

        def __init__(self, tag):
            logging.Formatter.__init__(self)
            self.tag = tag

        def format(self, record):
            text = logging.Formatter.format(self, record)
            prefix = "scgi-wsgi[%s]: %s: %s" % (record.name, record.levelname, self.tag)
            # Control characters as escapes, as on the server's lines: what a client sent
            # cannot rewrite what a reader of the log sees.
            escape = lambda m: "\\x%02x" % ord(m.group())
            return "\n".join(prefix + control.sub(escape, line) for line in text.splitlines() or [""])

    handler = None
    if "ASHD_USESYSLOG" in os.environ and os.path.exists("/dev/log"):
        import logging.handlers
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrefixEveryLine(_scgi_wsgi_log_tag))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

class _ScgiWsgiLoggingHook:
    """Configures `logging` as its first import finishes (see configure_logging)."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _scgi_wsgi_configure_logging(module)

        spec.loader.exec_module = exec_module
        return spec

if "logging" in sys.modules:
    _scgi_wsgi_configure_logging(sys.modules["logging"])
else:
    sys.meta_path.insert(0, _ScgiWsgiLoggingHook())
"#,
        Some(&namespace),
        None,
    )
}

/// Prepends the -p directories to sys.path, first given first.
pub fn prepend_paths(py: Python<'_>, paths: &[PathBuf]) -> PyResult<()> {
    let sys_path = py.import("sys")?.getattr("path")?;
    for (i, path) in paths.iter().enumerate() {
        let text = path.to_string_lossy();
        sys_path.call_method1("insert", (i, text.as_ref()))?;
    }
    Ok(())
}
