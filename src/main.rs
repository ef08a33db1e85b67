//! The `scgi-wsgi` binary: see the library for everything it does.

fn main() -> std::process::ExitCode {
    scgi_wsgi::main()
}
