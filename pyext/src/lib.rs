//! `scgi_wsgi._core`: the server as a Python extension module. The `scgi-wsgi` command and
//! `python -m scgi_wsgi` of a virtualenv call `main` with their command line; the server then
//! runs in that Python process, on the virtualenv's interpreter. The `scgi-request` command
//! calls `request`.

use pyo3::prelude::*;

/// The module Python imports as `scgi_wsgi._core`. It needs the GIL (the server's worker
/// threads rely on it between Python calls): on a free-threaded Python, importing it turns the
/// GIL on, as for any module that does not declare otherwise.
#[pymodule(gil_used = true)]
mod _core {
    use std::ffi::OsString;

    use pyo3::prelude::*;

    /// Runs scgi-wsgi with the command line `argv` (the program name first) in this process,
    /// then ends the process with the server's exit status: it does not return.
    #[pyfunction]
    fn main(py: Python<'_>, argv: Vec<OsString>) -> PyResult<()> {
        scgi_wsgi::run_in_python(py, argv)
    }

    /// Runs scgi-request with the command line `argv` (the program name first): one SCGI
    /// request, the response printed. Returns the exit status.
    #[pyfunction]
    fn request(py: Python<'_>, argv: Vec<OsString>) -> u8 {
        // Python's SIGINT handler only sets a flag that nobody looks at while the request
        // runs without the GIL: Ctrl-C must end the command, as it ends the binary.
        scgi_wsgi::default_sigint(py);
        py.detach(|| scgi_wsgi::request_main(argv))
    }
}
