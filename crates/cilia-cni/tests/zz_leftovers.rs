//! Runs after `tests/netns.rs` (cargo runs test binaries one after another, in name order): no
//! `cilia-cnitest-<pid>-*` namespace of a finished test process may survive, whether its tests
//! passed or failed. Namespaces of a test process that is still running (another concurrent
//! `cargo test`) are not this run's business.

use std::path::Path;
use std::process::Command;

const PREFIX: &str = "cilia-cnitest-";

/// The pid embedded in a lab namespace name, if it is one.
fn owner_pid(netns: &str) -> Option<u32> {
    netns.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

// Every lab namespace of a finished test process has been deleted.
#[test]
fn no_cilia_cnitest_netns_remains() {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8(out.stdout).unwrap();
    let left: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .filter(|name| {
            owner_pid(name).is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn parses_owner_pid() {
    assert_eq!(owner_pid("cilia-cnitest-4242-gc-node"), Some(4242));
    assert_eq!(owner_pid("cilia-cnitest-x-node"), None);
    assert_eq!(owner_pid("cilia-d04c5c-worker"), None);
}
