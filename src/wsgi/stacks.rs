//! The Python stacks of the embedded interpreter's threads, for a request that runs too long
//! (`--request-timeout`) and for SIGUSR2. They are read on a thread of their own, which must
//! take the GIL: an app that never lets go of it cannot block the caller past its timeout.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::pool::watchdog::StackSource;

/// Reads stacks of the embedded interpreter's threads.
#[derive(Debug, Default)]
pub struct PythonStacks;

impl StackSource for PythonStacks {
    fn stacks(&self, runners: &[u64], timeout: Duration) -> Vec<(u64, String)> {
        let (sender, receiver) = mpsc::channel();
        let wanted = runners.to_vec();
        let spawned = thread::Builder::new().name("stack-reader".into()).spawn(move || {
            let stacks = Python::attach(|py| read(py, &wanted)).unwrap_or_default();
            let _ = sender.send(stacks);
        });
        if spawned.is_err() {
            return Vec::new();
        }
        receiver.recv_timeout(timeout).unwrap_or_default()
    }
}

/// The stacks of the threads `idents` (those that are running Python code now).
fn read(py: Python<'_>, idents: &[u64]) -> PyResult<Vec<(u64, String)>> {
    let frames = py.import("sys")?.call_method0("_current_frames")?;
    let frames = frames.cast::<PyDict>()?;
    let traceback = py.import("traceback")?;
    let mut stacks = Vec::new();
    for &ident in idents {
        let Some(frame) = frames.get_item(ident)? else {
            continue;
        };
        let lines = traceback.call_method1("format_stack", (frame,))?;
        let text: Vec<String> = lines.cast::<PyList>()?.extract()?;
        stacks.push((ident, text.concat()));
    }
    Ok(stacks)
}
