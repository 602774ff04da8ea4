/* TC ingress on the node's announcing devices: answers ARP requests for the LoadBalancer/external
 * VIPs this node announces (cilia_l2_responder_v4), with the interface's own MAC, by turning the
 * request into the reply in place and sending it back out of the same interface.
 * It answers only while the node's lease (cilia_l2_lease) runs: an agent that is gone or cut off
 * from the operator must fall silent on its own.
 * Everything else continues down the TC chain untouched (TC_ACT_UNSPEC = tcx "next"), so the load
 * balancer's programs behind it still see every IP packet. */
#include "lib/common.h"
#include "lib/l2.h"

SEC("classifier")
int cil_l2_responder(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *arp = data + sizeof(*eth);

	if ((void *)(arp + 1) > data_end)
		return TC_ACT_UNSPEC;
	if (eth->h_proto != bpf_htons(ETH_P_ARP))
		return TC_ACT_UNSPEC;
	if (arp->htype != bpf_htons(ARP_HTYPE_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4 || arp->op != bpf_htons(ARP_OP_REQUEST))
		return TC_ACT_UNSPEC;

	struct l2_responder_key key = { .ifindex = skb->ifindex };
	__builtin_memcpy(&key.ip4, arp->tpa, 4);
	__u32 spa;
	__builtin_memcpy(&spa, arp->spa, 4);
	/* A gratuitous request (sender = target) announces someone's address; it asks nothing. */
	if (spa == key.ip4)
		return TC_ACT_UNSPEC;
	struct l2_responder_entry *e = bpf_map_lookup_elem(&cilia_l2_responder_v4, &key);
	if (!e)
		return TC_ACT_UNSPEC;
	/* Looked up after the entry, so requests for other addresses cost no clock read. */
	__u32 zero = 0;
	struct l2_lease *lease = bpf_map_lookup_elem(&cilia_l2_lease, &zero);
	if (!lease || bpf_ktime_get_ns() >= lease->expires_ns) {
		__sync_fetch_and_add(&e->lapsed, 1);
		return TC_ACT_UNSPEC;
	}

	/* The reply: to the asker, from the VIP at this interface's MAC. */
	__u8 asker_mac[ETH_ALEN];
	__builtin_memcpy(asker_mac, arp->sha, ETH_ALEN);
	arp->op = bpf_htons(ARP_OP_REPLY);
	__builtin_memcpy(arp->tha, asker_mac, ETH_ALEN);
	__builtin_memcpy(arp->tpa, &spa, 4);
	__builtin_memcpy(arp->sha, e->mac, ETH_ALEN);
	__builtin_memcpy(arp->spa, &key.ip4, 4);
	__builtin_memcpy(eth->h_dest, asker_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, e->mac, ETH_ALEN);
	__sync_fetch_and_add(&e->responses_sent, 1);
	return bpf_redirect(skb->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
