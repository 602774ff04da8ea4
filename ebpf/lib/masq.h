/* BPF masquerading (Cilium's `enable-bpf-masquerade`, with ip-masq-agent CIDRs): pod traffic leaving
 * the node towards non-cluster destinations gets the node address, replies get the pod back. Maps and
 * the full story in masq_maps.h. Needs a ctx_*.h included first. */
#ifndef CILIA_MASQ_H
#define CILIA_MASQ_H

#include "masq_maps.h"
#include "parse.h"

#define MASQ_HASH_GOLDEN 0x9e3779b9u

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ICMP_DEST_UNREACH 3
#define ICMP_C_FRAG_NEEDED 4
/* Offset of the echo identifier in the ICMP header. */
#define ICMP_ECHO_ID_OFF 4
#define IPV4_SADDR_OFF 12
#define IPV4_DADDR_OFF 16
#define IPV4_CSUM_OFF 10

/* TCP flags byte bits (pkt4.tcp_flags). */
#define MASQ_TCP_FIN 0x01
#define MASQ_TCP_SYN 0x02
#define MASQ_TCP_RST 0x04
#define MASQ_TCP_ACK 0x10

/* Which address of a packet a rewrite changes. */
#define MASQ_REWRITE_SRC 0
#define MASQ_REWRITE_DST 1

static __always_inline void masq_count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&cilia_masq_counters, &c);

	if (v)
		*v += 1;
}

/* A packet went through `e`: keep it marked alive (seen_ns, at most one write a second) and note
 * a TCP FIN or RST (closing), which a new SYN on the same tuple clears. The agent reads both to
 * tell which flows a draining program still serves. Racing CPUs may both write: same values. */
static __always_inline void masq4_touch(struct masq4_nat_entry *e, const struct pkt4 *p)
{
	__u64 now = bpf_ktime_get_coarse_ns();

	if (p->proto == IPPROTO_TCP) {
		__u8 f = p->tcp_flags;

		if ((f & (MASQ_TCP_FIN | MASQ_TCP_RST)) && !(e->flags & MASQ_NAT_F_CLOSING))
			e->flags |= MASQ_NAT_F_CLOSING;
		else if ((f & (MASQ_TCP_SYN | MASQ_TCP_ACK)) == MASQ_TCP_SYN && (e->flags & MASQ_NAT_F_CLOSING))
			e->flags &= ~MASQ_NAT_F_CLOSING;
	}
	if ((__s64)(now - e->seen_ns) > (__s64)MASQ_SEEN_REFRESH_NS)
		e->seen_ns = now;
}

/* Same mixer and tuple hash as lb.h (and `cilia_datapath::lb::flow_hash`), so the agent and the
 * tests can predict which port a flow gets. Copied, not shared: lb.h belongs to the load balancer. */
static __always_inline __u32 masq_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 masq4_flow_hash(const struct masq4_tuple *t, __u32 seed)
{
	__u32 h = masq_mix32(seed ^ t->saddr);

	h = masq_mix32(h ^ t->daddr);
	h = masq_mix32(h ^ (((__u32)t->sport << 16) | t->dport));
	return masq_mix32(h ^ t->proto);
}

/* Fills the ports of `p` for masquerading: TCP/UDP as parsed; ICMP echo requests (out) and replies
 * (in) carry their identifier as sport / dport. Returns -1 for anything masquerading leaves alone
 * (other ICMP, other protocols). */
static __always_inline int masq4_ports(lb_ctx *ctx, struct pkt4 *p, int dir)
{
	__be16 id;

	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		return 0;
	case IPPROTO_ICMP:
		if (p->icmp_type != (dir == MASQ_DIR_OUT ? ICMP_ECHO_REQUEST : ICMP_ECHO_REPLY))
			return -1;
		if (ctx_load_bytes(ctx, p->l4_off + ICMP_ECHO_ID_OFF, &id, sizeof(id)))
			return -1;
		p->sport = dir == MASQ_DIR_OUT ? id : 0;
		p->dport = dir == MASQ_DIR_OUT ? 0 : id;
		return 0;
	}
	return -1;
}

static __always_inline void masq4_tuple_of(const struct pkt4 *p, __u8 dir, struct masq4_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->saddr = p->saddr;
	t->daddr = p->daddr;
	t->sport = p->sport;
	t->dport = p->dport;
	t->proto = p->proto;
	t->dir = dir;
}

/* Destinations that keep the pod's address: the cluster (native routing CIDR, nodes, their pod CIDRs)
 * and the ip-masq-agent set. */
static __always_inline int masq4_excluded(__be32 daddr)
{
	struct ipmasq4_key k = { .prefixlen = 32, .addr = daddr };

	if (bpf_map_lookup_elem(&cilia_masq_cluster_v4, &k))
		return 1;
	return bpf_map_lookup_elem(&cilia_ipmasq_v4, &k) != 0;
}

/* Rewrites the source (or destination) address and port of `p`, keeping the IPv4 and L4 checksums
 * right: incremental updates, pseudo header included for TCP/UDP, a zero UDP checksum left zero. */
static __always_inline int masq4_rewrite(lb_ctx *ctx, const struct pkt4 *p, int which, __be32 to_addr,
					 __be16 to_port)
{
	__be32 from_addr = which == MASQ_REWRITE_SRC ? p->saddr : p->daddr;
	__be16 from_port = which == MASQ_REWRITE_SRC ? p->sport : p->dport;
	__u32 addr_off = p->l3_off + (which == MASQ_REWRITE_SRC ? IPV4_SADDR_OFF : IPV4_DADDR_OFF);
	__u32 csum_off, port_off, flags;

	if (ctx_store4(ctx, addr_off, to_addr))
		return -1;
	if (ctx_l3_csum_replace(ctx, p->l3_off + IPV4_CSUM_OFF, from_addr, to_addr, 4))
		return -1;
	if (!p->has_l4)
		return 0;
	switch (p->proto) {
	case IPPROTO_TCP:
		csum_off = p->l4_off + TCP_CSUM_OFF;
		port_off = p->l4_off + (which == MASQ_REWRITE_SRC ? 0 : 2);
		flags = 0;
		break;
	case IPPROTO_UDP:
		csum_off = p->l4_off + UDP_CSUM_OFF;
		port_off = p->l4_off + (which == MASQ_REWRITE_SRC ? 0 : 2);
		flags = CTX_CSUM_UDP;
		break;
	case IPPROTO_ICMP:
		/* The ICMP checksum covers no pseudo header: only the identifier changes it. */
		csum_off = p->l4_off + ICMP_CSUM_OFF;
		port_off = p->l4_off + ICMP_ECHO_ID_OFF;
		if (from_port == to_port)
			return 0;
		if (ctx_store2(ctx, port_off, to_port))
			return -1;
		return ctx_l4_csum_replace(ctx, csum_off, from_port, to_port, 2);
	default:
		return 0;
	}
	if (ctx_l4_csum_replace(ctx, csum_off, from_addr, to_addr, flags | CTX_CSUM_PSEUDO | 4))
		return -1;
	if (from_port == to_port)
		return 0;
	if (ctx_store2(ctx, port_off, to_port))
		return -1;
	return ctx_l4_csum_replace(ctx, csum_off, from_port, to_port, flags | 2);
}

/* The reply tuple of the flow `out` masqueraded on `port`. */
static __always_inline void masq4_reverse_of(const struct masq4_tuple *out, __be32 node, __be16 port,
					     struct masq4_tuple *in)
{
	__builtin_memset(in, 0, sizeof(*in));
	in->saddr = out->daddr;
	in->daddr = node;
	in->sport = out->dport;
	in->dport = port;
	in->proto = out->proto;
	in->dir = MASQ_DIR_IN;
}

/* An established flow's reverse entry is still its own. The two entries age independently in the
 * LRU map: a reverse entry evicted is put back (if its port is still free), so replies keep finding
 * the pod; 0 means the port went to another flow and this one needs a new port. */
static __always_inline int masq4_reverse_held(const struct masq_config *cfg, const struct masq4_tuple *out,
					      __be16 port)
{
	struct masq4_nat_entry rev = {};
	struct masq4_nat_entry *r;
	struct masq4_tuple in;

	masq4_reverse_of(out, cfg->node_addr, port, &in);
	r = bpf_map_lookup_elem(&cilia_snat_v4_external, &in);
	if (r)
		return r->to_addr == out->saddr && r->to_port == out->sport;
	rev.to_addr = out->saddr;
	rev.to_port = out->sport;
	rev.created_ns = bpf_ktime_get_ns();
	rev.seen_ns = rev.created_ns;
	return bpf_map_update_elem(&cilia_snat_v4_external, &in, &rev, BPF_NOEXIST) == 0;
}

/* Claims a node port for the flow `out`: the reply's tuple is inserted with BPF_NOEXIST, so of two
 * flows racing for a port exactly one wins and the other tries the next candidate. Candidates are a
 * hash of the flow, so a flow whose forward entry was evicted finds its old port again. */
static __always_inline int masq4_alloc(const struct masq_config *cfg, const struct masq4_tuple *out,
				       __be16 *port)
{
	struct masq4_tuple in;
	struct masq4_nat_entry rev = {}, fwd = {};
	__u32 range, hash;
	__u64 now = bpf_ktime_get_ns();

	if (cfg->port_max < cfg->port_min)
		return -1;
	range = (__u32)cfg->port_max - cfg->port_min + 1;
	hash = masq4_flow_hash(out, cfg->hash_seed);
	masq4_reverse_of(out, cfg->node_addr, 0, &in);
	rev.to_addr = out->saddr;
	rev.to_port = out->sport;
	rev.created_ns = now;
	rev.seen_ns = now;
	for (__u32 i = 0; i < MASQ_PORT_RETRIES; i++) {
		__u16 cand = cfg->port_min + masq_mix32(hash + i * MASQ_HASH_GOLDEN) % range;

		in.dport = bpf_htons(cand);
		if (bpf_map_update_elem(&cilia_snat_v4_external, &in, &rev, BPF_NOEXIST)) {
			struct masq4_nat_entry *held = bpf_map_lookup_elem(&cilia_snat_v4_external, &in);

			/* Our own reverse entry, its forward one evicted: keep the flow's port. */
			if (!held || held->to_addr != out->saddr || held->to_port != out->sport) {
				masq_count(MASQ_C_COLLISION);
				continue;
			}
		}
		fwd.to_addr = cfg->node_addr;
		fwd.to_port = in.dport;
		fwd.created_ns = now;
		fwd.seen_ns = now;
		if (bpf_map_update_elem(&cilia_snat_v4_external, out, &fwd, BPF_ANY)) {
			bpf_map_delete_elem(&cilia_snat_v4_external, &in);
			return -1;
		}
		*port = in.dport;
		masq_count(MASQ_C_SNAT_NEW);
		return 0;
	}
	return -1;
}

/* Node device egress. */
static __always_inline int masq4_egress(lb_ctx *ctx)
{
	__u32 zero = 0;
	struct masq_config *cfg = bpf_map_lookup_elem(&cilia_masq_config, &zero);
	struct masq4_nat_entry *e;
	struct masq4_tuple out;
	struct pkt4 p;
	__be16 port;

	if (!cfg || !(cfg->flags & MASQ_F_ENABLED))
		return CTX_PASS;
	ctx_pull(ctx);
	if (parse_ipv4(ctx, &p) != PARSE_OK)
		return CTX_PASS;
	/* Only this node's pods are masqueraded; the host's own traffic keeps its address. */
	if ((p.saddr & cfg->pod_mask) != cfg->pod_net)
		return CTX_PASS;
	if (masq4_excluded(p.daddr)) {
		masq_count(MASQ_C_EXCLUDED);
		return CTX_PASS;
	}
	if (!p.has_l4) {
		/* A later fragment carries no ports; its first fragment already claimed the flow's port,
		 * so only the address changes (the L4 checksum lives in the first fragment). */
		if (masq4_rewrite(ctx, &p, MASQ_REWRITE_SRC, cfg->node_addr, 0))
			return CTX_DROP;
		masq_count(MASQ_C_FRAG);
		return CTX_PASS;
	}
	if (masq4_ports(ctx, &p, MASQ_DIR_OUT)) {
		masq_count(MASQ_C_UNSUPPORTED);
		return CTX_PASS;
	}
	masq4_tuple_of(&p, MASQ_DIR_OUT, &out);
	e = bpf_map_lookup_elem(&cilia_snat_v4_external, &out);
	if (e && e->to_addr == cfg->node_addr && masq4_reverse_held(cfg, &out, e->to_port)) {
		port = e->to_port;
		masq4_touch(e, &p);
	} else if (cfg->flags & MASQ_F_DRAIN) {
		/* Draining: iptables masquerades new flows before this hook (the source is the node
		 * address by now); what still has the pod's is a flow netfilter decided not to
		 * translate and we do not know: leave it as it is rather than start a flow here. */
		masq_count(MASQ_C_DRAIN_PASS);
		return CTX_PASS;
	} else if (masq4_alloc(cfg, &out, &port)) {
		/* Leaving with the pod address would be unroutable back: drop, as Cilium does. */
		masq_count(MASQ_C_NO_PORT);
		return CTX_DROP;
	}
	if (masq4_rewrite(ctx, &p, MASQ_REWRITE_SRC, cfg->node_addr, port))
		return CTX_DROP;
	masq_count(MASQ_C_SNAT);
	return CTX_PASS;
}

/* ICMP "fragmentation needed" about a masqueraded flow (path MTU discovery): it quotes the packet as
 * it left (node:port -> outside), so it goes back to the pod with the quoted source restored too.
 * Only a quote with a 20-byte inner header is handled; anything else is passed to the node's stack. */
static __always_inline int masq4_icmp_error_ingress(lb_ctx *ctx, const struct pkt4 *p)
{
	struct masq4_nat_entry *e;
	struct masq4_tuple in = {};
	__u32 inner_off = p->l4_off + sizeof(struct icmp4hdr);
	__u32 icmp_csum_off = p->l4_off + ICMP_CSUM_OFF;
	struct iphdr inner;
	__be16 ports[2];
	__u8 code;

	if (ctx_load_bytes(ctx, p->l4_off + 1, &code, 1) || code != ICMP_C_FRAG_NEEDED)
		return CTX_PASS;
	if (ctx_load_bytes(ctx, inner_off, &inner, sizeof(inner)) ||
	    ctx_load_bytes(ctx, inner_off + sizeof(inner), ports, sizeof(ports)))
		return CTX_PASS;
	if (inner.ihl != 5 || inner.saddr != p->daddr ||
	    (inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP))
		return CTX_PASS;
	/* The reply direction of the quoted packet is the key its flow's reverse entry has. */
	in.saddr = inner.daddr;
	in.daddr = inner.saddr;
	in.sport = ports[1];
	in.dport = ports[0];
	in.proto = inner.protocol;
	in.dir = MASQ_DIR_IN;
	e = bpf_map_lookup_elem(&cilia_snat_v4_external, &in);
	if (!e)
		return CTX_PASS;
	__be32 to_addr = e->to_addr;
	__be16 to_port = e->to_port;
	__u16 old_inner_csum = inner.check;
	__u16 new_inner_csum = csum_replace4(old_inner_csum, inner.saddr, to_addr);

	/* Outer destination: the IPv4 checksum only (ICMP has no pseudo header). */
	if (ctx_store4(ctx, p->l3_off + IPV4_DADDR_OFF, to_addr) ||
	    ctx_l3_csum_replace(ctx, p->l3_off + IPV4_CSUM_OFF, p->daddr, to_addr, 4))
		return CTX_DROP;
	/* Quoted source address, its header checksum and source port; the ICMP checksum covers all. */
	if (ctx_store4(ctx, inner_off + IPV4_SADDR_OFF, to_addr) ||
	    ctx_l4_csum_replace(ctx, icmp_csum_off, inner.saddr, to_addr, 4) ||
	    ctx_store2(ctx, inner_off + IPV4_CSUM_OFF, new_inner_csum) ||
	    ctx_l4_csum_replace(ctx, icmp_csum_off, old_inner_csum, new_inner_csum, 2) ||
	    ctx_store2(ctx, inner_off + sizeof(inner), to_port) ||
	    ctx_l4_csum_replace(ctx, icmp_csum_off, ports[0], to_port, 2))
		return CTX_DROP;
	masq_count(MASQ_C_REVNAT_ICMP_ERR);
	return CTX_PASS;
}

static __always_inline void masq4_frag_key_of(const struct pkt4 *p, struct masq4_frag_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->id = p->id;
	k->proto = p->proto;
}

/* The first fragment of a reply: its later fragments (same datagram) go to the same pod. */
static __always_inline void masq4_frag_record(const struct pkt4 *p, __be32 pod)
{
	struct masq4_frag_key k;

	masq4_frag_key_of(p, &k);
	bpf_map_update_elem(&cilia_masq_frag_v4, &k, &pod, BPF_ANY);
}

/* A later fragment of a reply: only the address changes (the L4 checksum, in the first fragment,
 * was updated for the whole datagram). Unknown datagrams are the node's own. */
static __always_inline int masq4_frag_ingress(lb_ctx *ctx, const struct pkt4 *p)
{
	struct masq4_frag_key k;
	__be32 *pod;

	masq4_frag_key_of(p, &k);
	pod = bpf_map_lookup_elem(&cilia_masq_frag_v4, &k);
	if (!pod)
		return CTX_PASS;
	if (masq4_rewrite(ctx, p, MASQ_REWRITE_DST, *pod, 0))
		return CTX_DROP;
	masq_count(MASQ_C_REVNAT_FRAG);
	return CTX_PASS;
}

/* Node device ingress: replies of masqueraded flows go back to their pod. */
static __always_inline int masq4_ingress(lb_ctx *ctx)
{
	__u32 zero = 0;
	struct masq_config *cfg = bpf_map_lookup_elem(&cilia_masq_config, &zero);
	struct masq4_nat_entry *e;
	struct masq4_tuple in;
	struct pkt4 p;

	if (!cfg || !(cfg->flags & MASQ_F_ENABLED))
		return CTX_PASS;
	ctx_pull(ctx);
	if (parse_ipv4(ctx, &p) != PARSE_OK)
		return CTX_PASS;
	if (p.daddr != cfg->node_addr)
		return CTX_PASS;
	if (!p.has_l4)
		return masq4_frag_ingress(ctx, &p);
	if (p.proto == IPPROTO_ICMP && p.icmp_type == ICMP_DEST_UNREACH)
		return masq4_icmp_error_ingress(ctx, &p);
	if (masq4_ports(ctx, &p, MASQ_DIR_IN))
		return CTX_PASS;
	masq4_tuple_of(&p, MASQ_DIR_IN, &in);
	e = bpf_map_lookup_elem(&cilia_snat_v4_external, &in);
	/* No entry: the node's own traffic. */
	if (!e)
		return CTX_PASS;
	masq4_touch(e, &p);
	if (p.frag == PKT_FRAG_FIRST)
		masq4_frag_record(&p, e->to_addr);
	if (masq4_rewrite(ctx, &p, MASQ_REWRITE_DST, e->to_addr, e->to_port))
		return CTX_DROP;
	masq_count(MASQ_C_REVNAT);
	return CTX_PASS;
}

#endif /* CILIA_MASQ_H */
