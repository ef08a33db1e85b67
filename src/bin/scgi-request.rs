//! The `scgi-request` binary: see the library's `client` module.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(scgi_wsgi::request_main(std::env::args_os().collect()))
}
