//! Process set-up around the server: working directory, umask, pid file, and switching to an
//! unprivileged user after the listening socket is open.

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};

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
pub fn early(umask: Option<u32>, chdir: Option<&Path>) -> Result<(), String> {
    if let Some(mask) = umask {
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    if let Some(dir) = chdir {
        std::env::set_current_dir(dir).map_err(|e| format!("--chdir {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn lookup_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), String> {
    let c_name = CString::new(name).map_err(|_| format!("--user {name:?}: has a NUL byte"))?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok((entry.pw_uid, entry.pw_gid));
    }
    if let Ok(uid) = name.parse::<libc::uid_t>() {
        // A number with no passwd entry: its group is then its own number.
        let rc = unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut result) };
        let gid = if rc == 0 && !result.is_null() {
            entry.pw_gid
        } else {
            uid
        };
        return Ok((uid, gid));
    }
    Err(format!("--user {name}: no such user"))
}

fn lookup_group(name: &str) -> Result<libc::gid_t, String> {
    let c_name = CString::new(name).map_err(|_| format!("--group {name:?}: has a NUL byte"))?;
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
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
    let before = unsafe { libc::geteuid() };
    let fail = |what: String| {
        let e = io::Error::last_os_error();
        format!("{what}: {e} (running as uid {before}; only root can switch users)")
    };
    unsafe {
        if libc::setgroups(1, &identity.gid) != 0 && before == 0 {
            return Err(fail(format!(
                "cannot set the supplementary groups to {}",
                identity.group
            )));
        }
        if libc::setgid(identity.gid) != 0 {
            return Err(fail(format!("cannot switch to group {}", identity.group)));
        }
        if let Some(uid) = identity.uid {
            if libc::setuid(uid) != 0 {
                let name = identity.user.as_deref().unwrap_or("?");
                return Err(fail(format!("cannot switch to user {name} (uid {uid})")));
            }
            // Prove the switch cannot be undone.
            if uid != 0 && libc::setuid(0) == 0 {
                return Err("switched user, but could switch back to root; refusing to run".into());
            }
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
    if unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EACCES) {
        // Not there at all (a binary moved to another machine): Python finds its own way.
        return Ok(());
    }
    Err(format!(
        "the Python installation ({}) is not reachable as uid {} ({e}); \
         install Python where that user can read it, or choose another --user",
        python.display(),
        unsafe { libc::geteuid() }
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
                crate::warning!(
                    "server",
                    "cannot remove the pid file {}: {e} (after --user, its directory must be writable by that user)",
                    self.path.display()
                );
            }
        }
    }
}

/// The conventional name of a signal (`SIGTERM`), when it is one of the common ones.
pub fn signal_abbrev(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}

/// The name of a signal, for log lines (`SIGKILL`), or its number.
pub fn signal_name(signal: i32) -> String {
    let name = unsafe { libc::strsignal(signal) };
    let described = if name.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    };
    let abbrev = signal_abbrev(signal).unwrap_or("");
    match (abbrev, described.is_empty()) {
        ("", true) => format!("signal {signal}"),
        ("", false) => format!("signal {signal} ({described})"),
        (abbrev, _) => format!("signal {signal} ({abbrev})"),
    }
}
