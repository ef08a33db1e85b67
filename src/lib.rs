//! scgi-wsgi: serve Python WSGI applications over SCGI.
//!
//! The crate is built in layers; each module imports only from the layers below it (a layer
//! below reaches one above only through a trait it defines itself, such as the loop's
//! `Dispatcher` or the pool's `RequestHandler`). Bottom to top:
//!
//! - `proto`: pure byte logic (SCGI head parser, SCRIPT_NAME/PATH_INFO rule, CGI environ
//!   rules and the server's own answers); imports nothing of the crate.
//! - `base`: validated configuration, errors, log, access log, metrics counters, process-wide
//!   flags, forks, the one checked-syscall helper.
//! - `seam`: what the loop and the app side share: `Request`, `Outbox`, `Notifier`.
//! - `net`: listening sockets, and one connection's state machine (where a request is
//!   assembled).
//! - `server`: the event loop, its timers and signals, the `Dispatcher` trait it drives the
//!   app side through, and the doorway where idle workers accept.
//! - `pool`: the `-t` models on worker threads (a `Dispatcher`), their monitor, the wedge
//!   rule and the recycling watch; the `RequestHandler` trait the app side implements.
//! - `wsgi` and `external`: the app side, embedded (pyo3) or in a worker process of another
//!   interpreter; neither imports the other.
//! - `app`: command line, master process, process set-up, start-up.
//! - `client`, beside them all: the `scgi-request` program (one SCGI request, for a look or
//!   a health check); imports nothing of the crate.
//!
//! The modules are private: what is public below is what the binary, the Python extension
//! module (`pyext/`), the tests, benches and fuzz targets use.

mod app;
mod base;
mod client;
mod external;
mod net;
mod pool;
mod proto;
mod seam;
mod server;
mod wsgi;

pub use app::{default_sigint, main, run_in_python};
pub use base::config::Limits;
pub use client::main as request_main;
pub use net::conn::{Conn, Phase, ReadOutcome};
pub use net::listen::Stream;
pub use proto::cgi::Answer;
pub use proto::scgi;
pub use seam::request::Body;

/// The embedded interpreter's environ, for the fuzz target that checks it against the
/// interpreter.
pub mod fuzzing {
    pub use crate::wsgi::environ::{build, EnvironConsts};
    pub use crate::wsgi::interp::initialize;
}
