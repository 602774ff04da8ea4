//! LB-IPAM and the operator's Kubernetes edge, end to end: the lab API server on the
//! control-plane node, the real `cilia-operator` watching it (`serve --kubeconfig`), and the real
//! kubectl applying the seed objects from the client namespace.
//!
//! Needs root, the built workspace (`make build`) and `.venv` (`make deps`).

use std::net::Ipv4Addr;
use std::time::Duration;

use cilia_e2e::lab::{
    LAB_LEASE_DURATION, LAB_NAMESPACE, Lab, default_nodes, repo_root, wait_until,
};
use ipnet::Ipv4Net;
use serde_json::Value;

/// The seed pool's block.
const SEED_POOL: &str = "172.18.250.0/24";
const STEP: Duration = Duration::from_secs(15);

fn seed(name: &str) -> String {
    repo_root()
        .join("../shared/fixtures/seed")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn crds() -> String {
    repo_root().join("crds").to_string_lossy().into_owned()
}

fn up() -> Lab {
    let lab = Lab::up_kube(default_nodes()).expect("lab with API server");
    lab.kubectl(&["apply", "-f", &crds()]).expect("CRDs apply");
    lab
}

fn svc(lab: &Lab, name: &str) -> Value {
    lab.kubectl_json(&["svc", "-n", "default", name])
        .unwrap_or_else(|e| panic!("get svc {name}: {e}"))
}

fn ingress(svc: &Value) -> Vec<String> {
    svc.pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits until Service `name`'s IPAM condition has `reason`; returns the Service.
fn wait_reason(lab: &Lab, name: &str, reason: &str) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(STEP, || {
        last = svc(lab, name);
        condition(&last, "cilium.io/IPAMRequestSatisfied").is_some_and(|c| c["reason"] == reason)
    });
    if ok.is_err() {
        panic!(
            "service {name} never got reason {reason}; last: {}\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap(),
            lab.operator_logs()
        );
    }
    last
}

fn service_yaml(name: &str, annotations: &[(&str, &str)], port: u16) -> String {
    let ann: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": "default", "annotations": ann },
        "spec": {
            "type": "LoadBalancer",
            "selector": { "app": name },
            "ports": [{ "port": port, "protocol": "TCP" }],
        },
    })
    .to_string()
}

fn apply(lab: &Lab, manifest: &str) {
    lab.kubectl_with_input(&["apply", "-f", "-"], manifest)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
}

fn in_seed_pool(ip: &str) -> bool {
    let net: Ipv4Net = SEED_POOL.parse().unwrap();
    ip.parse::<Ipv4Addr>().is_ok_and(|a| net.contains(&a))
}

// The seed pool and the seed Service, applied unchanged with kubectl: the Service gets an address
// from 172.18.250.0/24 and a satisfied condition; the pool reports no conflict and its counts; the
// operator's node intents come from the registered Node objects (routes to the other nodes' pods).
#[test]
fn seed_pool_gives_the_seed_service_an_address() {
    let mut lab = up();
    lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
        .expect("seed pool");
    lab.kubectl(&["apply", "-f", &seed("deathstar-svc.yaml")])
        .expect("seed service");
    let s = wait_reason(&lab, "deathstar-lb", "satisfied");
    let ips = ingress(&s);
    assert_eq!(ips.len(), 1, "{ips:?}");
    assert!(in_seed_pool(&ips[0]), "{ips:?} not in {SEED_POOL}");
    let c = condition(&s, "cilium.io/IPAMRequestSatisfied").unwrap();
    assert_eq!(c["status"], "True", "{c}");
    assert_eq!(c["observedGeneration"], s["metadata"]["generation"], "{c}");

    let mut pool = Value::Null;
    wait_until(STEP, || {
        pool = lab
            .kubectl_json(&["ippool", "default"])
            .unwrap_or(Value::Null);
        condition(&pool, "cilium.io/IPsUsed").is_some_and(|c| c["message"] == "1")
    })
    .unwrap_or_else(|_| panic!("pool status: {}\n{}", pool["status"], lab.operator_logs()));
    let conflict = condition(&pool, "cilium.io/PoolConflict").unwrap();
    assert_eq!(conflict["status"], "False", "{conflict}");
    assert_eq!(conflict["reason"], "resolved", "{conflict}");
    assert_eq!(
        condition(&pool, "cilium.io/IPsTotal").unwrap()["message"],
        "256"
    );
    // kubectl's printer column reads the condition the operator wrote.
    let table = lab.kubectl(&["get", "ippools"]).unwrap();
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        row.first() == Some(&"default") && row.contains(&"False") && row.contains(&"255"),
        "{table}"
    );

    // An operator restart rebuilds LB-IPAM from the statuses and writes nothing: once the new
    // process holds the lease and has reconciled, neither the Service nor the pool moved.
    let svc_rv = s["metadata"]["resourceVersion"].clone();
    let pool_rv = pool["metadata"]["resourceVersion"].clone();
    lab.stop_operator(libc::SIGTERM).unwrap();
    lab.start_operator().unwrap();
    let pid = lab.operator_pid_on("control-plane").unwrap();
    wait_until(STEP, || {
        holder(&lab).is_some_and(|h| h == format!("control-plane_{pid}"))
    })
    .unwrap_or_else(|_| panic!("restarted operator never led\n{}", lab.operator_logs()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        svc(&lab, "deathstar-lb")["metadata"]["resourceVersion"],
        svc_rv
    );
    assert_eq!(
        lab.kubectl_json(&["ippool", "default"]).unwrap()["metadata"]["resourceVersion"],
        pool_rv
    );

    // Nodes → intents: worker routes the other nodes' pod CIDRs via their InternalIPs.
    wait_until(STEP, || {
        lab.cilia_routes("worker").is_ok_and(|r| {
            r.contains(&("10.244.0.0/24".into(), "172.18.0.2".into()))
                && r.contains(&("10.244.2.0/24".into(), "172.18.0.4".into()))
        })
    })
    .unwrap_or_else(|_| {
        panic!(
            "routes on worker: {:?}\n{}",
            lab.cilia_routes("worker"),
            lab.operator_logs()
        )
    });
}

// Requests LB-IPAM cannot serve get Cilium's reasons and messages; an overlapping pool is marked
// as conflicting while the older one keeps working; garbage annotations and a pool deleted under
// live Services neither crash the operator nor cost other Services their addresses.
#[test]
fn unsatisfiable_requests_conflicts_and_garbage() {
    let mut lab = up();
    lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
        .expect("seed pool");
    lab.kubectl(&["apply", "-f", &seed("deathstar-svc.yaml")])
        .expect("seed service");
    let first = ingress(&wait_reason(&lab, "deathstar-lb", "satisfied"));

    // An address outside every pool.
    apply(
        &lab,
        &service_yaml("outside", &[("lbipam.cilium.io/ips", "10.99.0.7")], 80),
    );
    let s = wait_reason(&lab, "outside", "no_pool");
    let c = condition(&s, "cilium.io/IPAMRequestSatisfied").unwrap();
    assert_eq!(c["status"], "False");
    assert_eq!(
        c["message"], "No pool exists with a CIDR containing '10.99.0.7'",
        "{c}"
    );
    assert!(ingress(&s).is_empty());

    // An overlapping, newer pool is the conflicting one.
    apply(
        &lab,
        r#"{"apiVersion":"cilium.io/v2","kind":"CiliumLoadBalancerIPPool",
            "metadata":{"name":"overlap"},
            "spec":{"blocks":[{"cidr":"172.18.250.128/25"}]}}"#,
    );
    let mut pool = Value::Null;
    wait_until(STEP, || {
        pool = lab
            .kubectl_json(&["ippool", "overlap"])
            .unwrap_or(Value::Null);
        condition(&pool, "cilium.io/PoolConflict").is_some_and(|c| c["status"] == "True")
    })
    .unwrap_or_else(|_| panic!("overlap pool: {}\n{}", pool["status"], lab.operator_logs()));
    let c = condition(&pool, "cilium.io/PoolConflict").unwrap();
    assert_eq!(c["reason"], "cidr_overlap", "{c}");
    assert!(
        c["message"].as_str().unwrap_or("").contains("'default'"),
        "{c}"
    );

    // Garbage annotations: skipped, the Service still gets a generic address.
    apply(
        &lab,
        &service_yaml(
            "garbage",
            &[
                ("lbipam.cilium.io/ips", "not-an-ip, ,300.1.2.3"),
                ("lbipam.cilium.io/sharing-cross-namespace", ",,,*x"),
                ("service.cilium.io/forwarding-mode", "warp-speed"),
            ],
            81,
        ),
    );
    let g = wait_reason(&lab, "garbage", "satisfied");
    assert!(in_seed_pool(&ingress(&g)[0]), "{:?}", ingress(&g));
    assert_ne!(ingress(&g), first);
    assert!(lab.operator_alive(), "{}", lab.operator_logs());
    assert!(
        lab.operator_log().contains("lbipam.cilium.io/ips")
            && lab.operator_log().contains("not-an-ip"),
        "the bad annotation is logged with its field and value:\n{}",
        lab.operator_log()
    );

    // The pool deleted under live Services: they lose their addresses (no pool is left), the
    // operator stays up, and the pool coming back gives every Service an address again.
    lab.kubectl(&["delete", "ippool", "default", "overlap"])
        .expect("delete pools");
    let s = wait_reason(&lab, "deathstar-lb", "no_pool");
    assert!(ingress(&s).is_empty(), "{:?}", ingress(&s));
    assert!(lab.operator_alive(), "{}", lab.operator_logs());
    lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
        .expect("seed pool again");
    for name in ["deathstar-lb", "garbage"] {
        let s = wait_reason(&lab, name, "satisfied");
        assert!(in_seed_pool(&ingress(&s)[0]));
    }
    assert!(lab.operator_alive_on("control-plane"));
}

/// The leader Lease's holder (`<node>_<pid>` in the lab).
fn holder(lab: &Lab) -> Option<String> {
    let lease = lab
        .kubectl_json(&["lease", "-n", LAB_NAMESPACE, "cilia-operator"])
        .ok()?;
    Some(lease.pointer("/spec/holderIdentity")?.as_str()?.to_string())
}

/// The node whose replica holds the leader Lease.
fn leader(lab: &Lab) -> Option<String> {
    Some(holder(lab)?.split('_').next()?.to_string())
}

// Two operator replicas: killing the leader with SIGKILL hands over within the lease time; the
// new leader changes no existing allocation (the Services are not even rewritten) and hands a new
// Service an address nobody holds.
#[test]
fn killed_leader_hands_over_without_moving_addresses() {
    let mut lab = up();
    lab.start_operator_replica(1).expect("second replica");
    lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
        .expect("seed pool");
    lab.kubectl(&["apply", "-f", &seed("deathstar-svc.yaml")])
        .expect("seed service");
    for i in 0..5 {
        apply(&lab, &service_yaml(&format!("web-{i}"), &[], 80));
    }
    let mut before = std::collections::BTreeMap::new();
    for name in ["deathstar-lb", "web-0", "web-1", "web-2", "web-3", "web-4"] {
        let s = wait_reason(&lab, name, "satisfied");
        before.insert(
            name.to_string(),
            (
                ingress(&s),
                s["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
        );
    }
    let old = leader(&lab).expect("a leader holds the lease");
    let standby = if old == "control-plane" {
        "worker"
    } else {
        "control-plane"
    };
    lab.kill_operator_on(&old, libc::SIGKILL).unwrap();
    let killed_at = std::time::Instant::now();
    wait_until(LAB_LEASE_DURATION * 3, || {
        leader(&lab).as_deref() == Some(standby)
    })
    .unwrap_or_else(|_| panic!("no takeover by {standby}\n{}", lab.operator_logs()));
    let took = killed_at.elapsed();
    eprintln!("takeover by {standby} after {took:?} (lease {LAB_LEASE_DURATION:?})");
    assert!(
        took <= LAB_LEASE_DURATION * 2,
        "takeover took {took:?}, lease is {LAB_LEASE_DURATION:?}"
    );

    // The new leader serves new requests, with an address nobody holds.
    apply(&lab, &service_yaml("after-failover", &[], 80));
    let s = wait_reason(&lab, "after-failover", "satisfied");
    let new_ip = ingress(&s);
    for (name, (ips, _)) in &before {
        assert_ne!(ips, &new_ip, "{name} and after-failover share {new_ip:?}");
    }
    // Existing allocations are unchanged and were not rewritten.
    for (name, (ips, rv)) in &before {
        let s = svc(&lab, name);
        assert_eq!(&ingress(&s), ips, "{name} moved");
        assert_eq!(
            s["metadata"]["resourceVersion"].as_str().unwrap(),
            rv,
            "{name} was rewritten by the new leader"
        );
    }
    let all: Vec<Vec<String>> = before.values().map(|(i, _)| i.clone()).collect();
    let mut flat: Vec<&String> = all.iter().flatten().chain(new_ip.iter()).collect();
    let n = flat.len();
    flat.sort();
    flat.dedup();
    assert_eq!(
        flat.len(),
        n,
        "an address was allocated twice: {all:?} {new_ip:?}"
    );
    assert!(lab.operator_alive_on(standby), "{}", lab.operator_logs());
}
