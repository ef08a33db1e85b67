//! Records where the Python we build against lives, so the binary loads that same libpython
//! (not another copy the system loader might find first) and starts that same interpreter.

fn main() {
    let config = pyo3_build_config::get();
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
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
}
