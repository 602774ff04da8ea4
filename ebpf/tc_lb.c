/* TC programs on node devices: the load balancer when XDP is off (loadBalancer.acceleration disabled,
 * same decisions as xdp_lb.c from lib/lb.h), and the backend side of DSR. Passing returns
 * TC_ACT_UNSPEC so the next program of a TCX chain still sees the packet. */
#include "lib/ctx_skb.h"
#include "lib/lb.h"
#include "lib/lb_dsr.h"

/* Node device ingress: frontends translated, SNAT replies restored. */
SEC("classifier")
int cil_lb_ingress(struct __sk_buff *skb)
{
	return lb4_ingress(skb);
}

/* A pod's host-side device, ingress (what the pod sends): its flows to frontends translated with
 * DNAT only (the backend sees the pod), replies of local backends restored to the frontend. */
SEC("classifier")
int cil_lb_pod_ingress(struct __sk_buff *skb)
{
	return lb4_ingress_at(skb, 1);
}

/* Node device ingress on a backend's node: remember DSR options (never changes the packet). */
SEC("classifier")
int cil_lb_dsr_ingress(struct __sk_buff *skb)
{
	lb4_dsr_record(skb);
	return TC_ACT_UNSPEC;
}

/* Node device egress on a backend's node: replies of DSR and node-local flows leave as the VIP. */
SEC("classifier")
int cil_lb_dsr_egress(struct __sk_buff *skb)
{
	return lb4_dsr_reverse(skb);
}

char _license[] SEC("license") = "GPL";
