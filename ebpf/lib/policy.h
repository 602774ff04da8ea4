/* Network policy enforcement: map layouts and the verdict logic shared by the pod-side and
 * host-side programs. Mirrored by `cilia_datapath::policy` (checked at build time).
 *
 * A verdict costs a fixed number of map lookups whatever the number of rules: the peer's identity
 * (a hash of exact addresses, then an LPM trie of the wider prefixes), the connection in conntrack
 * (replies of allowed connections pass), then the endpoint's policy for (endpoint, direction,
 * identity, protocol, port) - a hash of exact ports first, then an LPM trie of port prefixes and
 * protocol-wide entries - with the peer's identity, then with the wildcard identity 0. Hashes keep
 * the common case flat as rules grow; the tries only hold ranges and CIDRs. The compiler
 * (`cilia_model::policy`) has already folded deny-over-allow precedence and the wildcard rules
 * into what each key holds, so the most specific match is the answer. */
#ifndef CILIA_POLICY_H
#define CILIA_POLICY_H

#include "common.h"
#include <linux/in.h>
#include <linux/ip.h>

#define CILIA_IPCACHE_MAX 65536
#define CILIA_POLICY_MAX 262144
#define CILIA_POLICY_EP_MAX 65536
#define CILIA_POLICY_CT_MAX 262144
#define CILIA_POLICY_EVENTS_BYTES (1 << 20)

/* Direction, seen from the endpoint. */
#define POLICY_DIR_INGRESS 0 /* towards the endpoint */
#define POLICY_DIR_EGRESS 1  /* from the endpoint */

/* Identity 0 in a policy key: any peer. */
#define POLICY_ID_ANY 0
/* The peer of an address the ipcache does not know: outside the cluster. */
#define POLICY_ID_WORLD 2

/* Verdicts stored in policy entries and reported in events. */
#define POLICY_ALLOW 1
#define POLICY_DENY 2
/* Event-only verdicts. */
#define POLICY_VERDICT_DROP_DEFAULT 3 /* no rule allowed it (default deny) */
#define POLICY_VERDICT_AUDIT 4         /* would have been dropped; audit mode let it through */

/* Bits of the prefix a key has before the port (endpoint, direction, identity, protocol). */
#define POLICY_KEY_FIXED_BITS (32 + 8 + 32 + 8)

/* ipcache key (LPM): an IPv4 prefix. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

/* ipcache value: the security identity of the addresses under the prefix. */
struct ipcache_value {
	__u32 identity;
};

/* What a policy entry is keyed by: the exact-port hash uses it as is. */
struct policy_key_data {
	__u32 ep_id;    /* the endpoint: its host-side interface index (node device for host policy) */
	__u8 dir;       /* POLICY_DIR_* */
	__u32 identity; /* peer identity, POLICY_ID_ANY for any */
	__u8 proto;     /* IPPROTO_*, 0 for any protocol (then the LPM prefix stops before it) */
	__u16 dport;    /* network order */
} __attribute__((packed));

/* Policy LPM key: the prefix covers ep_id, dir, identity, proto, then the top bits of dport. */
struct policy_key {
	__u32 prefixlen;
	struct policy_key_data d;
};

/* Policy value: the verdict and which rule decided it (index into the agent's rule names). */
struct policy_value {
	__u32 rule;
	__u8 verdict; /* POLICY_ALLOW or POLICY_DENY */
	__u8 pad[3];
};

/* Per endpoint: which directions are enforced, and audit mode. */
struct policy_ep_config {
	__u8 ingress_enforced;
	__u8 egress_enforced;
	__u8 audit;
	__u8 pad;
};

/* Conntrack key: the connection as its first packet went (either direction). */
struct policy_ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 ep_id;
	__u8 proto;
	__u8 pad[3];
};

struct policy_ct_value {
	__u64 last_seen_ns;
};

/* A drop or audit event for `cilia-dbg monitor`. */
struct policy_event {
	__u64 ts_ns;
	__u32 ep_id;
	__u32 saddr;
	__u32 daddr;
	__u32 identity; /* the peer's */
	__u32 rule;     /* deciding rule, or ~0 for default deny */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u8 verdict; /* POLICY_DENY, POLICY_VERDICT_DROP_DEFAULT, POLICY_VERDICT_AUDIT */
	__u8 pad;
};

/* Exact addresses (pods, nodes, the API server): address (network order) -> identity. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_IPCACHE_MAX);
	__type(key, __u32);
	__type(value, struct ipcache_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ipcache4_exact SEC(".maps");

/* Wider prefixes (CIDR rules and their excepts). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CILIA_IPCACHE_MAX);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ipcache_v4 SEC(".maps");

/* Entries for one exact port of one protocol. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_POLICY_MAX);
	__type(key, struct policy_key_data);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy4_exact SEC(".maps");

/* Port ranges (as prefixes) and protocol-wide entries. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CILIA_POLICY_MAX);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CILIA_POLICY_EP_MAX);
	__type(key, __u32);
	__type(value, struct policy_ep_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CILIA_POLICY_CT_MAX);
	__type(key, struct policy_ct_key);
	__type(value, struct policy_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CILIA_POLICY_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_policy_events SEC(".maps");

/* The fields a verdict depends on. */
struct policy_pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* ICMP echo: the identifier (in both, so a reply's reverse is its request) */
	__u16 dport;
	__u8 proto;
};

/* Reads the flow fields of an IPv4 frame. Returns 0, or -1 when it is not IPv4 (not ours). A
 * later fragment has no ports: it is judged on its addresses (ports 0). */
static __always_inline int policy_parse(struct __sk_buff *skb, struct policy_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->sport = 0;
	p->dport = 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	__u32 l4 = ETH_HLEN + ((__u32)ip->ihl & 0xf) * 4;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP) {
		__u16 *ports = data + l4;
		if ((void *)(ports + 2) > end)
			return 0;
		p->sport = ports[0];
		p->dport = ports[1];
	} else if (p->proto == IPPROTO_ICMP) {
		__u8 *icmp = data + l4;
		if ((void *)(icmp + 8) > end)
			return 0;
		/* Echo request/reply: the identifier ties a reply to its request. */
		if (icmp[0] == 8 || icmp[0] == 0) {
			p->sport = *(__u16 *)(icmp + 4);
			p->dport = p->sport;
		}
	}
	return 0;
}

static __always_inline __u32 policy_identity_of(__u32 addr)
{
	struct ipcache_value *v = bpf_map_lookup_elem(&cilia_ipcache4_exact, &addr);

	if (v)
		return v->identity;
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	v = bpf_map_lookup_elem(&cilia_ipcache_v4, &k);
	return v ? v->identity : POLICY_ID_WORLD;
}

/* The most specific entry for one identity: an exact port beats every prefix (a deny covering it
 * has already been folded into it by the compiler). */
static __always_inline struct policy_value *policy_lookup_id(struct policy_key *k)
{
	struct policy_value *v = bpf_map_lookup_elem(&cilia_policy4_exact, &k->d);

	if (v)
		return v;
	return bpf_map_lookup_elem(&cilia_policy_v4, k);
}

static __always_inline struct policy_value *policy_lookup(__u32 ep_id, __u8 dir, __u32 identity,
							   __u8 proto, __u16 dport)
{
	struct policy_key k = {
		.prefixlen = POLICY_KEY_FIXED_BITS + 16,
		.d = {
			.ep_id = ep_id,
			.dir = dir,
			.identity = identity,
			.proto = proto,
			.dport = dport,
		},
	};
	struct policy_value *v = policy_lookup_id(&k);

	if (v || identity == POLICY_ID_ANY)
		return v;
	k.d.identity = POLICY_ID_ANY;
	return policy_lookup_id(&k);
}

static __always_inline void policy_report(const struct policy_pkt *p, __u32 ep_id, __u8 dir,
					  __u32 identity, __u32 rule, __u8 verdict)
{
	struct policy_event *e = bpf_ringbuf_reserve(&cilia_policy_events, sizeof(*e), 0);

	if (!e)
		return; /* the monitor is behind: losing an event must not change the verdict */
	e->ts_ns = bpf_ktime_get_ns();
	e->ep_id = ep_id;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->identity = identity;
	e->rule = rule;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->verdict = verdict;
	e->pad = 0;
	bpf_ringbuf_submit(e, 0);
}

/* Pod identities are cluster-wide, in [POLICY_ID_POD_MIN, POLICY_ID_LOCAL_MIN) (the compiler's). */
#define POLICY_ID_POD_MIN 256
#define POLICY_ID_LOCAL_MIN (1 << 24)

/* Whether a packet on a node device belongs to a pod rather than the host: its destination
 * (`src_side` 0, ingress) or source (`src_side` 1, egress) is a pod. Not IPv4: not a pod's. */
static __always_inline int policy_pod_side(struct __sk_buff *skb, int src_side)
{
	struct policy_pkt p;

	if (policy_parse(skb, &p) < 0)
		return 0;
	__u32 id = policy_identity_of(src_side ? p.saddr : p.daddr);
	return id >= POLICY_ID_POD_MIN && id < POLICY_ID_LOCAL_MIN;
}

/* The verdict for a packet of endpoint `ep_id` going in `dir`: 1 to let it through, 0 to drop.
 * The peer is the source for ingress and the destination for egress. */
static __always_inline int policy_verdict(struct __sk_buff *skb, __u32 ep_id, __u8 dir)
{
	struct policy_pkt p;

	if (policy_parse(skb, &p) < 0)
		return 1; /* not IPv4: ARP and friends are not subject to L3/L4 policy */
	struct policy_ep_config *cfg = bpf_map_lookup_elem(&cilia_policy_ep, &ep_id);
	if (!cfg)
		return 1; /* no policy selects this endpoint */
	__u8 enforced = dir == POLICY_DIR_INGRESS ? cfg->ingress_enforced : cfg->egress_enforced;

	/* A reply of a connection the other direction let through passes. */
	struct policy_ct_key rev = {
		.saddr = p.daddr,
		.daddr = p.saddr,
		.sport = p.dport,
		.dport = p.sport,
		.ep_id = ep_id,
		.proto = p.proto,
	};
	struct policy_ct_value *ct = bpf_map_lookup_elem(&cilia_policy_ct, &rev);
	if (ct) {
		ct->last_seen_ns = bpf_ktime_get_ns();
		return 1;
	}

	__u32 peer = dir == POLICY_DIR_INGRESS ? p.saddr : p.daddr;
	__u32 identity = policy_identity_of(peer);
	/* Ports select TCP/UDP/SCTP only; an ICMP packet matches protocol-wide rules. */
	__u16 dport = p.proto == IPPROTO_ICMP ? 0 : p.dport;
	struct policy_value *v = policy_lookup(ep_id, dir, identity, p.proto, dport);
	__u8 verdict;
	__u32 rule = ~0U;

	if (v) {
		verdict = v->verdict;
		rule = v->rule;
	} else {
		verdict = enforced ? POLICY_VERDICT_DROP_DEFAULT : POLICY_ALLOW;
	}
	if (verdict != POLICY_ALLOW) {
		if (!cfg->audit) {
			policy_report(&p, ep_id, dir, identity, rule, verdict);
			return 0;
		}
		policy_report(&p, ep_id, dir, identity, rule, POLICY_VERDICT_AUDIT);
	}
	/* Remember the connection so its replies pass the other direction. */
	struct policy_ct_key fwd = {
		.saddr = p.saddr,
		.daddr = p.daddr,
		.sport = p.sport,
		.dport = p.dport,
		.ep_id = ep_id,
		.proto = p.proto,
	};
	__u64 now = bpf_ktime_get_ns();
	struct policy_ct_value *seen = bpf_map_lookup_elem(&cilia_policy_ct, &fwd);
	if (seen) {
		seen->last_seen_ns = now;
	} else {
		struct policy_ct_value nv = { .last_seen_ns = now };
		bpf_map_update_elem(&cilia_policy_ct, &fwd, &nv, BPF_ANY);
	}
	return 1;
}

#endif /* CILIA_POLICY_H */
