//! Shared by the datapath test binaries: the privilege check and pin directories of their own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether programs can be loaded here; skips (saying why) where not, mounts bpffs otherwise.
pub fn can_load_bpf() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: loading eBPF programs needs root (CAP_BPF + CAP_NET_ADMIN)");
        return false;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    true
}

/// A pin directory of its own under `/sys/fs/bpf/cilia`, removed with everything pinned below it.
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// `/sys/fs/bpf/cilia/test-<suite>-<pid>-<tag>-<n>`, created.
    pub fn new(suite: &str, tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/cilia/test-{suite}-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        PinDir(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
