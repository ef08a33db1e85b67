//! Everything that touches Python: the interpreter, the app, the environ, wsgi.input and the
//! response. Nothing here knows about sockets beyond the [`Outbox`](crate::seam::outbox::Outbox)
//! a request carries.

pub mod app;
pub mod environ;
pub mod file_wrapper;
pub mod input;
pub mod interp;
pub mod response;
pub mod rplex;
pub mod stacks;
pub mod wsgidir;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

use crate::base::log::error;
use crate::pool::RequestHandler;
use crate::proto::pathinfo;
use crate::seam::outbox::End;
use crate::seam::request::Request;

/// Serves requests with one WSGI application object.
pub struct WsgiHandler {
    app: Py<PyAny>,
    consts: environ::EnvironConsts,
    /// rplex: the response thread that iterates responses.
    plex: Option<rplex::ResponsePlex>,
}

impl WsgiHandler {
    /// Wraps a loaded app; `multithread`/`multiprocess` go into every environ.
    pub fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        multithread: bool,
        multiprocess: bool,
    ) -> PyResult<WsgiHandler> {
        Ok(WsgiHandler {
            app,
            consts: environ::EnvironConsts::new(py, multithread, multiprocess)?,
            plex: None,
        })
    }

    /// Starts rplex's response thread: from now on, responses are iterated there.
    pub fn start_response_thread(&mut self) -> std::io::Result<()> {
        self.plex = Some(rplex::ResponsePlex::start()?);
        Ok(())
    }
}

impl WsgiHandler {
    /// Names the app's mount point (`--script-name`); see [`pathinfo`] for the rule.
    pub fn with_mount(mut self, mount: Option<pathinfo::Mount>) -> WsgiHandler {
        self.consts.set_mount(mount);
        self
    }
}

impl RequestHandler for WsgiHandler {
    fn handle(&self, py: Python<'_>, request: Request) {
        let outbox = std::sync::Arc::clone(&request.outbox);
        let submit = |job| {
            if let Some(plex) = &self.plex {
                plex.submit(job);
            }
        };
        let handoff: Option<&dyn Fn(response::PlexJob)> = self.plex.as_ref().map(|_| &submit as _);
        let served = catch_unwind(AssertUnwindSafe(|| {
            response::serve(py, self.app.bind(py), &self.consts, request, handoff)
        }));
        if served.is_err() {
            error!(
                "wsgi",
                "internal error while serving a request; connection dropped"
            );
            outbox.finish(End::Abort);
        }
    }
}
