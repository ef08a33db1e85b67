//! Records where the Python we build against lives, so the binary loads that same libpython
//! (not another copy the system loader might find first) and starts that same interpreter.
//!
//! Built as the Python extension module (`pyext/`, through maturin, which sets
//! `PYO3_BUILD_EXTENSION_MODULE`), nothing is recorded: that form runs in the interpreter
//! that imports it, whichever it is.

fn main() {
    // `Py_LIMITED_API` (an abi3 build) and `PyPy`, for code that has a faster way on the
    // full CPython API.
    pyo3_build_config::use_pyo3_cfgs();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");
    println!("cargo:rerun-if-changed=build.rs");
    let config = pyo3_build_config::get();
    let extension_module = std::env::var_os("PYO3_BUILD_EXTENSION_MODULE").is_some();
    if extension_module {
        println!("cargo:rustc-env=SCGI_WSGI_BUILD_PYTHON=");
        println!("cargo:rustc-env=SCGI_WSGI_BUILD_PYTHON_VERSION=");
        return;
    }
    if let Some(lib_dir) = config.lib_dir() {
        // A run path makes the loader prefer this directory over the system's library dirs.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    }
    let executable = config.executable().unwrap_or_default();
    println!("cargo:rustc-env=SCGI_WSGI_BUILD_PYTHON={executable}");
    println!(
        "cargo:rustc-env=SCGI_WSGI_BUILD_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
}
