//! SIGUSR2: logs the Python stack of every request running in the app, and goes on (a
//! master passes the signal on to its workers). Where a request hangs, its stack says so.

use std::io::{self, Read};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::thread;

use crate::base::log::info;
use crate::pool::watchdog::{StackSource, STACK_TIMEOUT};

/// What SIGUSR2 runs, once the app side is up.
type Dump = Box<dyn Fn() + Send + Sync>;

static DUMP: OnceLock<Dump> = OnceLock::new();

/// Catches SIGUSR2 from now on (its default would end the process), on a thread of its own;
/// the stacks are logged once [`set`] has said where they come from.
pub fn install() -> io::Result<()> {
    let (mut reader, writer) = UnixStream::pair()?;
    writer.set_nonblocking(true)?;
    let fd = writer.into_raw_fd();
    // SAFETY: the handler only calls write(2), which is async-signal-safe, on a descriptor
    // that stays open for the life of the process; a full pipe already holds a wake-up.
    unsafe {
        signal_hook::low_level::register(libc::SIGUSR2, move || {
            libc::write(fd, b"!".as_ptr().cast(), 1);
        })
    }?;
    thread::Builder::new().name("stack-dump".into()).spawn(move || {
        let mut buf = [0u8; 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => match DUMP.get() {
                    Some(dump) => dump(),
                    None => info!("server", "SIGUSR2: the app is not loaded yet; no stacks to show"),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    })?;
    Ok(())
}

/// Says where SIGUSR2 finds the busy requests (`busy`: their runners, see `StackSource`) and
/// their stacks; `what` names a runner in the log (`worker thread`, `request`).
pub fn set(
    busy: impl Fn() -> Vec<u64> + Send + Sync + 'static,
    source: Arc<dyn StackSource>,
    what: &'static str,
) {
    let _ = DUMP.set(Box::new(move || {
        let runners = busy();
        if runners.is_empty() {
            return info!("server", "SIGUSR2: no request is running in the app");
        }
        let stacks = source.stacks(&runners, STACK_TIMEOUT);
        // A request may have ended while the stacks were read: its runner is left out.
        let still_busy = busy();
        let mut told = false;
        for runner in &runners {
            match stacks.iter().find(|(r, _)| r == runner) {
                Some((_, stack)) => info!(
                    "server",
                    "SIGUSR2: {what} {runner} runs a request; its Python stack, most recent call last:\n{}",
                    stack.trim_end()
                ),
                None if !still_busy.contains(runner) => continue,
                None => info!(
                    "server",
                    "SIGUSR2: {what} {runner} runs a request; its Python stack could not be read (it runs no Python now, or the interpreter was not let go of within {:.0} s)",
                    STACK_TIMEOUT.as_secs_f64()
                ),
            }
            told = true;
        }
        if !told {
            info!("server", "SIGUSR2: no request is running in the app any more");
        }
    }));
}
