//! The `scgi_wsgi.wsgidir` handler module (ashd's `ashd.wsgidir`), shipped inside the binary
//! so that `scgi-wsgi scgi_wsgi.wsgidir` works without installing anything.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

/// The module's Python source.
pub const SOURCE: &str = include_str!("../../python/scgi_wsgi/wsgidir.py");

/// Registers the `scgi_wsgi` package in `sys.modules`, and `scgi_wsgi.wsgidir` as a module
/// that is made when first imported: an app that does not use it does not pay for its imports.
pub fn register(py: Python<'_>) -> PyResult<()> {
    let modules = py.import("sys")?.getattr("modules")?;
    if modules.get_item("scgi_wsgi").is_err() {
        let package = PyModule::new(py, "scgi_wsgi")?;
        // An empty __path__ makes it a package; its submodules come from the finder below.
        package.setattr("__path__", pyo3::types::PyList::empty(py))?;
        modules.set_item("scgi_wsgi", &package)?;
    }
    let globals = PyDict::new(py);
    globals.set_item("SOURCE", SOURCE)?;
    py.run(
        cr#"
import sys

class _ScgiWsgiFinder:
    """Makes scgi_wsgi.wsgidir from the source inside the binary when it is imported."""

    NAME = "scgi_wsgi.wsgidir"
    ORIGIN = "<scgi-wsgi>/wsgidir.py"

    def find_spec(self, name, path=None, target=None):
        if name != self.NAME:
            return None
        return sys.modules["_frozen_importlib"].ModuleSpec(name, self, origin=self.ORIGIN)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = self.ORIGIN
        exec(compile(SOURCE, self.ORIGIN, "exec"), module.__dict__)

sys.meta_path.append(_ScgiWsgiFinder())
"#,
        Some(&globals),
        None,
    )
}
