/* BPF masquerading on the node device (lib/masq.h): egress SNATs pod traffic leaving the cluster to
 * the node address, ingress restores the pod on replies. Passing returns TC_ACT_UNSPEC so the next
 * program of a TCX chain still sees the packet. */
#include "lib/ctx_skb.h"
#include "lib/masq.h"

SEC("classifier")
int cil_masq_egress(struct __sk_buff *skb)
{
	return masq4_egress(skb);
}

SEC("classifier")
int cil_masq_ingress(struct __sk_buff *skb)
{
	return masq4_ingress(skb);
}

char _license[] SEC("license") = "GPL";
