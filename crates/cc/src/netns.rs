//! Opening listening sockets inside a named network namespace.
//!
//! When the CC manages a namespace (the `netns` option), the 169.254.169.254
//! redirect points at the segment gateways inside it, so the metadata
//! listener must live there too. A socket belongs to the namespace it was
//! created in, whichever thread later uses it: a short-lived thread enters
//! the namespace (`setns` changes only the calling thread), binds, and hands
//! the socket back to the runtime, which serves it like any other
//! ([`ironbark_netns::run_in`], shared with the SC's NBD listeners).

use std::io;
use std::net::{SocketAddr, TcpListener};

/// A non-blocking listener on `addr`, in namespace `netns` (as named by
/// `ip netns`) or in the caller's own when `None`.
pub fn bind_tcp(netns: Option<&str>, addr: SocketAddr) -> io::Result<TcpListener> {
    let Some(ns) = netns else {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        return Ok(listener);
    };
    ironbark_netns::run_in(ns, || bind_tcp(None, addr))
}

/// [`bind_tcp`] as a tokio listener.
pub fn bind_tokio(netns: Option<&str>, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(bind_tcp(netns, addr)?)
}
