//! The real Helm engine (`tools/helm`, helm-python-sdk over libhelm) driving the lab as a user on
//! the LAN would: run from the client namespace against the lab API server, with the chart of this
//! workspace (`charts/cilia`) and the users' own values (the seed files).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use cilia_e2e::lab::{Lab, default_nodes};
//! let lab = Lab::up_kube_unconfigured(default_nodes())?; // helm creates cilium-config
//! lab.helm_install_seed()?;
//! lab.helm_upgrade_set(&[("bpf.masquerade", "false")])?;
//! # Ok(()) }
//! ```
//!
//! Helm keeps its cache, configuration and data under the run directory (`HOME` and `HELM_*`), so
//! runs never share or leave state and the user's own Helm setup is not touched; the run directory
//! goes with the lab on teardown.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::debug;

use crate::lab::{LAB_NAMESPACE, Lab, repo_root, spawn_in_netns};

/// The release name the lab installs Cilia as (the README's `helm install cilia ...`).
pub const RELEASE: &str = "cilia";
/// The chart, relative to the workspace root (helm runs from there).
pub const CHART: &str = "charts/cilia";
/// The seed values: a user's Cilium values, to be accepted unchanged.
pub const SEED_VALUES: &str = "cilium-medium.yaml";

/// A seed file (`../shared/fixtures/seed/<name>` beside the workspace).
pub fn seed_file(name: &str) -> PathBuf {
    repo_root().join("../shared/fixtures/seed").join(name)
}

/// What one helm run printed and how long it took.
#[derive(Debug, Clone)]
pub struct HelmRun {
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Lab {
    /// Runs `tools/helm <args> --kubeconfig <the lab's>` from the client namespace, in the
    /// workspace root (so `charts/cilia` resolves), with Helm's state in the run directory.
    /// Fails with helm's output on a non-zero exit (also when `.venv` is missing: `make deps`).
    pub fn helm_run(&self, args: &[&str]) -> anyhow::Result<HelmRun> {
        let helm = repo_root().join("tools/helm");
        let home = self.dir.join("helm-home");
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let mut c = Command::new(&helm);
        c.args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig()?)
            .current_dir(repo_root())
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let out = spawn_in_netns(&mut c, &self.client.path())
            .with_context(|| format!("starting {}", helm.display()))?
            .wait_with_output()?;
        let run = HelmRun {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: t0.elapsed(),
        };
        debug!(args = ?args, took_ms = run.took.as_millis() as u64, "helm");
        if !out.status.success() {
            bail!(
                "helm {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                run.stdout,
                run.stderr
            );
        }
        Ok(run)
    }

    /// [`Lab::helm_run`], stdout only.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(self.helm_run(args)?.stdout)
    }

    /// `helm install cilia charts/cilia -n kube-system --create-namespace -f cilium-medium.yaml`:
    /// the chart renders `cilium-config` (and the `ip-masq-agent` ConfigMap) from the seed values.
    /// Use on a lab without a `cilium-config` of its own ([`Lab::up_kube_unconfigured`]): Helm
    /// refuses to adopt an object it did not create.
    pub fn helm_install_seed(&self) -> anyhow::Result<HelmRun> {
        let values = seed_file(SEED_VALUES);
        self.helm_run(&[
            "install",
            RELEASE,
            CHART,
            "-n",
            LAB_NAMESPACE,
            "--create-namespace",
            "-f",
            values.to_str().context("seed path is not UTF-8")?,
        ])
    }

    /// `helm upgrade cilia charts/cilia -n kube-system --reuse-values --set k=v ...`: changes only
    /// the given values of the installed release.
    pub fn helm_upgrade_set(&self, sets: &[(&str, &str)]) -> anyhow::Result<HelmRun> {
        let pairs: Vec<String> = sets.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec![
            "upgrade",
            RELEASE,
            CHART,
            "-n",
            LAB_NAMESPACE,
            "--reuse-values",
        ];
        for p in &pairs {
            args.extend_from_slice(&["--set", p]);
        }
        self.helm_run(&args)
    }

    /// One key of the `cilium-config` ConfigMap as the API server holds it (None: absent).
    pub fn cilium_config_value(&self, key: &str) -> anyhow::Result<Option<String>> {
        let cm = self.kubectl_json(&["configmap", "cilium-config", "-n", LAB_NAMESPACE])?;
        Ok(cm
            .pointer(&format!("/data/{key}"))
            .and_then(|v| v.as_str())
            .map(String::from))
    }
}
