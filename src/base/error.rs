//! Error types. Each message names the cause plainly; start-up errors end the process with status 1.

use std::io;
use std::path::PathBuf;

/// A command-line value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An option's value is malformed or out of range.
    #[error("invalid value {value:?} for {option}: {reason}")]
    Invalid {
        /// The option, as the user wrote it.
        option: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The -t handling model is not one we know.
    #[error("unknown handling model {0:?} (known: free, pool, rplex, single)")]
    UnknownModel(String),
    /// A -t parameter the model does not take.
    #[error("handling model {model:?} has no parameter {param:?} (it takes: {known})")]
    UnknownParameter {
        /// The model named.
        model: String,
        /// The parameter given.
        param: String,
        /// The parameters the model takes.
        known: &'static str,
    },
    /// A -t parameter whose value is unusable.
    #[error("handling model {model:?}: parameter {param}={value:?} is invalid: {reason}")]
    BadParameter {
        /// The model named.
        model: String,
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Failure to set up the listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// No -T or -u, and fd 0 is not a listening socket.
    #[error(
        "standard input (fd 0) is not a listening socket ({0}); \
         give -T [HOST:]PORT to listen on TCP or -u PATH for a Unix socket, \
         or start this program from callscgi"
    )]
    Fd0NotListening(String),
    /// LISTEN_FDS/LISTEN_PID name this process, but fd 3 is not a listening socket.
    #[error("LISTEN_FDS and LISTEN_PID say a listening socket was passed on fd 3, but {0}")]
    ActivatedNotListening(String),
    /// fd 0 is a socket of a family we cannot serve.
    #[error("standard input (fd 0) is a socket of unsupported address family {0}")]
    Fd0Family(i32),
    /// The -T host did not resolve.
    #[error("cannot resolve {host}:{port}: {source}")]
    Resolve {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
        /// What the resolver said.
        source: io::Error,
    },
    /// bind/listen failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address, as text.
        addr: String,
        /// The system error.
        source: io::Error,
    },
    /// A live server already answers on the Unix socket path.
    #[error("{0} is in use by a running server; refusing to replace it")]
    UnixInUse(PathBuf),
    /// The Unix socket path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    UnixNotSocket(PathBuf),
    /// Other I/O failure while setting up the socket.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The system error.
        source: io::Error,
    },
}

/// Failure to load the Python side.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The interpreter could not be initialised.
    #[error("cannot start Python: {0}")]
    Interpreter(String),
    /// The virtualenv is unusable.
    #[error("cannot use virtualenv {path}: {reason}")]
    Virtualenv {
        /// Its directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The handler module could not be imported.
    #[error("cannot import handler module {module:?}: {reason}")]
    Import {
        /// Module name.
        module: String,
        /// The Python error, on one line.
        reason: String,
    },
    /// The module lacks `application` or `wmain`.
    #[error("handler module {module:?} has no {name:?}{hint}")]
    MissingName {
        /// Module name.
        module: String,
        /// The missing attribute.
        name: &'static str,
        /// A hint about -A.
        hint: &'static str,
    },
    /// Calling wmain failed, or what we got is not callable.
    #[error("handler module {module:?}: {reason}")]
    BadApp {
        /// Module name.
        module: String,
        /// What went wrong, on one line.
        reason: String,
    },
}
