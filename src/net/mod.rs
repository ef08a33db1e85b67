//! Sockets, and one connection's life on them: the listening socket (fd 0, TCP, a Unix path,
//! systemd's), and the connection state machine that reads a request, assembles it for the
//! app, and writes the response. No event loop and no Python here: the server drives them.

pub mod conn;
pub mod listen;
