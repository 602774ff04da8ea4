//! The lab cleans up after itself: on SIGTERM through its signal handler, and after `kill -9`
//! through `cilia-lab clean`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cilia_e2e::lab::{bin_dir, leftovers, wait_until};

fn start_held_lab() -> (std::process::Child, String) {
    let mut child = Command::new(bin_dir().join("cilia-lab"))
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cilia-lab up");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let run = line
        .trim()
        .strip_prefix("run ")
        .unwrap_or_else(|| panic!("unexpected output {line:?}"))
        .to_string();
    assert!(!leftovers(&run).is_empty(), "the held lab exists");
    (child, run)
}

// SIGTERM to a running lab tears down its namespaces, agents, pins and state.
#[test]
fn sigterm_tears_the_lab_down() {
    let (mut child, run) = start_held_lab();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    wait_until(Duration::from_secs(5), || leftovers(&run).is_empty())
        .unwrap_or_else(|_| panic!("left behind after SIGTERM: {:?}", leftovers(&run)));
}

// A lab killed with SIGKILL leaves everything behind; `cilia-lab clean` removes it, agents included.
#[test]
fn lab_clean_removes_a_killed_run() {
    let (mut child, run) = start_held_lab();
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(!leftovers(&run).is_empty(), "SIGKILL leaves the run behind");
    let out = Command::new(bin_dir().join("cilia-lab"))
        .arg("clean")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&run),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(leftovers(&run).is_empty(), "{:?}", leftovers(&run));
    let agents = Command::new("pgrep")
        .args(["-f", &format!("cilia/{run}-")])
        .output()
        .unwrap();
    assert!(
        agents.stdout.is_empty(),
        "agents of the killed run still running: {}",
        String::from_utf8_lossy(&agents.stdout)
    );
}
