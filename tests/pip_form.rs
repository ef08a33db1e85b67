//! The pip-installed form: the `scgi-wsgi` command of a virtualenv the checkout was
//! `pip install`ed into runs the server inside that virtualenv's Python, with nothing to set.
//!
//! The virtualenv is the one `SCGI_WSGI_TEST_COMMAND` names the command of, else
//! `target/pip-venv`, which tests/run makes afresh from the checkout (`pip install ./`) and
//! into which it installs `tests/packages/pip_only`, a package no other Python has.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// The virtualenv under test.
fn venv() -> PathBuf {
    let venv =
        pip_virtualenv().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pip-venv"));
    assert!(
        venv.join("bin/scgi-wsgi").exists(),
        "no {}: tests/run makes it (python3 -m venv, then pip install ./ from the checkout)",
        venv.join("bin/scgi-wsgi").display()
    );
    venv
}

/// Starts `program args` on a fresh port, with no virtualenv named anywhere (and only `env`
/// added), in `dir`.
fn spawn(program: &Path, pre: &[&str], args: &[&str], dir: &Path, env: &[(&str, &str)]) -> (Child, Addr) {
    let port = free_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(program)
        .args(pre)
        .args(["-T", &listen])
        .args(args)
        .current_dir(dir)
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONHOME")
        .env_remove("PYTHONPATH")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    (child, Addr::Tcp(([127, 0, 0, 1], port).into()))
}

fn json(response: &Response) -> serde_json::Value {
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

/// The app's sys.path, from /interp.
fn sys_path(info: &serde_json::Value) -> Vec<&str> {
    info["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

fn same_file(a: &str, b: &Path) -> bool {
    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

#[test]
fn with_nothing_set_the_app_sees_the_virtualenv_and_its_packages() {
    let venv = venv();
    let apps = apps_dir_str();
    let (child, addr) = spawn(
        &venv.join("bin/scgi-wsgi"),
        &[],
        &["-p", &apps, "-A", "bridgeapp"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &[],
    );
    let server = Server::adopt(child, addr);
    let info = json(&server.get("/interp"));
    let prefix = info["prefix"].as_str().unwrap();
    assert!(
        same_file(prefix, &venv),
        "sys.prefix {prefix}, not {}",
        venv.display()
    );
    assert_eq!(
        info["pip_only"], "installed in the pip-installed command's virtualenv",
        "{info}"
    );
    // Only that virtualenv has the package: the Python it was made from cannot import it.
    let base = info["base_prefix"].as_str().unwrap();
    let elsewhere = Command::new(Path::new(base).join("bin/python3"))
        .args(["-c", "import pip_only_mark"])
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(!elsewhere.status.success(), "{base} imports pip_only_mark too");
    // The process is the virtualenv's Python, the server loaded into it from site-packages.
    let exe = std::fs::read_link(format!("/proc/{}/exe", server.pid())).unwrap();
    assert!(
        same_file(info["executable"].as_str().unwrap(), &exe),
        "{info} {exe:?}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let core = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains("/scgi_wsgi/_core"))
        .unwrap_or_else(|| panic!("no scgi_wsgi/_core module mapped:\n{maps}"));
    assert!(
        Path::new(core).starts_with(std::fs::canonicalize(&venv).unwrap()),
        "{core} is not in {}",
        venv.display()
    );
    // sys.path: -p first, then Python's own; not the command's bin/ directory.
    let paths = sys_path(&info);
    assert_eq!(paths[0], apps);
    assert!(
        !paths.iter().any(|p| Path::new(p) == venv.join("bin")),
        "{paths:?}"
    );
}

#[test]
fn the_example_app_answers_from_the_checkout() {
    let venv = venv();
    let (child, addr) = spawn(
        &venv.join("bin/scgi-wsgi"),
        &[],
        &["-A", "-p", "examples", "hello"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &[],
    );
    let server = Server::adopt(child, addr.clone());
    let response = server.get("/greeting");
    assert_eq!(response.status, 200, "{}", server.stderr_text());
    assert_eq!(response.text(), "Hello, world! You asked for /greeting.\n");
    // The virtualenv's scgi-request, as the README's first command uses it.
    let Addr::Tcp(socket) = addr else { unreachable!() };
    let asked = Command::new(venv.join("bin/scgi-request"))
        .args(["-i", &socket.to_string(), "/greeting?reader"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&asked.stdout);
    assert_eq!(
        asked.status.code(),
        Some(0),
        "{shown} {}",
        String::from_utf8_lossy(&asked.stderr)
    );
    assert!(shown.starts_with("Status: 200 OK\r\n"), "{shown}");
    assert!(
        shown.ends_with("\r\n\r\nHello, reader! You asked for /greeting.\n"),
        "{shown}"
    );
    let missing = Command::new(venv.join("bin/scgi-request"))
        .args(["-q", "/nonexistent/scgi.sock"])
        .status()
        .unwrap();
    assert_eq!(missing.code(), Some(2), "no server there: exit status 2");
}

#[test]
fn python_dash_m_is_the_same_command() {
    let venv = venv();
    let python = venv.join("bin/python");
    let version = |command: &mut Command| {
        let out = command.arg("--version").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let binary = version(&mut Command::new(BIN));
    assert_eq!(version(Command::new(&python).args(["-m", "scgi_wsgi"])), binary);
    assert_eq!(version(&mut Command::new(venv.join("bin/scgi-wsgi"))), binary);
    let help = Command::new(&python)
        .args(["-m", "scgi_wsgi", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("Usage: scgi-wsgi "), "{help}");

    // Serving: the working directory (which -m puts on sys.path) is not the app's path.
    let dir = TempDir::new("dash-m");
    std::fs::write(dir.path().join("cwdonly.py"), "application = None\n").unwrap();
    let apps = apps_dir_str();
    let (child, addr) = spawn(
        &python,
        &["-m", "scgi_wsgi"],
        &["-p", &apps, "-A", "bridgeapp"],
        dir.path(),
        &[],
    );
    let server = Server::adopt(child, addr);
    let info = json(&server.get("/interp"));
    assert!(same_file(info["prefix"].as_str().unwrap(), &venv), "{info}");
    let paths = sys_path(&info);
    assert_eq!(paths[0], apps);
    assert!(
        !paths.iter().any(|p| p.is_empty() || same_file(p, dir.path())),
        "the working directory is on sys.path: {paths:?}"
    );
}

/// Under `-P` (or `-I`, or PYTHONSAFEPATH) Python puts no directory of its own first on
/// sys.path: the first entry is a real one (here PYTHONPATH's, the working directory too), and
/// it stays.
#[test]
fn a_safe_path_keeps_the_first_entry() {
    let venv = venv();
    let apps = apps_dir_str();
    let (child, addr) = spawn(
        &venv.join("bin/python"),
        &["-P", "-m", "scgi_wsgi"],
        &["-A", "bridgeapp"],
        Path::new(&apps),
        &[("PYTHONPATH", &apps)],
    );
    let server = Server::adopt(child, addr);
    let info = json(&server.get("/interp"));
    assert_eq!(sys_path(&info)[0], apps);
}

/// `multiprocessing`'s spawn and forkserver start methods (forkserver is the default on Linux
/// from Python 3.14) have each child import the parent's main module again: the `scgi-wsgi`
/// script, or under `python -m scgi_wsgi` the `scgi_wsgi.__main__` module. Neither may start
/// a second server in the child.
#[test]
fn multiprocessing_children_do_not_start_the_server_again() {
    let venv = venv();
    let dir = TempDir::new("multiprocessing");
    std::fs::write(
        dir.path().join("mpapp.py"),
        "import multiprocessing\n\
         \n\
         def square(n):\n    return n * n\n\
         \n\
         def application(environ, start_response):\n    \
         with multiprocessing.get_context('spawn').Pool(1) as pool:\n        \
         result = pool.apply(square, (7,))\n    \
         start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
         return [b'%d\\n' % result]\n",
    )
    .unwrap();
    let module_dir = dir.path().to_str().unwrap();
    for (program, pre) in [
        ("bin/scgi-wsgi", &[][..]),
        ("bin/python", &["-m", "scgi_wsgi"][..]),
    ] {
        let (child, addr) = spawn(
            &venv.join(program),
            pre,
            &["-p", module_dir, "-A", "mpapp"],
            dir.path(),
            &[],
        );
        let server = Server::adopt(child, addr);
        let response = server.get("/");
        assert_eq!(
            (response.status, response.text()),
            (200, "49\n".to_string()),
            "{program} {pre:?}: {}",
            server.stderr_text()
        );
    }
}
