//! Process set-up around the server: working directory, umask, pid file, and switching to an
//! unprivileged user after the listening socket is open.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::base::log::warning;
use crate::base::sys;

/// The identity to switch to, resolved from `--user` / `--group` while names can still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name (or number) as given, for messages.
    pub user: Option<String>,
    /// User id to switch to.
    pub uid: Option<libc::uid_t>,
    /// Group id to switch to.
    pub gid: libc::gid_t,
    /// The group as given or found, for messages.
    pub group: String,
}

/// Sets the umask and changes directory, first of all, so later relative paths follow.
/// Ignores SIGXFSZ, as Python itself does at start-up (and so the original server, the
/// pip-installed command and the external worker): a write past RLIMIT_FSIZE fails with
/// EFBIG, an OSError the app sees, instead of killing the process with every request in it.
pub fn early(umask: Option<u32>, chdir: Option<&Path>) -> Result<(), String> {
    // SAFETY: setting a signal's action to ignored has no memory-safety requirement.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if let Some(mask) = umask {
        // SAFETY: umask has no preconditions and cannot fail.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    if let Some(dir) = chdir {
        std::env::set_current_dir(dir).map_err(|e| format!("--chdir {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// The (uid, primary gid) of a passwd entry, looked up by name or (`by_uid`) by number.
/// (The `get*_r` calls return their error number instead of setting errno; a missing entry
/// and an error both leave `result` NULL, which is all that matters here.)
fn passwd_entry(name: &CString, by_uid: Option<libc::uid_t>) -> Option<(libc::uid_t, libc::gid_t)> {
    // SAFETY: a zeroed passwd is valid to be filled in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to a live value or buffer of the length passed; the strings
    // the entry points at live in `buf`, which outlives their use below.
    let rc = unsafe {
        match by_uid {
            Some(uid) => libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result),
            None => libc::getpwnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            ),
        }
    };
    (rc == 0 && !result.is_null()).then_some((entry.pw_uid, entry.pw_gid))
}

fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    let c_name = CString::new(name).map_err(|_| format!("--user {name:?}: has a NUL byte"))?;
    if let Some(found) = passwd_entry(&c_name, None) {
        return Ok(found);
    }
    if let Ok(uid) = name.parse::<libc::uid_t>() {
        // A number with no passwd entry: its group is then its own number.
        let gid = passwd_entry(&c_name, Some(uid)).map_or(uid, |(_, gid)| gid);
        return Ok((uid, gid));
    }
    Err(format!("--user {name}: no such user"))
}

fn lookup_group(name: &str) -> Result<libc::gid_t, String> {
    let c_name = CString::new(name).map_err(|_| format!("--group {name:?}: has a NUL byte"))?;
    // SAFETY: a zeroed group is valid to be filled in.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `passwd_entry` (the error number is returned, not set).
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(entry.gr_gid);
    }
    name.parse::<libc::gid_t>()
        .map_err(|_| format!("--group {name}: no such group"))
}

/// Resolves `--user` / `--group`; `None` when neither is given.
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, primary) = match user {
        Some(name) => {
            let (uid, gid) = lookup_user(name)?;
            (Some(uid), gid)
        }
        // SAFETY: getgid has no preconditions and cannot fail.
        None => (None, unsafe { libc::getgid() }),
    };
    let (gid, group) = match group {
        Some(name) => (lookup_group(name)?, name.to_string()),
        None => (primary, primary.to_string()),
    };
    Ok(Some(Identity {
        user: user.map(str::to_string),
        uid,
        gid,
        group,
    }))
}

/// Switches to `identity`: supplementary groups, then group, then user (after setuid the
/// others could no longer be changed). Fails with the reason when the process may not.
pub fn drop_privileges(identity: &Identity) -> Result<(), String> {
    let before = sys::euid();
    let fail = |what: String, e: io::Error| {
        format!("{what}: {e} (running as uid {before}; only root can switch users)")
    };
    // SAFETY: one gid, read from a live value.
    let groups = sys::check(unsafe { libc::setgroups(1, &identity.gid) });
    if let (Err(e), 0) = (groups, before) {
        let what = format!("cannot set the supplementary groups to {}", identity.group);
        return Err(fail(what, e));
    }
    // SAFETY: no memory is passed.
    if let Err(e) = sys::check(unsafe { libc::setgid(identity.gid) }) {
        return Err(fail(format!("cannot switch to group {}", identity.group), e));
    }
    if let Some(uid) = identity.uid {
        // SAFETY: no memory is passed.
        if let Err(e) = sys::check(unsafe { libc::setuid(uid) }) {
            let name = identity.user.as_deref().unwrap_or("?");
            return Err(fail(format!("cannot switch to user {name} (uid {uid})"), e));
        }
        // Prove the switch cannot be undone.
        // SAFETY: no memory is passed.
        if uid != 0 && sys::check(unsafe { libc::setuid(0) }).is_ok() {
            return Err("switched user, but could switch back to root; refusing to run".into());
        }
    }
    Ok(())
}

/// Checks, as the user the process now runs as, that the Python installation at `python`
/// (its executable) can be reached; otherwise Python would fail to start with a cryptic error.
pub fn check_python_reachable(python: &Path) -> Result<(), String> {
    if python.as_os_str().is_empty() {
        return Ok(());
    }
    let Ok(c_path) = CString::new(python.as_os_str().as_encoded_bytes()) else {
        return Ok(());
    };
    // SAFETY: `c_path` is a live NUL-terminated string.
    let Err(e) = sys::check(unsafe { libc::access(c_path.as_ptr(), libc::X_OK) }) else {
        return Ok(());
    };
    if e.raw_os_error() != Some(libc::EACCES) {
        // Not there at all (a binary moved to another machine): Python finds its own way.
        return Ok(());
    }
    Err(format!(
        "the Python installation ({}) is not reachable as uid {} ({e}); \
         install Python where that user can read it, or choose another --user",
        python.display(),
        sys::euid()
    ))
}

/// A pid file written at start and removed at exit (when the process may still remove it).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`.
    pub fn write(path: &Path) -> Result<PidFile, String> {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        std::fs::write(&absolute, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write the pid file {}: {e}", path.display()))?;
        Ok(PidFile { path: absolute })
    }

    /// Removes the file, if it still names this process.
    pub fn remove(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warning!(
                    "server",
                    "cannot remove the pid file {}: {e} (after --user, its directory must be writable by that user)",
                    self.path.display()
                );
            }
        }
    }
}

/// Lets the process hold as many connections as the hard limit allows.
pub(super) fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live rlimit to fill in.
    if sys::check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }).is_ok()
        && limit.rlim_cur < limit.rlim_max
    {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above. Should it fail, the soft limit stays: nothing to undo.
        let _ = sys::check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) });
    }
}

/// glibc's malloc returns memory to the kernel once 128 KiB lie free at the top of a heap,
/// and moves its mmap threshold as it goes. A server that allocates and frees request bodies
/// and responses of tens of KiB on several threads then takes fresh pages, page faults and
/// TLB-shootdown interrupts on every request: about a fifth of the CPU time of a 64 KiB echo.
/// Fixed thresholds keep up to 1 MiB free per heap and map only blocks of 1 MiB or more.
///
/// Each heap keeping that much makes their number matter: glibc makes up to 8 per CPU, one
/// for each new thread, each with pages of its own. No more threads than CPUs run at once, so
/// one heap per CPU is kept, plus the event loop's. With 32 threads on 2 CPUs that is about
/// 0.1 MiB less resident, and 3 heaps instead of 16 that may each keep 1 MiB free.
///
/// A threshold or heap count set in the environment (`MALLOC_TRIM_THRESHOLD_` and the like,
/// `GLIBC_TUNABLES`) leaves malloc as it is.
///
/// Called once the interpreter is up and the app imported, not at start: CPython's object
/// allocator takes its address map (zeroed blocks of 256 and 128 KiB, mostly never written)
/// during initialisation. Under the default threshold those are fresh mappings that stay
/// sparse; from the heap they would cost about 0.2 MiB of resident memory per process.
/// Another thread (the access log's, or one the app started) may be allocating meanwhile:
/// it sees the old settings or the new ones, both valid, and a heap it has already made
/// stays in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn tune_malloc() {
    const KEEP: libc::c_int = 1024 * 1024;
    let user_set = [
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_ARENA_MAX",
        "MALLOC_ARENA_TEST",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if !user_set {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let heaps = libc::c_int::try_from(cpus + 1).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters, under the main arena's lock.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP);
            libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP);
            libc::mallopt(libc::M_ARENA_MAX, heaps);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn tune_malloc() {}
