//! Which pod devices need the endpoint programs attached or detached: a pure diff over
//! (interface name, ifindex) pairs, so a device recreated under the same name is re-attached.

use std::collections::BTreeSet;

/// Host-side pod veths are named `lxc` + a hash (as Cilium names them).
pub const ENDPOINT_IFACE_PREFIX: &str = "lxc";

pub type Iface = (String, u32);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct EndpointDiff {
    pub attach: Vec<Iface>,
    pub detach: Vec<Iface>,
}

/// `links` are every link of the node; `attached` the pinned attachments.
pub fn endpoint_diff(links: &[Iface], attached: &BTreeSet<Iface>) -> EndpointDiff {
    let live: BTreeSet<Iface> = links
        .iter()
        .filter(|(n, _)| n.starts_with(ENDPOINT_IFACE_PREFIX))
        .cloned()
        .collect();
    EndpointDiff {
        attach: live.difference(attached).cloned().collect(),
        detach: attached.difference(&live).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(n: &str, x: u32) -> Iface {
        (n.to_string(), x)
    }

    // Only pod devices are considered; node devices are never touched.
    #[test]
    fn only_lxc_devices_are_endpoints() {
        let d = endpoint_diff(
            &[i("eth0", 2), i("lxc1234", 7), i("cilia_host", 3)],
            &BTreeSet::new(),
        );
        assert_eq!(d.attach, vec![i("lxc1234", 7)]);
        assert!(d.detach.is_empty());
    }

    // A restart with everything pinned does nothing.
    #[test]
    fn pinned_and_live_is_a_no_op() {
        let d = endpoint_diff(&[i("lxcaa", 7)], &[i("lxcaa", 7)].into());
        assert_eq!(d, EndpointDiff::default());
    }

    // A pod recreated with the same device name but a new ifindex gets its programs again.
    #[test]
    fn recreated_device_is_reattached() {
        let d = endpoint_diff(&[i("lxcaa", 9)], &[i("lxcaa", 7)].into());
        assert_eq!(d.attach, vec![i("lxcaa", 9)]);
        assert_eq!(d.detach, vec![i("lxcaa", 7)]);
    }
}
