/* Network policy enforcement at the endpoint's edge (`cilia_model::policy` compiles the rules).
 *
 * On a pod's host-side veth: TC ingress sees what the pod sends (its egress), TC egress what is
 * delivered to it (its ingress). On a node device (host policies): TC ingress is the host's
 * ingress. The endpoint id is the interface the program runs on. A verdict to let a packet through
 * continues down the TCX chain (TC_ACT_UNSPEC), so accounting and load balancing still run. */
#include "lib/common.h"
#include "lib/policy.h"

/* Host-side veth ingress = the pod's egress. */
SEC("classifier")
int cil_policy_from_container(struct __sk_buff *skb)
{
	return policy_verdict(skb, skb->ifindex, POLICY_DIR_EGRESS) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

/* Host-side veth egress = the pod's ingress. */
SEC("classifier")
int cil_policy_to_container(struct __sk_buff *skb)
{
	return policy_verdict(skb, skb->ifindex, POLICY_DIR_INGRESS) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

/* Node device ingress = the host's ingress (host firewall). A packet routed on to one of the
 * node's pods is not the host's: the pod's own policy judges it at its veth. */
SEC("classifier")
int cil_policy_host_ingress(struct __sk_buff *skb)
{
	if (policy_pod_side(skb, 0))
		return TC_ACT_UNSPEC;
	return policy_verdict(skb, skb->ifindex, POLICY_DIR_INGRESS) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

/* Node device egress = the host's egress; a pod's packet leaving through it is the pod's. */
SEC("classifier")
int cil_policy_host_egress(struct __sk_buff *skb)
{
	if (policy_pod_side(skb, 1))
		return TC_ACT_UNSPEC;
	return policy_verdict(skb, skb->ifindex, POLICY_DIR_EGRESS) ? TC_ACT_UNSPEC : TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";
