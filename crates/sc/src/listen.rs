//! The TCP listening sockets of the NBD servers, made by the SC and handed
//! to `qemu-storage-daemon`, so that ironbark, not the QEMU version, decides
//! how the connections to NCs on other hosts behave.
//!
//! # Why
//!
//! NBD replies are small writes (a 16-byte reply header, then the data of a
//! read), and the NC's next request often waits for the previous reply.
//! QEMU 7.2's NBD server (Debian 12's own QEMU) leaves Nagle's algorithm on
//! its connections, so a small segment waits for the ACK of the last one,
//! which the client's delayed ACK holds back for up to 40 ms: 64 KiB writes
//! took about 44 s per GiB over TCP on loopback against 1.0 s over a Unix
//! socket. Newer QEMU sets `TCP_NODELAY` itself; ironbark does not rely on
//! it.
//!
//! # How
//!
//! Linux copies a listening socket's options, `TCP_NODELAY` among them, to
//! every connection it accepts (the unit test below checks that), so a
//! listener made here with `TCP_NODELAY` set gives the daemon Nagle-free
//! connections whatever QEMU does. [`nbd_listener`] makes it (with
//! `SO_REUSEADDR`, as QEMU does, so a port whose last connections linger in
//! TIME_WAIT can be listened on again), bound and listening, close-on-exec,
//! inside the SC's network namespace if it has one: `setns` changes only
//! the calling thread, so a short-lived thread of its own enters it
//! ([`ironbark_netns::run_in`]), and the socket stays in that namespace
//! whichever process holds it later.
//!
//! [`crate::daemon`] passes it to the daemon as its stdin, which only that
//! child gets (the SC's own descriptor stays close-on-exec, so nothing else
//! the process spawns meanwhile, such as the NC's QEMUs in `ironbark up`,
//! inherits the port). `qemu-storage-daemon` has no QMP command to receive
//! a descriptor (`getfd` and `add-fd` exist only in the system emulator),
//! and `--daemonize` points its stdin at /dev/null, so a `sh` trampoline
//! moves the socket to descriptor 3 first; the daemon's NBD server then
//! starts on `addr.type=fd,addr.str=3`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

/// A listening TCP socket on `host:port` with `TCP_NODELAY` and
/// `SO_REUSEADDR`, in the network namespace `netns` (a name under
/// /run/netns) if given. Blocks: resolving `host` may, and so does waiting
/// for the namespace thread. An address in use is
/// [`std::io::ErrorKind::AddrInUse`].
pub fn nbd_listener(netns: Option<&str>, host: &str, port: u16) -> std::io::Result<OwnedFd> {
    match netns {
        None => listen_tcp(host, port),
        Some(ns) => ironbark_netns::run_in(ns, || listen_tcp(host, port)),
    }
}

/// Like QEMU's own `inet` listener: the first of `host`'s addresses that
/// can be bound.
fn listen_tcp(host: &str, port: u16) -> std::io::Result<OwnedFd> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("{host} has no address"),
    );
    for addr in (host, port).to_socket_addrs()? {
        match listen_on(addr) {
            Ok(fd) => return Ok(fd),
            Err(e) => last = with_context(e, &format!("listening on {addr}")),
        }
    }
    Err(last)
}

fn listen_on(addr: SocketAddr) -> nix::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    // Before listen(): every connection the kernel accepts from then on is
    // a copy of this socket, options included.
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

/// Keeps the error's kind (callers look for `AddrInUse`) and says where.
fn with_context(e: nix::Error, what: &str) -> std::io::Error {
    std::io::Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use std::net::{TcpListener, TcpStream};

    /// The claim the whole module rests on: a connection accepted on a
    /// `TCP_NODELAY` listener has `TCP_NODELAY` itself, and one accepted on
    /// a plain listener does not (so this test tells the two apart).
    #[test]
    fn accepted_connections_inherit_tcp_nodelay() {
        let fd = nbd_listener(None, "127.0.0.1", 0).unwrap();
        assert!(getsockopt(&fd, sockopt::TcpNoDelay).unwrap());
        assert!(getsockopt(&fd, sockopt::ReuseAddr).unwrap());
        let ours = TcpListener::from(fd);
        let _client = TcpStream::connect(ours.local_addr().unwrap()).unwrap();
        let (accepted, _) = ours.accept().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "the accepted connection lost TCP_NODELAY"
        );

        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (accepted, _) = plain.accept().unwrap();
        assert!(!accepted.nodelay().unwrap(), "TCP_NODELAY is on by default");
    }

    #[test]
    fn a_port_in_use_is_addr_in_use() {
        let first = TcpListener::from(nbd_listener(None, "127.0.0.1", 0).unwrap());
        let port = first.local_addr().unwrap().port();
        let e = nbd_listener(None, "127.0.0.1", port).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }

    /// Made from inside a network namespace, the listener is in it: the
    /// namespace sees the port listening, the host does not. Runs only with
    /// `IRONBARK_NET_TESTS=1` (as root).
    #[test]
    fn the_listener_is_made_in_the_namespace() {
        if std::env::var("IRONBARK_NET_TESTS").as_deref() != Ok("1") {
            eprintln!("skipped: set IRONBARK_NET_TESTS=1 (root) to run");
            return;
        }
        let ns = format!("ib-nodelay-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &ns]);
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _gone = Gone(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let l = TcpListener::from(nbd_listener(Some(&ns), "127.0.0.1", 0).unwrap());
        let port = l.local_addr().unwrap().port();
        let filter = format!("sport = :{port}");
        let listening = |netns: Option<&str>| {
            let mut c = match netns {
                Some(ns) => {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", ns, "ss"]);
                    c
                }
                None => std::process::Command::new("ss"),
            };
            let out = c.args(["-Htln", &filter]).output().unwrap();
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        };
        assert!(listening(Some(&ns)), "not listening inside {ns}");
        assert!(!listening(None), "listening in the test's own namespace");
    }
}
