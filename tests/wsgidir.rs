//! `scgi_wsgi.wsgidir`, the handler module shipped inside the binary: WSGI apps served from
//! `*.wsgi` files named by SCRIPT_FILENAME (as ashd's dirplex sends it), reloaded on change.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;

/// A GET for `path` the way callscgi sends it under dirplex: SCRIPT_FILENAME names the file.
fn for_file(file: &Path, handler: Option<&str>) -> ScgiRequest {
    let req = ScgiRequest::get("/app.wsgi/rest")
        .set_header("SCRIPT_NAME", "/app.wsgi")
        .set_header("PATH_INFO", "/rest")
        .header("SCRIPT_FILENAME", file.to_str().unwrap());
    match handler {
        Some(h) => req.header("HTTP_X_ASH_PYTHON_HANDLER", h),
        None => req,
    }
}

/// A .wsgi file whose app answers `TAG COUNT SCRIPT_NAME PATH_INFO`; COUNT shows the module
/// is loaded once (it counts requests since the file was loaded).
fn write_app(path: &Path, tag: &str, mtime: SystemTime) {
    let source = format!(
        "count = 0\n\
         def application(environ, start_response):\n\
         \x20   global count\n\
         \x20   count += 1\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [('{tag} %d %s %s' % (count, environ['SCRIPT_NAME'], environ['PATH_INFO'])).encode()]\n"
    );
    fs::write(path, source).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn serves_files_loads_once_and_reloads_when_modified() {
    let dir = TempDir::new("wsgidir");
    let file = dir.path().join("app.wsgi");
    let t0 = SystemTime::now() - Duration::from_secs(100);
    write_app(&file, "first", t0);
    let server = Server::start(&["scgi_wsgi.wsgidir"]);

    let r = server.request(&for_file(&file, None));
    assert_eq!((r.status, r.text()), (200, "first 1 /app.wsgi /rest".into()));
    let r = server.request(&for_file(&file, Some("chain")));
    assert_eq!(r.text(), "first 2 /app.wsgi /rest", "loaded once, state kept");

    // Same size, new content, new mtime: the file is loaded again.
    write_app(&file, "secnd", t0 + Duration::from_secs(10));
    let r = server.request(&for_file(&file, None));
    assert_eq!(r.text(), "secnd 1 /app.wsgi /rest");
    assert!(server.wait_for_log("reloading", Duration::from_secs(5)));
}

#[test]
fn wmain_in_the_file_gives_the_app() {
    let dir = TempDir::new("wsgidir");
    let file = dir.path().join("w.wsgi");
    fs::write(
        &file,
        "def wmain():\n\
         \x20   def app(environ, start_response):\n\
         \x20       start_response('200 OK', [])\n\
         \x20       return [b'from wmain']\n\
         \x20   return app\n",
    )
    .unwrap();
    let server = Server::start(&["scgi_wsgi.wsgidir"]);
    assert_eq!(server.request(&for_file(&file, None)).text(), "from wmain");
}

#[test]
fn missing_broken_and_unnamed_files_get_clear_answers() {
    let dir = TempDir::new("wsgidir");
    let broken = dir.path().join("broken.wsgi");
    fs::write(&broken, "def application(:\n").unwrap();
    let plain = dir.path().join("notes.txt");
    fs::write(&plain, "x").unwrap();
    let server = Server::start(&["scgi_wsgi.wsgidir"]);

    let r = server.request(&for_file(&dir.path().join("gone.wsgi"), None));
    assert_eq!(r.status, 404);
    let r = server.request(&for_file(&broken, None));
    assert_eq!(r.status, 500);
    assert!(server.wait_for_log("cannot load", Duration::from_secs(5)));
    assert!(server.stderr_text().contains("SyntaxError"));
    // No handler for the extension, and no SCRIPT_FILENAME at all.
    assert_eq!(server.request(&for_file(&plain, None)).status, 500);
    assert_eq!(server.get("/x").status, 500);
    // An unknown handler named by dirplex.
    assert_eq!(server.request(&for_file(&broken, Some("nosuch"))).status, 500);
    // The server keeps serving.
    assert_eq!(
        server
            .request(&for_file(&dir.path().join("gone.wsgi"), None))
            .status,
        404
    );
}

#[test]
fn extension_arguments_are_checked() {
    let dir = TempDir::new("wsgidir");
    let file = dir.path().join("app.py");
    write_app(&file, "py", SystemTime::now());
    let server = Server::start(&["scgi_wsgi.wsgidir", "py=chain"]);
    assert_eq!(
        server.request(&for_file(&file, None)).text(),
        "py 1 /app.wsgi /rest"
    );

    let run = run_raw(
        &["-T", "127.0.0.1:1", "scgi_wsgi.wsgidir", "py=nope"],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("EXT=HANDLER"), "{}", run.stderr);
}

/// A file that fails to load: its traceback comes out as log lines, each with the prefix,
/// like every other line the server writes.
#[test]
fn a_file_that_fails_to_load_gives_only_prefixed_lines() {
    let dir = TempDir::new("wsgidir");
    let broken = dir.path().join("broken.wsgi");
    fs::write(&broken, "import os\ndef application(:\n").unwrap();
    let server = Server::start(&["scgi_wsgi.wsgidir"]);
    assert_eq!(server.request(&for_file(&broken, None)).status, 500);
    assert!(server.wait_for_log("SyntaxError", Duration::from_secs(5)));
    let log = server.stderr_text();
    assert!(log.contains("scgi-wsgi[wsgidir]: ERROR: cannot load "), "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("scgi-wsgi["),
            "a line without the prefix: {line:?}\n{log}"
        );
    }
    let traceback = log
        .lines()
        .filter(|l| l.starts_with("scgi-wsgi[wsgidir]: ERROR: "))
        .count();
    assert!(traceback >= 4, "the traceback is there, line by line:\n{log}");
}
