//! Network namespaces as RAII guards, and running code or processes inside them.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    keep: bool,
}

impl NetNs {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["-n", &self.name];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// Runs a command inside the namespace (through `ip netns exec`).
    pub fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(cmd);
        run(&mut c)
    }

    /// Runs `f` on a fresh thread that has entered this namespace; sockets it opens live there.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> anyhow::Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }

    /// Leaves the namespace in place when dropped (`make demo KEEP=1`).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.keep {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// TX checksum offload off on `dev` here (see `cilia_datapath::ethtool::tx_csum_off`).
pub fn tx_csum_off(dev: &str) -> anyhow::Result<()> {
    Ok(cilia_datapath::ethtool::tx_csum_off(dev)?)
}

/// GRO on for `dev` here (see `cilia_datapath::ethtool::gro_on`).
pub fn gro_on(dev: &str) -> anyhow::Result<()> {
    Ok(cilia_datapath::ethtool::gro_on(dev)?)
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
    Ok(())
}

pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

pub fn run(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of every network namespace on the machine.
pub fn list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
