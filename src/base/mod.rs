//! What every layer above may use: the validated configuration, errors, the log and the
//! access log, process-wide flags, and the one checked-syscall helper.

pub mod access;
pub mod config;
pub mod error;
pub mod log;
pub mod process;
pub mod sys;
