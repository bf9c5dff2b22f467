//! Making things (sockets) inside a named network namespace.
//!
//! The CC's metadata listener and the SC's NBD listeners must live in the
//! namespace a test or a simulated host gives them (`ip netns` names, under
//! /run/netns), while the rest of the process stays in its own. `setns`
//! moves only the calling thread, and a socket belongs to the namespace it
//! was created in whichever thread uses it later; so [`run_in`] runs the
//! step on a short-lived thread that enters the namespace, and hands the
//! result (the socket) back. The thread ends right after, so nothing else
//! ever runs in the wrong namespace.

use std::io;

/// Runs `step` inside network namespace `ns` (a name under /run/netns)
/// on a thread of its own, and returns what it returns. A name that is
/// empty or has a `/` is refused: it could point outside /run/netns.
pub fn run_in<T, F>(ns: &str, step: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    if ns.is_empty() || ns.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {ns:?}"),
        ));
    }
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, || {
                let handle = std::fs::File::open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
                nix::sched::setns(&handle, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::new(io::Error::from(e).kind(), format!("entering {path}: {e}"))
                })?;
                step()
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the network namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_run_netns_are_refused() {
        for bad in ["", "../x", "a/b"] {
            let e = run_in(bad, || Ok(())).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let e = run_in("ironbark-no-such-ns", || Ok(())).unwrap_err();
        assert!(
            e.to_string().contains("/run/netns/ironbark-no-such-ns"),
            "{e}"
        );
    }
}
