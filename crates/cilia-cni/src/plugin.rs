//! The CNI verbs: environment in, stdout text and exit code out.
//!
//! | verb | needs | does |
//! |---|---|---|
//! | ADD | CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, `node.json` | allocate, wire veth + address + routes, print result |
//! | DEL | CNI_CONTAINERID, CNI_IFNAME | remove node route and veth if present, release the address; always idempotent |
//! | CHECK (≥0.4.0) | as ADD, plus `prevResult` | verify interfaces, addresses, routes and the IP reservation |
//! | VERSION | — | print supported versions |
//! | STATUS (1.1.0) | `node.json` | success if readable, else code 50 |
//! | GC (1.1.0) | `cni.dev/valid-attachments` | release every other allocation, delete its host veth |

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use cilia_model::NodeLocalConfig;
use ipnet::{IpNet, Ipv4Net};

use crate::config::{self, NetConf};
use crate::datapath::{self, AttachSpec, Expected};
use crate::error::CniError;
use crate::ipam::{IpamError, IpamStore, Pool};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route};
use crate::version;

/// The `CNI_*` environment of one invocation. Values are taken as given; validation happens per
/// verb so each error names the variable at fault.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
}

impl Env {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Builds from any lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Env {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        }
    }
}

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn from_env(env: &Env) -> Result<Self, CniError> {
        let raw = env.command.as_deref().ok_or(CniError::InvalidEnvironment {
            var: "CNI_COMMAND",
            reason: "missing".into(),
        })?;
        Ok(match raw {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_COMMAND",
                    reason: format!("unknown command {other:?}"),
                });
            }
        })
    }
}

/// What the binary prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: u8,
}

/// Runs one invocation. Never panics on bad input: every failure becomes an error object.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    match dispatch(env, stdin) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(err) => {
            tracing::error!(code = err.code(), error = %err.details(), "CNI {:?} failed", env.command);
            error_outcome(&err, &config::error_version(stdin))
        }
    }
}

/// The stdout and exit code for a failure.
pub fn error_outcome(err: &CniError, cni_version: &str) -> Outcome {
    let stdout =
        serde_json::to_string(&err.to_object(cni_version)).expect("error objects serialize");
    Outcome {
        stdout,
        exit_code: 1,
    }
}

fn dispatch(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    let command = Command::from_env(env)?;
    if command == Command::Version {
        // VERSION must answer even when stdin is empty or not a config.
        let requested = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            });
        let result = version::version_result(requested.as_deref());
        return Ok(serde_json::to_string(&result).expect("version result serializes"));
    }

    let conf = config::parse(stdin)?;
    crate::logging::init(conf.log_file.as_deref());
    let span = tracing::info_span!(
        "cni",
        command = ?command,
        container_id = env.container_id.as_deref().unwrap_or(""),
        ifname = env.ifname.as_deref().unwrap_or(""),
        network = %conf.name,
    );
    let _entered = span.enter();
    tracing::debug!(cni_args = env.args.as_deref().unwrap_or(""), "invoked");

    match command {
        Command::Add => add(&conf, &Attachment::from_env(env, true)?),
        Command::Del => del(&conf, &Attachment::from_env(env, false)?),
        Command::Check => {
            require(conf.cni_version.has_check(), &conf, "CHECK", "0.4.0")?;
            check(&conf, &Attachment::from_env(env, true)?)
        }
        Command::Status => {
            require(
                conf.cni_version.has_status_and_gc(),
                &conf,
                "STATUS",
                "1.1.0",
            )?;
            status(&conf)
        }
        Command::Gc => {
            require(conf.cni_version.has_status_and_gc(), &conf, "GC", "1.1.0")?;
            gc(&conf)
        }
        Command::Version => unreachable!("handled above"),
    }
}

fn require(ok: bool, conf: &NetConf, verb: &str, since: &str) -> Result<(), CniError> {
    if ok {
        Ok(())
    } else {
        Err(CniError::IncompatibleVersion {
            version: conf.cni_version.as_str().to_string(),
            reason: format!("{verb} requires cniVersion {since} or later"),
        })
    }
}

/// The per-attachment parameters, validated.
#[derive(Debug, Clone)]
struct Attachment {
    container_id: String,
    ifname: String,
    /// Required for ADD and CHECK; optional for DEL.
    netns: Option<PathBuf>,
}

impl Attachment {
    fn from_env(env: &Env, netns_required: bool) -> Result<Self, CniError> {
        let container_id = non_empty(&env.container_id, "CNI_CONTAINERID")?;
        if !config::is_valid_name(&container_id) {
            return Err(CniError::InvalidEnvironment {
                var: "CNI_CONTAINERID",
                reason: format!(
                    "{container_id:?} must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
                ),
            });
        }
        let ifname = non_empty(&env.ifname, "CNI_IFNAME")?;
        if let Err(reason) = validate_ifname(&ifname) {
            return Err(CniError::InvalidEnvironment {
                var: "CNI_IFNAME",
                reason: format!("{ifname:?} {reason}"),
            });
        }
        let netns = match env.netns.as_deref() {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ if netns_required => {
                return Err(CniError::InvalidEnvironment {
                    var: "CNI_NETNS",
                    reason: "missing or empty".into(),
                });
            }
            _ => None,
        };
        Ok(Attachment {
            container_id,
            ifname,
            netns,
        })
    }

    fn netns(&self) -> &Path {
        self.netns
            .as_deref()
            .expect("netns presence validated by from_env")
    }

    fn host_veth(&self) -> String {
        datapath::host_veth_name(&self.container_id, &self.ifname)
    }
}

fn non_empty(v: &Option<String>, var: &'static str) -> Result<String, CniError> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(CniError::InvalidEnvironment {
            var,
            reason: "missing or empty".into(),
        }),
    }
}

/// Linux interface name rules, as the spec restates them.
fn validate_ifname(name: &str) -> Result<(), &'static str> {
    if name.len() > 15 {
        return Err("is longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// Why `node.json` could not be used.
fn read_node(conf: &NetConf) -> Result<NodeLocalConfig, (PathBuf, String)> {
    let path = conf.node_config_path();
    let bytes = fs::read(&path).map_err(|e| (path.clone(), e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| (path, format!("not a node config: {e}")))
}

fn node_for_attachment(conf: &NetConf) -> Result<NodeLocalConfig, CniError> {
    read_node(conf).map_err(|(path, reason)| CniError::NodeNotReady { path, reason })
}

fn open_store(conf: &NetConf) -> Result<IpamStore, CniError> {
    let dir = conf.ipam_dir();
    IpamStore::open(&dir).map_err(|e| CniError::io(format!("opening IPAM store {dir:?}"), e))
}

fn ipam_io(store: &IpamStore) -> impl Fn(std::io::Error) -> CniError + '_ {
    move |e| CniError::io(format!("IPAM store {:?}", store.dir()), e)
}

fn add(conf: &NetConf, att: &Attachment) -> Result<String, CniError> {
    // Decoded first: a bad prevResult must fail the call before anything is created.
    let prev = conf
        .prev_result
        .as_ref()
        .map(CniResult::from_prev_result)
        .transpose()?;
    let node = node_for_attachment(conf)?;
    let netns_file = crate::netns::open(att.netns())?;
    let store = open_store(conf)?;
    let pool = Pool::new(node.pod_cidr, node.router_ip);
    let (ip, fresh) = store
        .allocate(&pool, &att.container_id, &att.ifname)
        .map_err(|e| match e {
            IpamError::Exhausted(cidr) => CniError::IpamExhausted { cidr },
            IpamError::Io { path, source } => CniError::io(format!("IPAM store {path:?}"), source),
        })?;
    tracing::info!(%ip, fresh, "allocated");

    let host_veth = att.host_veth();
    let spec = AttachSpec {
        host_veth: &host_veth,
        netns_path: att.netns(),
        ifname: &att.ifname,
        ip,
        router: node.router_ip,
        mtu: conf.mtu.or((node.mtu != 0).then_some(node.mtu)),
    };
    let wired = match datapath::attach(&spec, &netns_file) {
        Ok(w) => w,
        Err(err) => {
            // Leave nothing behind: the runtime's DEL would do the same, but may never come.
            if let Err(e) = datapath::detach(&host_veth, &[ip]) {
                tracing::warn!(error = %e.details(), "rollback: removing the veth failed");
            }
            if fresh && let Err(e) = store.release(&att.container_id, &att.ifname) {
                tracing::warn!(error = %e, "rollback: releasing the address failed");
            }
            return Err(err);
        }
    };
    tracing::info!(%ip, host_veth, "attached");
    if crate::agent::socket_present(&conf.agent_state_dir) {
        if let Err(e) = crate::agent::sync_endpoint(&conf.agent_state_dir, &host_veth) {
            // Without its programs the pod must not run: undo, and let the runtime try again.
            if let Err(e) = datapath::detach(&host_veth, &[ip]) {
                tracing::warn!(error = %e.details(), "rollback: removing the veth failed");
            }
            if fresh && let Err(e) = store.release(&att.container_id, &att.ifname) {
                tracing::warn!(error = %e, "rollback: releasing the address failed");
            }
            return Err(e.into());
        }
        tracing::info!(host_veth, "agent put the endpoint in place");
    } else {
        tracing::warn!(state_dir = ?conf.agent_state_dir, "no agent socket: the pod is wired, its programs attach when the agent returns");
    }

    let ours = CniResult {
        cni_version: None,
        interfaces: vec![
            Interface {
                name: wired.host.name.clone(),
                mac: wired.host.mac.clone(),
                mtu: wired.host.mtu,
                ..Default::default()
            },
            Interface {
                name: wired.pod.name.clone(),
                mac: wired.pod.mac.clone(),
                mtu: wired.pod.mtu,
                sandbox: Some(att.netns().to_string_lossy().into_owned()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            version: None,
            address: IpNet::V4(Ipv4Net::new(ip, 32).expect("/32 is valid")),
            gateway: Some(IpAddr::V4(node.router_ip)),
            interface: Some(1),
            extra: Default::default(),
        }],
        routes: vec![Route {
            dst: IpNet::V4(Ipv4Net::default()),
            gw: Some(IpAddr::V4(node.router_ip)),
            extra: Default::default(),
        }],
        dns: Dns::default(),
    };
    // A result handed in by an earlier plugin of the chain is passed on, with ours appended.
    let result = match prev {
        Some(mut merged) => {
            merged.append(ours);
            merged
        }
        None => ours,
    };
    Ok(result.to_json(conf.cni_version))
}

fn del(conf: &NetConf, att: &Attachment) -> Result<String, CniError> {
    let store = open_store(conf)?;
    let ips = store
        .find(&att.container_id, &att.ifname)
        .map_err(ipam_io(&store))?;
    datapath::detach(&att.host_veth(), &ips)?;
    let freed = store
        .release(&att.container_id, &att.ifname)
        .map_err(ipam_io(&store))?;
    tracing::info!(?freed, "detached");
    Ok(String::new())
}

fn check(conf: &NetConf, att: &Attachment) -> Result<String, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::config(
            "prevResult",
            "(missing)",
            "CHECK needs the result of the ADD",
        )
    })?;
    let prev = CniResult::from_prev_result(prev)?;
    let node = node_for_attachment(conf)?;
    let host_veth = att.host_veth();
    let netns_str = att.netns().to_string_lossy();

    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == att.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| {
            CniError::CheckFailed(format!(
                "prevResult lists no interface {} inside {netns_str}",
                att.ifname
            ))
        })?;
    if !prev
        .interfaces
        .iter()
        .any(|i| i.name == host_veth && i.sandbox.as_deref().unwrap_or("").is_empty())
    {
        return Err(CniError::CheckFailed(format!(
            "prevResult lists no host interface {host_veth}"
        )));
    }
    let ips: Vec<Ipv4Net> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == pod_index))
        .filter_map(|ip| match ip.address {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        })
        .collect();
    if ips.is_empty() {
        return Err(CniError::CheckFailed(format!(
            "prevResult assigns no IPv4 address to {}",
            att.ifname
        )));
    }

    // The IP reservation must still be ours.
    let store = open_store(conf)?;
    let held = store
        .find(&att.container_id, &att.ifname)
        .map_err(ipam_io(&store))?;
    for ip in &ips {
        if !held.contains(&ip.addr()) {
            return Err(CniError::CheckFailed(format!(
                "address {} is not reserved for ({}, {}) in {:?}",
                ip.addr(),
                att.container_id,
                att.ifname,
                store.dir()
            )));
        }
    }

    // Routes via our router (or with no gateway) are ours to verify; a route through another
    // gateway belongs to another plugin of the chain.
    let routes: Vec<(Ipv4Net, Option<Ipv4Addr>)> = prev
        .routes
        .iter()
        .filter_map(|r| match (r.dst, r.gw) {
            (IpNet::V4(dst), Some(IpAddr::V4(gw))) if gw == node.router_ip => Some((dst, Some(gw))),
            (IpNet::V4(dst), None) => Some((dst, None)),
            _ => None,
        })
        .collect();
    let pod_mac = prev.interfaces[pod_index].mac.as_deref();
    let expected = Expected {
        host_veth: &host_veth,
        ifname: &att.ifname,
        pod_mac,
        ips: &ips,
        router: node.router_ip,
        routes: &routes,
    };
    datapath::check_host(&expected)?;
    let netns_file = crate::netns::open(att.netns())?;
    datapath::check_pod(&expected, &netns_file)?;
    Ok(String::new())
}

fn status(conf: &NetConf) -> Result<String, CniError> {
    read_node(conf).map_err(|(path, reason)| CniError::PluginNotAvailable { path, reason })?;
    Ok(String::new())
}

fn gc(conf: &NetConf) -> Result<String, CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::config(
            config::VALID_ATTACHMENTS_KEY,
            "(missing)",
            "GC needs the list of valid attachments; refusing to release everything",
        )
    })?;
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let store = open_store(conf)?;
    let mut first_error = None;
    for a in store.allocations().map_err(ipam_io(&store))? {
        if valid.contains(&(a.container_id.as_str(), a.ifname.as_str())) {
            continue;
        }
        // Keep going on errors: GC should clean up as much as it can, then report.
        let outcome = if a.container_id.is_empty() {
            store.release_ip(a.ip).map_err(ipam_io(&store))
        } else {
            datapath::detach(
                &datapath::host_veth_name(&a.container_id, &a.ifname),
                &[a.ip],
            )
            .and_then(|()| {
                store
                    .release(&a.container_id, &a.ifname)
                    .map(drop)
                    .map_err(ipam_io(&store))
            })
        };
        match outcome {
            Ok(()) => {
                tracing::info!(ip = %a.ip, container_id = a.container_id, ifname = a.ifname, "GC released")
            }
            Err(e) => {
                tracing::warn!(ip = %a.ip, error = %e.details(), "GC could not release");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::error;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    fn error_of(out: &Outcome) -> crate::error::ErrorObject {
        assert_ne!(out.exit_code, 0, "expected failure, got {}", out.stdout);
        serde_json::from_str(&out.stdout).unwrap()
    }

    fn conf_json(dir: &Path, version: &str) -> String {
        serde_json::json!({
            "cniVersion": version, "name": "cilia", "type": "cilia-cni",
            "agent-state-dir": dir.join("state"), "ipam-data-dir": dir.join("ipam"),
        })
        .to_string()
    }

    // A missing or unknown CNI_COMMAND is code 4 naming the variable.
    #[test]
    fn bad_command_is_code_4() {
        for e in [env(&[]), env(&[("CNI_COMMAND", "FROB")])] {
            let err = error_of(&run(&e, b"{}"));
            assert_eq!(err.code, error::INVALID_ENVIRONMENT);
            assert!(err.msg.contains("CNI_COMMAND"), "{}", err.msg);
        }
    }

    // VERSION works with an empty stdin and echoes a supported requested version.
    #[test]
    fn version_needs_no_config() {
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(out.exit_code, 0);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.3.1"}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
    }

    // ADD without CNI_NETNS is code 4 naming CNI_NETNS; bad container IDs and ifnames are code 4 too.
    #[test]
    fn add_env_validation() {
        let dir = tempfile::tempdir().unwrap();
        let conf = conf_json(dir.path(), "1.0.0");
        let cases = [
            (
                vec![("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")],
                "CNI_NETNS",
            ),
            (
                vec![("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0")],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_CONTAINERID", "-c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/x")],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "a/b"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_IFNAME", "abcdefghijklmnop"),
                ],
                "CNI_IFNAME",
            ),
        ];
        for (vars, named) in cases {
            let mut vars = vars;
            vars.push(("CNI_COMMAND", "ADD"));
            let err = error_of(&run(&env(&vars), conf.as_bytes()));
            assert_eq!(err.code, error::INVALID_ENVIRONMENT, "{named}: {}", err.msg);
            assert!(err.msg.contains(named), "{} should name {named}", err.msg);
            assert_eq!(err.cni_version, "1.0.0");
        }
    }

    // ADD with no node.json is "try again later" naming the path, before anything is allocated.
    #[test]
    fn add_without_node_config_is_code_11() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let err = error_of(&run(&env(&vars), conf_json(dir.path(), "1.0.0").as_bytes()));
        assert_eq!(err.code, error::TRY_AGAIN_LATER);
        assert!(
            err.msg
                .contains(&dir.path().join("state/node.json").display().to_string()),
            "{}",
            err.msg
        );
        assert!(!dir.path().join("ipam/cilia").exists());
    }

    // CHECK before 0.4.0 and STATUS/GC before 1.1.0 are incompatible-version errors.
    #[test]
    fn verbs_gated_by_version() {
        let dir = tempfile::tempdir().unwrap();
        let att = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let mut check = att.to_vec();
        check.push(("CNI_COMMAND", "CHECK"));
        let err = error_of(&run(
            &env(&check),
            conf_json(dir.path(), "0.3.1").as_bytes(),
        ));
        assert_eq!(err.code, error::INCOMPATIBLE_VERSION);
        for verb in ["STATUS", "GC"] {
            let err = error_of(&run(
                &env(&[("CNI_COMMAND", verb)]),
                conf_json(dir.path(), "1.0.0").as_bytes(),
            ));
            assert_eq!(err.code, error::INCOMPATIBLE_VERSION, "{verb}");
            assert!(err.msg.contains(verb));
        }
    }

    // STATUS reports 50 naming node.json until the agent writes it, then succeeds silently.
    #[test]
    fn status_follows_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let conf = conf_json(dir.path(), "1.1.0");
        let e = env(&[("CNI_COMMAND", "STATUS")]);
        let err = error_of(&run(&e, conf.as_bytes()));
        assert_eq!(err.code, error::PLUGIN_NOT_AVAILABLE);
        assert!(err.msg.contains("node.json"));
        fs::create_dir_all(dir.path().join("state")).unwrap();
        fs::write(dir.path().join("state/node.json"), "{not json").unwrap();
        assert_eq!(
            error_of(&run(&e, conf.as_bytes())).code,
            error::PLUGIN_NOT_AVAILABLE
        );
        let node = NodeLocalConfig {
            node_name: "n".into(),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            router_ip: "10.244.0.1".parse().unwrap(),
            node_ip: "172.18.0.2".parse().unwrap(),
            mtu: 0,
        };
        fs::write(
            dir.path().join("state/node.json"),
            serde_json::to_vec(&node).unwrap(),
        )
        .unwrap();
        assert_eq!(
            run(&e, conf.as_bytes()),
            Outcome {
                stdout: String::new(),
                exit_code: 0
            }
        );
    }

    // CHECK without prevResult is a config error naming prevResult.
    #[test]
    fn check_requires_prev_result() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        let err = error_of(&run(&env(&vars), conf_json(dir.path(), "1.0.0").as_bytes()));
        assert_eq!(err.code, error::INVALID_CONFIG);
        assert!(err.msg.contains("prevResult"));
    }

    // GC without the valid list refuses rather than releasing everything.
    #[test]
    fn gc_requires_valid_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let err = error_of(&run(
            &env(&[("CNI_COMMAND", "GC")]),
            conf_json(dir.path(), "1.1.0").as_bytes(),
        ));
        assert_eq!(err.code, error::INVALID_CONFIG);
        assert!(err.msg.contains("cni.dev/valid-attachments"));
    }

    // DEL of an attachment that never existed succeeds, with no netns at all, twice.
    #[test]
    fn del_of_unknown_attachment_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "never-added"),
            ("CNI_IFNAME", "eth0"),
        ];
        for _ in 0..2 {
            let out = run(&env(&vars), conf_json(dir.path(), "1.0.0").as_bytes());
            // Without CAP_NET_ADMIN the netlink lookup still works (read-only), so this passes anywhere.
            assert_eq!(
                out,
                Outcome {
                    stdout: String::new(),
                    exit_code: 0
                }
            );
        }
    }

    // No input, however broken, makes the plugin panic; each yields an error object.
    #[test]
    fn garbage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = format!(
            r#""agent-state-dir":"{0}/state","ipam-data-dir":"{0}/ipam""#,
            dir.path().display()
        );
        let inputs: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\xff\xfe".to_vec(),
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{\"cniVersion\":".to_vec(),
            format!(r#"{{"cniVersion":"1.0.0","name":"x","type":"t",{dirs},"mtu":1e400}}"#).into_bytes(),
            format!(r#"{{"cniVersion":"1.0.0","name":"x","type":"t",{dirs},"prevResult":{{"ips":"x"}}}}"#)
                .into_bytes(),
            format!(r#"{{"cniVersion":"1.1.0","name":"x","type":"t",{dirs},"cni.dev/valid-attachments":[1]}}"#)
                .into_bytes(),
        ];
        for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
            for input in &inputs {
                let vars = [
                    ("CNI_COMMAND", verb),
                    ("CNI_CONTAINERID", "c"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/nonexistent"),
                ];
                let out = run(&env(&vars), input);
                if out.exit_code != 0 {
                    let obj: crate::error::ErrorObject = serde_json::from_str(&out.stdout).unwrap();
                    assert!(obj.code > 0);
                }
            }
        }
    }

    #[test]
    fn ifname_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a234567890abcde").is_ok());
        for bad in ["a234567890abcdef", ".", "..", "a b", "a:b", "a/b", "a\tb"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
