//! What every layer above may use: the validated configuration, errors, the log and the
//! access log, process-wide flags, forks, and the one checked-syscall helper.

pub mod access;
mod access_format;
pub mod config;
pub mod error;
pub mod fork;
pub mod log;
pub mod metrics;
pub mod process;
pub mod sys;
