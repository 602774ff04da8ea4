/* BPF masquerading maps: the one declaration of every layout tc_masq.c shares with the agent.
 * Mirrored by `cilia_datapath::masq_maps` (sizes and offsets checked at build time through
 * layout_probe.c). Every map is pinned by name in the node's bpffs directory.
 *
 * How a packet is handled (lib/masq.h):
 *  - Egress on the node device: an IPv4 packet from this node's pod CIDR (cilia_masq_config) to a
 *    destination outside cilia_masq_cluster_v4 (native routing CIDR, node addresses, other nodes' pod
 *    CIDRs) and outside cilia_ipmasq_v4 (the ip-masq-agent set, empty when the agent is off) leaves
 *    with the node address as source. TCP and UDP keep their flow on a port claimed by a BPF_NOEXIST
 *    insert of the reply's tuple into cilia_snat_v4_external, trying up to MASQ_PORT_RETRIES hashed
 *    candidates; ICMP echo requests do the same with their identifier.
 *  - Ingress on the node device: a reply to the node address whose tuple is in cilia_snat_v4_external
 *    gets the pod's address and port back; anything else is the node's own traffic and passes.
 *  - ICMP "fragmentation needed" to the node address quoting a masqueraded packet goes to the pod,
 *    quote restored, so path MTU discovery works through the masquerade. Other ICMP errors pass.
 *  - Later fragments going out get the node address (their first fragment claimed the port). The
 *    first fragment of a reply records its datagram in cilia_masq_frag_v4, so the later ones (no
 *    ports) get the pod address too; a later fragment that overtakes its first one reaches the node.
 *  - Both directions' tuples are keys of the one LRU map (dir tells them apart), so `bpf nat list`
 *    prints Cilium's OUT/IN pairs and an evicted flow simply gets a new port.
 *  - Every translated packet keeps its entry's seen_ns fresh (at most one write a second) and a TCP
 *    FIN or RST marks the entry closing, so the agent can tell live flows from finished ones.
 *  - Drain (MASQ_F_DRAIN, after a switch to iptables or off): flows already in the NAT map keep
 *    their translation both ways, nothing new gets a port. Netfilter conntrack tracked those flows
 *    untranslated from their first packet (the agent keeps conntrack on under BPF masquerading), so
 *    iptables' MASQUERADE, which decides only on a connection's first packet, never touches them:
 *    one translation per flow at any moment. The agent removes the programs once the flows ended.
 */
#ifndef CILIA_MASQ_MAPS_H
#define CILIA_MASQ_MAPS_H

#include "common.h"

/* Default capacities; the loader may override max_entries before the first pin (`bpf.natMax`). */
#define CILIA_MASQ_NAT_MAX 262144	/* NAT entries: two per masqueraded flow */
#define CILIA_IPMASQ_MAX 16384		/* ip-masq-agent prefixes (Cilium's cilium_ipmasq_v4 size) */
#define CILIA_MASQ_CLUSTER_MAX 16384	/* cluster prefixes: native routing CIDR, nodes, pod CIDRs */
#define CILIA_MASQ_FRAG_MAX 8192	/* reply datagrams in flight as fragments */

/* Hashed port candidates tried for a new flow before it is dropped. */
#define MASQ_PORT_RETRIES 32

/* masq4_tuple.dir: which way the keyed packet travels (Cilium's TUPLE_F_OUT / TUPLE_F_IN). */
#define MASQ_DIR_OUT 0
#define MASQ_DIR_IN 1

/* masq_config.flags */
#define MASQ_F_ENABLED 1	/* translate at all; off: every packet passes untouched */
#define MASQ_F_DRAIN 2		/* with ENABLED: only flows already in the NAT map, no new port */

/* masq4_nat_entry.flags */
#define MASQ_NAT_F_CLOSING 1	/* a TCP FIN or RST of the flow went through this entry */

/* seen_ns is refreshed when it is older than this (ns): one map write a second per flow at most. */
#define MASQ_SEEN_REFRESH_NS 1000000000ULL

/* A flow's tuple as on the wire (ICMP echo: the identifier is sport going out, dport coming back);
 * key of cilia_snat_v4_external. */
struct masq4_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

/* What a keyed packet's source (OUT) or destination (IN) becomes. */
struct masq4_nat_entry {
	__be32 to_addr;
	__be16 to_port;
	__u16 flags;		/* MASQ_NAT_F_* */
	__u64 created_ns;	/* bpf_ktime_get_ns() when the flow got its port */
	__u64 seen_ns;		/* CLOCK_MONOTONIC of the last packet translated (MASQ_SEEN_REFRESH_NS) */
};

/* A fragmented reply datagram (the IPv4 header fields all its fragments share). */
struct masq4_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

/* Key of the LPM tries cilia_ipmasq_v4 and cilia_masq_cluster_v4 (struct bpf_lpm_trie_key shape). */
struct ipmasq4_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Node facts the masquerading programs need; slot 0 of cilia_masq_config, written by the agent. */
struct masq_config {
	__be32 node_addr;	/* the address pods are masqueraded to */
	__be32 pod_net;		/* this node's pod CIDR: only its sources are masqueraded */
	__be32 pod_mask;
	__u32 hash_seed;	/* seeds the port choice, so it is not predictable from outside */
	__u16 port_min;		/* host order: the range NAT ports are taken from */
	__u16 port_max;
	__u32 flags;
};

/* Verdict counters (cilia_masq_counters, per CPU). */
enum masq_counter {
	MASQ_C_SNAT = 0,	/* egress packets translated (new and established flows) */
	MASQ_C_SNAT_NEW,	/* flows that got a port */
	MASQ_C_COLLISION,	/* candidate ports found taken while allocating */
	MASQ_C_NO_PORT,		/* new flows dropped: every candidate taken */
	MASQ_C_EXCLUDED,	/* pod packets to a non-masquerade destination, passed untouched */
	MASQ_C_UNSUPPORTED,	/* pod packets of a protocol not masqueraded, passed untouched */
	MASQ_C_REVNAT,		/* replies translated back */
	MASQ_C_FRAG,		/* later fragments given the node address */
	MASQ_C_REVNAT_ICMP_ERR,	/* ICMP frag-needed about a masqueraded flow, sent back to the pod */
	MASQ_C_REVNAT_FRAG,	/* later fragments of replies given the pod address */
	MASQ_C_DRAIN_PASS,	/* draining: pod packets of flows not in the NAT map, passed untouched */
	MASQ_C_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_MASQ_NAT_MAX);
	__type(key, struct masq4_tuple);
	__type(value, struct masq4_nat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_snat_v4_external SEC(".maps");

/* Reply datagram -> pod address, for its later fragments. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_MASQ_FRAG_MAX);
	__type(key, struct masq4_frag_key);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_masq_frag_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CILIA_IPMASQ_MAX);
	__type(key, struct ipmasq4_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ipmasq_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CILIA_MASQ_CLUSTER_MAX);
	__type(key, struct ipmasq4_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_masq_cluster_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_masq_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MASQ_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_masq_counters SEC(".maps");

#endif /* CILIA_MASQ_MAPS_H */
