//! Pure byte logic, no I/O and nothing else of the crate: the SCGI head parser, the
//! SCRIPT_NAME/PATH_INFO rule, and CGI (environ variables, the answers the server makes).

pub mod cgi;
pub mod pathinfo;
pub mod scgi;
