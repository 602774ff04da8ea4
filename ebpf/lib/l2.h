/* L2 announcements: the ARP responder table. Mirrored by `cilia_datapath::l2` (checked at build time). */
#ifndef CILIA_L2_H
#define CILIA_L2_H

#include "common.h"

/* Upper bound of (VIP, interface) pairs one node announces. */
#define CILIA_L2_RESPONDER_MAX 16384

/* Key of cilia_l2_responder_v4: a VIP this node answers ARP for, on one interface. */
struct l2_responder_key {
	__u32 ip4;     /* VIP, network order */
	__u32 ifindex; /* interface the request arrives on */
};

/* What the responder answers with, and how often it did. */
struct l2_responder_entry {
	__u8 mac[6];          /* the interface's MAC: TC programs cannot read it themselves */
	__u8 pad[2];
	__u64 responses_sent; /* ARP replies sent for this entry (atomic) */
	__u64 lapsed;         /* requests left unanswered because the lease had run out (atomic) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_L2_RESPONDER_MAX);
	__type(key, struct l2_responder_key);
	__type(value, struct l2_responder_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_l2_responder_v4 SEC(".maps");

/* Value of cilia_l2_lease (an ARRAY of one): the node may answer ARP for its VIPs only until
 * `expires_ns` (bpf_ktime_get_ns(), i.e. CLOCK_MONOTONIC). The agent pushes it forward whenever it
 * hears from the operator; the responder checks it itself, so a node whose agent died (kill -9) or
 * lost the operator stops answering one lease after the last word, without anyone's help — and only
 * then does the operator hand its VIPs to another node. 0 (a fresh map): never answer. */
struct l2_lease {
	__u64 expires_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l2_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_l2_lease SEC(".maps");

/* An Ethernet/IPv4 ARP packet (RFC 826), as it sits after the Ethernet header. */
struct arp_eth_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

#define ARP_HTYPE_ETHER 1
#define ARP_OP_REQUEST 1
#define ARP_OP_REPLY 2

#endif /* CILIA_L2_H */
