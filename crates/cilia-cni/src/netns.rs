//! Entering the container's network namespace: each piece of work runs on a dedicated thread that
//! `setns()`es and then exits, so no other thread of the plugin ever changes namespace.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::error::CniError;

/// Opens `CNI_NETNS`. A path that does not exist means the container is gone (code 3).
pub fn open(path: &Path) -> Result<File, CniError> {
    File::open(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CniError::UnknownContainer {
                path: path.to_path_buf(),
                source,
            }
        } else {
            CniError::io(
                format!("opening network namespace {path:?} (CNI_NETNS)"),
                source,
            )
        }
    })
}

/// Runs `work` on a new thread inside the network namespace `netns`; returns its result.
pub fn run_in<T, F>(netns: &File, work: F) -> Result<T, CniError>
where
    T: Send,
    F: FnOnce() -> Result<T, CniError> + Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("cilia-cni-netns".into())
            .spawn_scoped(scope, || {
                setns(netns, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                    CniError::io("entering the container network namespace", errno.into())
                })?;
                work()
            })
            .map_err(|e| CniError::io("spawning the netns worker thread", e))?;
        worker.join().unwrap_or_else(|_| {
            Err(CniError::io(
                "netns worker thread",
                io::Error::other("the worker thread panicked"),
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;

    // A netns path that does not exist is "container unknown", not an I/O error.
    #[test]
    fn missing_netns_is_code_3() {
        let err = open(Path::new("/run/netns/cilia-cni-does-not-exist")).unwrap_err();
        assert_eq!(err.code(), error::UNKNOWN_CONTAINER);
        assert!(err.to_string().contains("CNI_NETNS"));
    }

    // Work runs on another thread in the namespace and its result comes back; the caller's thread
    // keeps its own namespace. Uses the caller's own namespace, so it needs no privileges.
    #[test]
    fn runs_work_and_returns_result() {
        let own = open(Path::new("/proc/self/ns/net")).unwrap();
        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let inside = run_in(&own, || {
            Ok(std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        });
        match inside {
            Ok(link) => assert_eq!(link, before),
            // Without CAP_SYS_ADMIN setns fails even into our own namespace.
            Err(e) => assert_eq!(e.code(), error::IO_FAILURE),
        }
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            before
        );
    }
}
