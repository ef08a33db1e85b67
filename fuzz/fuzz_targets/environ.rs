//! Fuzzes environ building from arbitrary header-block bytes, with the real interpreter:
//! `environ::build` must never fail or panic, every key and value must be a `str` of code
//! points below 256 (PEP 3333), each header's value must be there byte for byte (repeated
//! HTTP_ headers joined), and the `wsgi.*` keys the server owns must not be overridable.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use scgi_wsgi::scgi;
use scgi_wsgi::fuzzing::{build, initialize, EnvironConsts};

static INIT: Once = Once::new();

/// The str as the bytes it stands for (each code point one Latin-1 byte), or `None` if a code
/// point is above U+00FF.
fn latin1_bytes(s: &Bound<'_, PyString>) -> Option<Vec<u8>> {
    let text = s.to_cow().ok()?;
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn check(py: Python<'_>, block: &[u8], consts: &EnvironConsts) {
    let environ: Bound<'_, PyDict> = match build(py, block, consts) {
        Ok(environ) => environ,
        Err(e) => panic!("build failed: {e}"),
    };
    for (key, value) in environ.iter() {
        let key = key.cast_into::<PyString>().expect("every key is a str");
        let key_bytes = latin1_bytes(&key).expect("key is Latin-1");
        if key_bytes.starts_with(b"wsgi.") {
            continue;
        }
        let value = value.cast_into::<PyString>().expect("every CGI value is a str");
        latin1_bytes(&value).expect("value is Latin-1");
    }
    // What each header name must map to: repeated HTTP_ headers joined (cookies with "; "),
    // any other name its first value.
    let mut expected: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for (name, value) in scgi::headers(block) {
        match expected.iter_mut().find(|(n, _)| *n == name) {
            Some((_, joined)) if name.starts_with(b"HTTP_") => {
                joined.extend_from_slice(if name == b"HTTP_COOKIE" { b"; " } else { b", " });
                joined.extend_from_slice(value);
            }
            Some(_) => {}
            None => expected.push((name, value.to_vec())),
        }
    }
    for (name, value) in &expected {
        if name.starts_with(b"wsgi.") {
            continue;
        }
        let key = PyString::new(py, &name.iter().map(|&b| char::from(b)).collect::<String>());
        let got = environ
            .get_item(&key)
            .expect("lookup works")
            .expect("every header is in the environ");
        let got = latin1_bytes(got.cast::<PyString>().expect("a str")).expect("Latin-1");
        assert_eq!(&got, value, "value of {}", name.escape_ascii());
    }
    let version = environ
        .get_item("wsgi.version")
        .unwrap()
        .expect("wsgi.version set");
    assert!(version.is(consts_version(py, consts)));
    let scheme = environ
        .get_item("wsgi.url_scheme")
        .unwrap()
        .expect("wsgi.url_scheme set");
    let scheme: String = scheme.extract().expect("scheme is a str");
    assert!(scheme == "http" || scheme == "https");
}

/// The `wsgi.version` object every environ shares, found through a fresh build.
fn consts_version<'py>(py: Python<'py>, consts: &EnvironConsts) -> Bound<'py, PyAny> {
    build(py, b"", consts)
        .unwrap()
        .get_item("wsgi.version")
        .unwrap()
        .unwrap()
}

thread_local! {
    static CONSTS: std::cell::OnceCell<EnvironConsts> = const { std::cell::OnceCell::new() };
}

fuzz_target!(|data: &[u8]| {
    INIT.call_once(|| {
        initialize(None, &[]).expect("Python starts");
    });
    Python::attach(|py| {
        CONSTS.with(|cell| {
            let consts = cell.get_or_init(|| EnvironConsts::new(py, true, false).expect("consts"));
            check(py, data, consts);
        });
    });
});
