//! LB-IPAM index tests: no cluster, small builders, documentation address ranges.
//! One file per resource kind, plus the properties.

mod pools;
mod properties;
mod scale;
mod services;
mod sharing;

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::selector::LabelSelector;

/// TEST-NET-1, the addresses most tests hand out.
pub(super) const NET1: &str = "192.0.2.0/24";
/// TEST-NET-2.
pub(super) const NET2: &str = "198.51.100.0/24";
/// TEST-NET-3.
pub(super) const NET3: &str = "203.0.113.0/24";
/// IPv6 documentation prefix.
pub(super) const NET6: &str = "2001:db8::/64";

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// A pool of CIDR blocks, created at time 0, generation 1.
pub(super) fn mk_pool(name: &str, cidrs: &[&str]) -> Pool {
    Pool {
        name: name.into(),
        creation_timestamp: 0,
        generation: 1,
        blocks: cidrs
            .iter()
            .map(|c| Block::Cidr(c.parse().unwrap()))
            .collect(),
        service_selector: None,
        disabled: false,
        allow_first_last_ips: None,
        current_conditions: Vec::new(),
    }
}

/// A pool of one start/stop block.
pub(super) fn mk_range_pool(name: &str, start: &str, stop: Option<&str>) -> Pool {
    let mut pool = mk_pool(name, &[]);
    pool.blocks = vec![Block::Range {
        start: ip(start),
        stop: stop.map(ip),
    }];
    pool
}

/// A LoadBalancer Service without class, ports or status, created at time 0, generation 1.
pub(super) fn mk_svc(ns: &str, name: &str) -> Service {
    Service {
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{ns}-{name}"),
        creation_timestamp: 0,
        generation: 1,
        is_load_balancer: true,
        ..Service::default()
    }
}

pub(super) fn key(ns: &str, name: &str) -> ServiceKey {
    ServiceKey::new(ns, name)
}

/// Small fluent edits of test objects.
pub(super) trait Edit: Sized {
    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl Edit for Service {}
impl Edit for Pool {}

pub(super) trait SvcEdit {
    fn created(self, t: i64) -> Self;
    fn annotate(self, k: &str, v: &str) -> Self;
    fn label(self, k: &str, v: &str) -> Self;
    fn ports(self, ports: &[u16]) -> Self;
    fn ingress(self, list: &[&str]) -> Self;
    fn sharing(self, key: &str) -> Self;
}

impl SvcEdit for Service {
    fn created(self, t: i64) -> Self {
        self.with(|s| s.creation_timestamp = t)
    }
    fn annotate(self, k: &str, v: &str) -> Self {
        self.with(|s| {
            s.annotations.insert(k.into(), v.into());
        })
    }
    fn label(self, k: &str, v: &str) -> Self {
        self.with(|s| {
            s.labels.insert(k.into(), v.into());
        })
    }
    fn ports(self, ports: &[u16]) -> Self {
        self.with(|s| {
            s.ports = ports
                .iter()
                .map(|&p| ServicePort {
                    port: p,
                    protocol: "TCP".into(),
                })
                .collect()
        })
    }
    fn ingress(self, list: &[&str]) -> Self {
        self.with(|s| s.current_ingress = ips(list))
    }
    fn sharing(self, k: &str) -> Self {
        self.annotate(ANNOTATION_SHARING_KEY, k)
    }
}

pub(super) fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(pairs.iter().copied())
}

pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An index with the default configuration (LB-IPAM default, IPv4 only) and these pools.
pub(super) fn ipam_with(pools: &[Pool]) -> LbIpam {
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    for p in pools {
        ipam.apply_pool(p.clone());
    }
    ipam
}

/// The ingress the index wants on a Service, as strings.
pub(super) fn ingress_of(ipam: &LbIpam, k: &ServiceKey) -> Vec<String> {
    ipam.service_status(k)
        .expect("known service")
        .ingress()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `(status, reason, message)` of the Service condition the index wants.
pub(super) fn cond_of(ipam: &LbIpam, k: &ServiceKey) -> (&'static str, String, String) {
    let c = ipam
        .service_status(k)
        .expect("known service")
        .condition()
        .expect("managed service")
        .clone();
    (c.status.as_str(), c.reason, c.message)
}

/// The message of a pool condition the index wants.
pub(super) fn pool_cond<'a>(ipam: &'a LbIpam, pool: &str, type_: &str) -> &'a Condition {
    ipam.pool_conditions(pool)
        .expect("known pool")
        .iter()
        .find(|c| c.type_ == type_)
        .expect("condition present")
}

/// The Service as the watch would deliver it after the status writer applied `status`.
pub(super) fn written(mut svc: Service, status: &ServiceLbStatus) -> Service {
    match status {
        ServiceLbStatus::Ignored => {}
        ServiceLbStatus::Managed { ingress, condition } => {
            svc.current_ingress = ingress.clone();
            svc.current_condition = Some(condition.clone());
        }
        ServiceLbStatus::Released => {
            svc.current_ingress.clear();
            svc.current_condition = None;
        }
    }
    svc
}

/// Plays the status writer until nothing changes: every reported status is written and its
/// watch event fed back. Returns the objects as they end up.
pub(super) fn settle(
    ipam: &mut LbIpam,
    pools: &mut BTreeMap<String, Pool>,
    services: &mut BTreeMap<ServiceKey, Service>,
    first: Changes,
) {
    let mut changes = first;
    for _round in 0..50 {
        if changes.is_empty() {
            return;
        }
        let mut next = Changes::default();
        for c in &changes.pools {
            if let Some(p) = pools.get_mut(&c.name) {
                p.current_conditions = c.conditions.clone();
                let more = ipam.apply_pool(p.clone());
                next.services.extend(more.services);
                next.pools.extend(more.pools);
            }
        }
        for c in &changes.services {
            if let Some(s) = services.get_mut(&c.key) {
                *s = written(s.clone(), &c.status);
                let more = ipam.apply_service(s.clone());
                next.services.extend(more.services);
                next.pools.extend(more.pools);
            }
        }
        changes = next;
    }
    panic!("statuses did not settle");
}
