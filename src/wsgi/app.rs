//! Importing the handler module and getting the WSGI app from it: `application` with -A,
//! otherwise whatever `wmain(*ARGS)` returns.

use pyo3::exceptions::PyModuleNotFoundError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::base::error::AppError;

/// One line describing a Python exception: `Type: message (at file:line)`.
pub fn one_line(py: Python<'_>, err: &PyErr) -> String {
    let kind = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let message = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    let mut line = if message.is_empty() {
        kind
    } else {
        format!("{kind}: {}", message.replace('\n', " "))
    };
    // The innermost frame says where it went wrong.
    let mut tb = err.traceback(py);
    while let Some(frame) = tb.clone() {
        match frame.getattr("tb_next") {
            Ok(next) if !next.is_none() => tb = next.cast_into().ok(),
            _ => break,
        }
    }
    if let Some(frame) = tb {
        let file: Option<String> = frame
            .getattr("tb_frame")
            .and_then(|f| f.getattr("f_code"))
            .and_then(|c| c.getattr("co_filename"))
            .and_then(|f| f.extract())
            .ok();
        let lineno: Option<u32> = frame.getattr("tb_lineno").and_then(|l| l.extract()).ok();
        if let (Some(file), Some(lineno)) = (file, lineno) {
            line.push_str(&format!(" (at {file} line {lineno})"));
        }
    }
    line
}

/// The full traceback of `err`, as Python would print it.
pub fn traceback_text(py: Python<'_>, err: &PyErr) -> String {
    // Type, value and traceback explicitly: on Python 3.11 a fetched error's value does not
    // carry its `__traceback__`, and formatting the value alone loses every frame.
    let formatted = py.import("traceback").and_then(|tb| {
        let trace = err
            .traceback(py)
            .map(|t| t.into_any())
            .unwrap_or_else(|| py.None().into_bound(py));
        tb.call_method1("format_exception", (err.get_type(py), err.value(py), trace))
            .and_then(|lines| lines.extract::<Vec<String>>())
    });
    match formatted {
        Ok(lines) => lines.concat(),
        Err(_) => one_line(py, err),
    }
}

/// Imports `module` and returns the WSGI application it provides.
pub fn load(
    py: Python<'_>,
    module: &str,
    use_application: bool,
    args: &[String],
) -> Result<Py<PyAny>, AppError> {
    let imported = py.import(module).map_err(|err| {
        let reason = if err.is_instance_of::<PyModuleNotFoundError>(py) {
            err.value(py).str().map(|s| s.to_string()).unwrap_or_default()
        } else {
            one_line(py, &err)
        };
        AppError::Import {
            module: module.to_string(),
            reason,
        }
    })?;
    let bad = |reason: String| AppError::BadApp {
        module: module.to_string(),
        reason,
    };
    let name = if use_application { "application" } else { "wmain" };
    let object = imported
        .getattr_opt(name)
        .map_err(|err| bad(one_line(py, &err)))?
        .ok_or(AppError::MissingName {
            module: module.to_string(),
            name,
            hint: if use_application {
                " (without -A, wmain() is called instead)"
            } else {
                " (with -A, its 'application' object is used instead)"
            },
        })?;
    let app = if use_application {
        object
    } else {
        let args = PyTuple::new(py, args).map_err(|err| bad(one_line(py, &err)))?;
        object
            .call1(args)
            .map_err(|err| bad(format!("wmain() raised {}", one_line(py, &err))))?
    };
    if !app.is_callable() {
        return Err(bad(format!(
            "the WSGI application ({}) is not callable: it is {}",
            if use_application {
                "'application'"
            } else {
                "what wmain() returned"
            },
            app.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )));
    }
    Ok(app.unbind())
}
