//! What a Service asks LB-IPAM for: whether LB-IPAM serves it at all, which addresses or
//! families it wants, and with whom it may share an address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::objects::{
    DefaultLbServiceIpam, ExternalTrafficPolicy, IpFamily, IpFamilyPolicy, LbIpamConfig, Service,
};
use super::{
    ANNOTATION_IPS, ANNOTATION_IPS_ALIAS, ANNOTATION_SHARING_CROSS_NAMESPACE,
    ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS, ANNOTATION_SHARING_KEY, ANNOTATION_SHARING_KEY_ALIAS,
    CLASS_BGP_CONTROL_PLANE, CLASS_L2_ANNOUNCER, LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE,
};

/// What decides whether two Services may hold the same address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sharing {
    /// `lbipam.cilium.io/sharing-key`; empty: the Service never shares.
    pub(crate) key: String,
    pub(crate) namespace: String,
    /// `lbipam.cilium.io/sharing-cross-namespace` entries (`*` allows every namespace).
    pub(crate) cross_namespace: Vec<String>,
    pub(crate) ports: Vec<u16>,
    pub(crate) external_traffic_policy: ExternalTrafficPolicy,
    pub(crate) selector: BTreeMap<String, String>,
}

/// Whether `candidate` may join `holder` on one address; the error is Cilium's reason text.
pub(crate) fn compatible(holder: &Sharing, candidate: &Sharing) -> Result<(), &'static str> {
    if holder.key != candidate.key {
        return Err("different sharing key");
    }
    if holder.namespace != candidate.namespace {
        let allows = |s: &Sharing, ns: &str| s.cross_namespace.iter().any(|n| n == ns || n == "*");
        if !allows(holder, &candidate.namespace) || !allows(candidate, &holder.namespace) {
            return Err("different and not permitted namespace");
        }
    }
    // Protocols are ignored on purpose: the datapath cannot tell them apart on one address.
    if holder.ports.iter().any(|p| candidate.ports.contains(p)) {
        return Err("same port");
    }
    if holder.external_traffic_policy != candidate.external_traffic_policy {
        return Err("different ExternalTrafficPolicy");
    }
    // With `Local`, traffic must only reach nodes running the pods of *both* Services.
    if holder.external_traffic_policy == ExternalTrafficPolicy::Local
        && (holder.selector.is_empty()
            || candidate.selector.is_empty()
            || holder.selector != candidate.selector)
    {
        return Err("compatible ExternalTrafficPolicy local but selecting different set of pods");
    }
    Ok(())
}

/// A Service LB-IPAM is responsible for, as LB-IPAM reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceRequest {
    /// The Service's labels plus the virtual namespace/name labels pools can select on.
    pub(crate) labels: BTreeMap<String, String>,
    /// Specific addresses (`spec.loadBalancerIP` ∪ the ips annotation), deduplicated, in order.
    /// When non-empty, families are not consulted.
    pub(crate) ips: Vec<IpAddr>,
    pub(crate) v4: bool,
    pub(crate) v6: bool,
    /// Families required but disabled on the cluster (`RequireDualStack` only): never granted.
    pub(crate) v4_blocked: bool,
    pub(crate) v6_blocked: bool,
    pub(crate) sharing: Sharing,
}

/// Whether LB-IPAM serves this Service: a LoadBalancer without a class when LB-IPAM is the
/// default, or with a class of an enabled Cilium announcer.
pub(crate) fn is_responsible(svc: &Service, config: &LbIpamConfig) -> bool {
    if !svc.is_load_balancer {
        return false;
    }
    match svc.load_balancer_class.as_deref() {
        None => config.default_lb_service_ipam == DefaultLbServiceIpam::Lbipam,
        Some(CLASS_L2_ANNOUNCER) => config.l2_announcements_enabled,
        Some(CLASS_BGP_CONTROL_PLANE) => config.bgp_enabled,
        Some(_) => false,
    }
}

/// An annotation by its current name, else by its legacy alias.
fn annotation<'a>(svc: &'a Service, key: &str, alias: &str) -> Option<&'a str> {
    svc.annotations
        .get(key)
        .or_else(|| svc.annotations.get(alias))
        .map(String::as_str)
}

/// The request of a Service LB-IPAM is responsible for.
pub(crate) fn request_of(svc: &Service, config: &LbIpamConfig) -> ServiceRequest {
    let mut labels = svc.labels.clone();
    labels.insert(LABEL_SERVICE_NAMESPACE.into(), svc.namespace.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), svc.name.clone());

    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = svc.load_balancer_ip.iter().map(String::as_str).chain(
        annotation(svc, ANNOTATION_IPS, ANNOTATION_IPS_ALIAS)
            .into_iter()
            .flat_map(|v| v.split(',')),
    );
    // Unparsable entries are skipped, as Cilium does (it only logs them).
    for ip in listed.filter_map(|s| s.trim().parse::<IpAddr>().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }

    let (v4, v6, v4_blocked, v6_blocked) = families(svc, config);

    let key = annotation(svc, ANNOTATION_SHARING_KEY, ANNOTATION_SHARING_KEY_ALIAS)
        .unwrap_or_default()
        .to_string();
    let cross_namespace = annotation(
        svc,
        ANNOTATION_SHARING_CROSS_NAMESPACE,
        ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS,
    )
    .map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default();

    ServiceRequest {
        labels,
        ips,
        v4,
        v6,
        v4_blocked,
        v6_blocked,
        sharing: Sharing {
            key,
            namespace: svc.namespace.clone(),
            cross_namespace,
            ports: svc.ports.iter().map(|p| p.port).collect(),
            external_traffic_policy: svc.external_traffic_policy,
            selector: svc.selector.clone(),
        },
    }
}

/// Requested families `(v4, v6)` and the required-but-disabled ones.
fn families(svc: &Service, config: &LbIpamConfig) -> (bool, bool, bool, bool) {
    let listed = |f: IpFamily| svc.ip_families.contains(&f);
    match svc.ip_family_policy {
        None | Some(IpFamilyPolicy::SingleStack) => match svc.ip_families.first() {
            Some(IpFamily::IPv4) => (true, false, false, false),
            Some(IpFamily::IPv6) => (false, true, false, false),
            None if config.ipv4_enabled => (true, false, false, false),
            None if config.ipv6_enabled => (false, true, false, false),
            None => (false, false, false, false),
        },
        Some(IpFamilyPolicy::PreferDualStack) => {
            if svc.ip_families.is_empty() {
                (config.ipv4_enabled, config.ipv6_enabled, false, false)
            } else {
                (
                    listed(IpFamily::IPv4) && config.ipv4_enabled,
                    listed(IpFamily::IPv6) && config.ipv6_enabled,
                    false,
                    false,
                )
            }
        }
        // Both families, whatever is enabled: on a single-stack cluster the request can never
        // be satisfied (the API server rejects such Services anyway).
        Some(IpFamilyPolicy::RequireDualStack) => {
            (true, true, !config.ipv4_enabled, !config.ipv6_enabled)
        }
    }
}

impl ServiceRequest {
    /// Whether `ip` is something this Service asked for (a listed address, or an address of a
    /// requested family when none are listed).
    pub(crate) fn wants(&self, ip: IpAddr) -> bool {
        if !self.ips.is_empty() {
            return self.ips.contains(&ip);
        }
        if ip.is_ipv6() {
            self.v6 && !self.v6_blocked
        } else {
            self.v4 && !self.v4_blocked
        }
    }

    /// Every listed address held, or (no list) an address of every requested family.
    pub(crate) fn is_satisfied(&self, held: &[IpAddr]) -> bool {
        if !self.ips.is_empty() {
            return self.ips.iter().all(|ip| held.contains(ip));
        }
        (!self.v4 || held.iter().any(IpAddr::is_ipv4))
            && (!self.v6 || held.iter().any(IpAddr::is_ipv6))
    }
}
