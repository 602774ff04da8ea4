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

/// `ethtool -K <dev> tx off` (`ETHTOOL_STXCSUM`).
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ethtool -K <dev> gro on` (`ETHTOOL_SGRO`).
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns TX checksum offload off on `dev` in the calling thread's namespace. The lab's LAN veths
/// stand for wires: a frame on a wire carries a full checksum, but one from the peer's local stack
/// over a veth carries only a partial sum (CHECKSUM_PARTIAL), which has no XDP metadata — native
/// XDP that sends it on (XDP_TX) would put that partial sum on the wire.
pub fn tx_csum_off(dev: &str) -> anyhow::Result<()> {
    ethtool_set(dev, ETHTOOL_STXCSUM, 0).context("TX checksum offload off")
}

/// Turns GRO on for `dev` in the calling thread's namespace. A veth delivers frames its peer sends
/// with XDP_TX only when it runs NAPI (GRO on, or an XDP program of its own); otherwise the kernel
/// drops them. On the lab's bridge ports this makes a node's native XDP answer out of its `eth0`
/// as it would out of a NIC.
pub fn gro_on(dev: &str) -> anyhow::Result<()> {
    ethtool_set(dev, ETHTOOL_SGRO, 1).context("GRO on")
}

/// One `ethtool_value` set command through `SIOCETHTOOL`.
fn ethtool_set(dev: &str, cmd: u32, data: u32) -> anyhow::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        bail!("device name {dev:?} is not a device name");
    }
    let mut ev = EthtoolValue { cmd, data };
    // SAFETY: a zeroed ifreq holding a NUL-terminated name (length checked above) and a pointer to
    // a live ethtool_value; the socket is closed on every path after it was opened.
    let (rc, err) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in dev.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = &mut ev as *mut EthtoolValue as *mut libc::c_char;
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut ifr);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        (rc, err)
    };
    if rc != 0 {
        return Err(err).with_context(|| format!("SIOCETHTOOL {cmd:#x} on {dev}"));
    }
    Ok(())
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
