/* TC programs on the host side of every pod veth: account the endpoint's traffic.
 * They never drop: accounting must not change forwarding. Policy and service translation hook here
 * later, in front of the accounting. */
#include "lib/common.h"
#include "lib/endpoint.h"

/* Ingress on the host-side veth = packets the pod sends. */
SEC("classifier")
int cil_from_container(struct __sk_buff *skb)
{
	struct ep_stats *s = ep_stats_of(skb->ifindex);

	if (s) {
		s->rx_packets++;
		s->rx_bytes += skb->len;
	}
	return TC_ACT_UNSPEC;
}

/* Egress on the host-side veth = packets delivered to the pod. */
SEC("classifier")
int cil_to_container(struct __sk_buff *skb)
{
	struct ep_stats *s = ep_stats_of(skb->ifindex);

	if (s) {
		s->tx_packets++;
		s->tx_bytes += skb->len;
	}
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "GPL";
