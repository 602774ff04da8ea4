/* Service load-balancing maps: the one declaration of every layout the XDP and TC load balancers share.
 * Mirrored by `cilia_datapath::lb_maps` (sizes and offsets checked at build time through layout_probe.c).
 * Both objects pin every map by name in the node's bpffs directory, so XDP and TC see the same state.
 *
 * How a packet is handled (lib/lb.h):
 *  - cilia_lb4_services {VIP, port, proto, scope, slot}: slot 0 says how many backend slots follow and
 *    how to forward (mode, algorithm, flags); slot n names a backend id in cilia_lb4_backends. This is
 *    Cilium's shape, so `bpf lb list` prints the same rows.
 *  - New flows pick a backend by a hash of the 5-tuple: over the slots (random), or through the
 *    service's maglev table (cilia_lb4_maglev: hash-of-maps keyed by rev_nat_index, each inner array
 *    maglev.tableSize long, created by the agent at the configured size; memory grows with the maglev
 *    services that exist). cilia_lb4_ct then keeps the flow on that backend for its life, also after
 *    the backend left the service: the agent keeps a removed backend's entry (LB_BE_F_DRAINING)
 *    until no live conntrack entry names it.
 *  - SNAT: source becomes the node address and a port claimed by a BPF_NOEXIST insert into
 *    cilia_lb4_nat (keyed by the reply's tuple), up to LB_SNAT_PORT_RETRIES hashed candidates.
 *    Replies (backend -> node:port) are restored to VIP:port -> client from it and cilia_lb4_reverse_nat.
 *  - DSR: the client stays the source; the option below carries VIP:port to the backend's node, whose
 *    TC ingress records the reply translation in cilia_lb4_dsr and whose TC egress applies it.
 *  - Fragments: the first one is translated by its ports, which cilia_lb4_frag remembers for the later
 *    ones (same datagram id); a later fragment of an unknown datagram is passed to the stack.
 *  - Conntrack entries carry an expiry (Cilium's timeouts: TCP SYN 60s, established 6h, closing
 *    10s, UDP 60s), refreshed by the client's packets; an expired entry is replaced (and its SNAT
 *    port released) by the next packet of the tuple.
 *  - ICMP errors about SNATed flows (to node:port, quoting node:port -> backend) are translated
 *    back: outer destination the client, outer source the VIP when the backend sent it, the quoted
 *    header client:port -> VIP:port, with the quoted IPv4 (and UDP) and the ICMP checksums.
 *  - A service without backends drops, or with LB_SVC_F_REJECT answers ICMP port unreachable from
 *    the frontend (packets with IPv4 options are dropped instead, both counted as reject).
 *  - After a rewrite the next hop comes from bpf_fib_lookup (memoised per CPU, cilia_lb_fib_memo):
 *    out of the ingress device with the neighbour's MAC (XDP_TX / TC redirect), else to the stack.
 */
#ifndef CILIA_LB_MAPS_H
#define CILIA_LB_MAPS_H

#include "common.h"

/* Default capacities; the loader may override max_entries before the first pin (`bpf.lbMapMax`). */
#define CILIA_LB_SERVICES_MAX 65536	/* frontend entries: one master (slot 0) + one per backend slot */
#define CILIA_LB_BACKENDS_MAX 65536
#define CILIA_LB_REVNAT_MAX 65536
#define CILIA_LB_MAGLEV_MAX 65536	/* maglev services (outer entries, one inner table each) */
#define CILIA_LB_MAGLEV_TABLE_DEFAULT 16381 /* maglev.tableSize default (prime) */
#define CILIA_LB_CT_MAX 262144
#define CILIA_LB_NAT_MAX 262144
#define CILIA_LB_DSR_MAX 262144
#define CILIA_LB_FRAG_MAX 8192
#define CILIA_LB_AFFINITY_MAX 65536
#define CILIA_LB_COUNTERS_MAX 32
#define CILIA_LB_FIB_MEMO_SLOTS 256	/* per CPU; a power of two */
#define CILIA_LB_DEV_SLOTS 4096	/* cilia_lb_dev: ifindexes below this are checked */
#define CILIA_LB_STANDBY_MAX 16384	/* cilia_lb_standby: VIPs this node stands by for */

/* Lookup scope of a frontend: external traffic (node devices) or in-cluster traffic. */
#define LB_SCOPE_EXT 0
#define LB_SCOPE_INT 1

/* lb4_service.mode: how a service's traffic reaches a remote backend. */
#define LB_MODE_SNAT 0
#define LB_MODE_DSR 1
#define LB_MODE_HYBRID 2	/* DSR for TCP, SNAT for everything else */

/* lb4_service.algorithm: how a new flow picks its backend. */
#define LB_ALG_RANDOM 0		/* per-flow hash over the slots */
#define LB_ALG_MAGLEV 1		/* per-flow hash into the service's consistent-hashing table */

/* lb4_service.flags */
#define LB_SVC_F_ETP_LOCAL (1 << 0)	/* externalTrafficPolicy: Local (slots hold only local backends) */
#define LB_SVC_F_AFFINITY (1 << 1)	/* sessionAffinity: ClientIP, timeout in affinity_timeout */
#define LB_SVC_F_REJECT (1 << 2)	/* no backend: reject (counted) instead of a silent drop */

/* lb4_backend.flags */
#define LB_BE_F_LOCAL (1 << 0)		/* the backend runs on this node: plain DNAT, reply rewritten on egress */
#define LB_BE_F_HOST_NETWORK (1 << 1)	/* a hostNetwork pod: cannot take a DSR option, falls back to SNAT */
/* No service gives the backend new flows any more (it left every service's selection, or only
 * terminating endpoints name it while active ones are left): the agent keeps its entry so that
 * established flows (a conntrack hit) finish on it, and removes it once no live conntrack entry
 * names it. New flows never pick it: it has no slot, and session affinity ignores it. */
#define LB_BE_F_DRAINING (1 << 2)

/* lb4_ct_entry.fwd: the translation a flow actually got. */
#define LB_FWD_SNAT 0
#define LB_FWD_DSR 1
#define LB_FWD_LOCAL 2

/* The DSR IPv4 option (Cilium's `opt` dispatch): type = copied flag | class 0 | number 26, so routers
 * and fragmentation keep it; 8 bytes: type, length, VIP port (network order), VIP address. */
#define LB_DSR_OPT_TYPE 0x9a
#define LB_DSR_OPT_LEN 8

/* A frontend slot: VIP:port/proto in a scope. Slot 0 is the service, slots 1..count its backends. */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

/* Value of a frontend slot: on slot 0 the service (count, mode, algorithm, flags), on slot n the backend id. */
struct lb4_service {
	__u32 backend_id;
	__u32 rev_nat_index;	/* 32 bits: a node may carry more than 65535 frontends */
	__u16 count;
	__u8 mode;
	__u8 algorithm;
	__u16 flags;
	__u16 pad;
	__u32 affinity_timeout;	/* seconds, with LB_SVC_F_AFFINITY */
};

/* A backend, by id: where a slot's traffic is sent. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

/* The frontend a service's replies must appear to come from, by rev_nat_index. */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* A flow's 5-tuple as it appears on the wire; key of the conntrack, SNAT and DSR maps. */
struct lb4_tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Conntrack of a client flow towards a frontend: the backend (and SNAT port) it keeps for its life. */
struct lb4_ct_entry {
	__u32 backend_id;
	__u32 rev_nat_index;
	__u8 fwd;
	__u8 closing;		/* TCP: a FIN or RST was seen, the close timeout applies from now on */
	__u8 seen_ack;		/* TCP: past the handshake (a packet with ACK was seen) */
	__u8 pad;
	__be32 nat_addr;
	__be16 nat_port;
	__u16 pad2;
	__u32 expires;		/* in conntrack ticks (lb_config.ct_tick_shift): past it the entry is dead */
};

/* Conntrack lifetimes, index of lb_config.ct_timeout: a flow is forgotten after this long without a
 * packet from its client. */
enum lb_ct_timeout {
	LB_CT_TCP_SYN = 0,	/* handshake not complete */
	LB_CT_TCP,		/* established */
	LB_CT_TCP_CLOSE,	/* after FIN or RST */
	LB_CT_NONTCP,		/* UDP */
	LB_CT_TIMEOUTS,
};

/* SNAT state keyed by the reply tuple (backend -> node:port): the client the reply belongs to. */
struct lb4_nat_entry {
	__be32 client_addr;
	__be16 client_port;
	__u16 pad;
	__u32 rev_nat_index;
};

/* Reverse translation on a backend's node (DSR and node-local backends), keyed by the reply tuple
 * as the backend sends it: the frontend the reply must leave with as source. */
struct lb4_dsr_entry {
	__be32 vip;
	__be16 vport;
	__u16 pad;
};

/* Key of a fragmented datagram: what non-first fragments share with the first. */
struct lb4_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

/* The ports of a fragmented datagram, learnt from its first fragment. */
struct lb4_frag_ports {
	__be16 sport;
	__be16 dport;
};

/* Session affinity key: one client address towards one service. */
struct lb4_affinity_key {
	__be32 client_addr;
	__u32 rev_nat_index;
};

/* Session affinity value: the client's backend and when it was last used (ns, monotonic). */
struct lb4_affinity_entry {
	__u32 backend_id;
	__u32 pad;
	__u64 last_used_ns;
};

/* Node facts the load balancer needs; slot 0 of cilia_lb_config, written by the agent. */
struct lb_config {
	__be32 node_addr;	/* SNAT source, and the address NodePort replies come back to */
	__u8 node_mac[6];
	__u16 snat_port_min;	/* host order, inclusive */
	__u16 snat_port_max;	/* host order, inclusive */
	__u16 pad;
	__u32 maglev_table_size;	/* entries per inner maglev table (maglev.tableSize) */
	__u32 hash_seed;
	/* The clock is bpf_jiffies64(), which the verifier inlines (a ktime helper is a call: ~30 ns
	 * on the hit path on machines with return-thunk mitigations). Jiffies tick at the kernel's HZ,
	 * which only the agent can find out, so it writes what depends on it: */
	__u32 fib_memo_jiffies;	/* how long a memoised FIB answer is used (~100 ms) */
	__u8 ct_tick_shift;	/* conntrack tick = jiffies >> this (0.5-1 s at any HZ) */
	__u8 pad2[3];
	__u32 ct_timeout[LB_CT_TIMEOUTS];	/* lifetimes in ticks, rounded up (Cilium's defaults) */
	__u32 node_ifindex;	/* the device node_mac belongs to (XDP's destination MAC check reads the
				 * config it holds anyway there, cilia_lb_dev elsewhere); 0: none */
};

/* A per-CPU memo of one FIB answer (bpf_fib_lookup costs ~250 ns here, more than the rest of the
 * fast path): where packets to `daddr` arriving on `ifindex` go, valid until `expires`. */
struct lb_fib_memo {
	__be32 daddr;
	__u32 ifindex;
	__u64 expires;		/* jiffies */
	__u16 ok_len;		/* largest L3 length the FIB's MTU check passed */
	__u8 tx;		/* 1: out of the ingress device with these MACs; 0: another device (TC looks up again) */
	__u8 pad;
	__u8 dmac[6];
	__u8 smac[6];
};

/* Verdict and event counters (per CPU), index of cilia_lb_counters. */
enum lb_counter {
	LB_C_MISS = 0,		/* not a frontend: passed untouched */
	LB_C_FWD_SNAT,		/* sent to a backend with the node address as source */
	LB_C_FWD_DSR,		/* sent to a backend with the client as source and the VIP in an option */
	LB_C_FWD_LOCAL,		/* sent to a backend on this node (DNAT only) */
	LB_C_REV_SNAT,		/* reply of an SNATed flow restored to VIP -> client */
	LB_C_CT_HIT,		/* established flow kept its backend */
	LB_C_CT_STALE,		/* established flow's backend is gone (no live flow was known to use it
				 * when the agent removed it): chose again */
	LB_C_NO_BACKEND_DROP,
	LB_C_NO_BACKEND_REJECT,	/* answered with ICMP port unreachable (or dropped when it has options) */
	LB_C_SNAT_PORT_RETRY,	/* a candidate SNAT port was taken: tried the next */
	LB_C_SNAT_PORT_EXHAUSTED, /* every candidate taken: dropped */
	LB_C_DSR_NO_ROOM,	/* IPv4 options full: the flow fell back to SNAT */
	LB_C_FRAG_FIRST,	/* first fragment translated, its ports remembered */
	LB_C_FRAG_LATER_FWD,	/* non-first fragment translated with the remembered ports */
	LB_C_FRAG_LATER_UNKNOWN, /* non-first fragment of an unknown datagram: passed */
	LB_C_ICMP_ERR_FLOW,	/* ICMP error about an SNATed flow: translated back to its client */
	LB_C_MALFORMED,		/* truncated or bogus header: passed for the stack to judge */
	LB_C_XMIT_TX,		/* sent back out of the device it came in on, after a FIB lookup */
	LB_C_XMIT_STACK,	/* other device, no neighbour or no route: the stack forwards it */
	LB_C_DSR_RECORDED,	/* backend side: DSR option read, reply translation recorded */
	LB_C_DSR_REVERSED,	/* backend side: reply source rewritten to the frontend */
	LB_C_AFFINITY_HIT,	/* new flow followed its client's affinity */
	LB_C_STALE_SLOT,	/* a slot names a backend that is not in the backends map: dropped */
	LB_C_FIB_MEMO_HIT,	/* sent back out with the next hop of the per-CPU FIB memo (not
				 * counted as xmit_tx too: one count per packet on the hit path) */
	LB_C_CT_EXPIRED,	/* a conntrack entry past its lifetime: the flow starts over */
	LB_C_XMIT_REDIRECT,	/* TC: next hop on another device (a pod's veth, another uplink): redirected */
	LB_C_XDP_TO_TC,		/* XDP: next hop on another device: passed untranslated, TC translates it */
	LB_C_OTHER_HOST,	/* unicast frame for another host's MAC (flooded by a switch): passed */
	LB_C_OTHER_HOST_SERVED,	/* the same, to a VIP this node announces or stands by for: served */
	LB_C_MAX
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_LB_SERVICES_MAX);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_LB_BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_backends SEC(".maps");

/* The same backends as an array indexed by id: what the datapath reads, since the verifier inlines
 * an array lookup (a few instructions) where a hash lookup is a call that hashes the key. The hash
 * above is the agent's view (read back and diffed, cheap to list); the agent writes both, zeroing
 * a slot when its backend goes. A slot with address 0 is no backend. One more entry than backends:
 * ids start at 1. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CILIA_LB_BACKENDS_MAX + 1);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_backend_ids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_LB_REVNAT_MAX);
	__type(key, __u32);
	__type(value, struct lb4_reverse_nat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_reverse_nat SEC(".maps");

/* Maglev tables: rev_nat_index -> an inner array of maglev_table_size backend ids. Hash-of-maps so
 * memory grows with the maglev services that exist, not with a worst case; BPF_F_INNER_MAP lets the
 * agent create inner tables of the configured size (the template's size is only the default). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, CILIA_LB_MAGLEV_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, CILIA_LB_MAGLEV_TABLE_DEFAULT);
		__uint(map_flags, BPF_F_INNER_MAP);
		__type(key, __u32);
		__type(value, __u32);
	});
} cilia_lb4_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_LB_CT_MAX);
	__type(key, struct lb4_tuple);
	__type(value, struct lb4_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_LB_NAT_MAX);
	__type(key, struct lb4_tuple);
	__type(value, struct lb4_nat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_LB_DSR_MAX);
	__type(key, struct lb4_tuple);
	__type(value, struct lb4_dsr_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_dsr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_LB_FRAG_MAX);
	__type(key, struct lb4_frag_key);
	__type(value, struct lb4_frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_frag SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_LB_AFFINITY_MAX);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CILIA_LB_FIB_MEMO_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_fib_memo);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_fib_memo SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_config SEC(".maps");

/* The MAC of each node device XDP runs on, by ifindex (TC reads skb->pkt_type instead). A switch
 * floods a unicast frame whose destination it has not learnt (a client still using a failed
 * announcer's MAC) to every node: only the node owning the MAC, or the one serving flooded frames
 * for the VIP (lb_serves_flooded), may translate it, or every node on the segment sends its own copy
 * to a backend. An all-zero slot, or an ifindex past the array, checks nothing. */
struct lb_dev {
	__u8 mac[6];
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CILIA_LB_DEV_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_dev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_dev SEC(".maps");

/* The VIPs this node is the L2 standby of (the operator's runner-up for the Service, or the
 * would-be announcer while the old one's lease runs out): value 1. See lb_serves_flooded. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_LB_STANDBY_MAX);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_standby SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CILIA_LB_COUNTERS_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_lb_counters SEC(".maps");

static __always_inline void lb_count(enum lb_counter c)
{
	__u32 key = c;
	__u64 *v = bpf_map_lookup_elem(&cilia_lb_counters, &key);

	if (v)
		*v += 1;
}

static __always_inline const struct lb_config *lb_config_get(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&cilia_lb_config, &key);
}

#endif /* CILIA_LB_MAPS_H */
