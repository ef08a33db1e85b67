//! What a worker thread runs a request through: the app side implements it, above this layer
//! (the embedded WSGI handler; the recycling watch wraps it).

use pyo3::Python;

use crate::seam::request::Request;

/// Runs one complete request on the calling (attached) thread.
pub trait RequestHandler: Send + Sync + 'static {
    /// Runs the app for `request` and sends its response through the request's outbox.
    fn handle(&self, py: Python<'_>, request: Request);
}
