//! Diagnostics go through `tracing` to the configured `log-file`, never to stdout (the result
//! channel). Without a `log-file` nothing is logged.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

/// Installs a subscriber appending to `path`. A log file that cannot be opened is not a reason to
/// fail the CNI call, so that case is silently skipped.
pub fn init(path: Option<&Path>) {
    let Some(path) = path else { return };
    let Ok(file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        // Our own events in full; dependencies (netlink-proto via `log`) only when something is wrong.
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,cilia_cni=debug"))
        .try_init();
}
