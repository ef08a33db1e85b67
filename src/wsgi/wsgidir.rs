//! The `scgi_wsgi.wsgidir` handler module (ashd's `ashd.wsgidir`), shipped inside the binary
//! so that `scgi-wsgi scgi_wsgi.wsgidir` works without installing anything.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// The module's Python source.
pub const SOURCE: &str = include_str!("wsgidir.py");

/// Registers the `scgi_wsgi` package and `scgi_wsgi.wsgidir` in `sys.modules`.
pub fn register(py: Python<'_>) -> PyResult<()> {
    let modules = py.import("sys")?.getattr("modules")?;
    let package = match modules.get_item("scgi_wsgi") {
        Ok(existing) => existing,
        Err(_) => {
            let package = PyModule::new(py, "scgi_wsgi")?;
            // An empty __path__ makes it a package whose submodules all live in sys.modules.
            package.setattr("__path__", pyo3::types::PyList::empty(py))?;
            modules.set_item("scgi_wsgi", &package)?;
            package.into_any()
        }
    };
    let source = CString::new(SOURCE).expect("wsgidir.py holds no NUL byte");
    let module = PyModule::from_code(py, &source, c"<scgi-wsgi>/wsgidir.py", c"scgi_wsgi.wsgidir")?;
    modules.set_item("scgi_wsgi.wsgidir", &module)?;
    package.setattr("wsgidir", module)?;
    Ok(())
}
