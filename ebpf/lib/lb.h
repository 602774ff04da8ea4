/* Service load balancing for IPv4 on node devices: frontend lookup, backend choice (random or maglev,
 * kept by conntrack), SNAT / DSR / node-local translation, replies of SNATed flows, fragments and ICMP
 * errors. Shared by xdp_lb.c and tc_lb.c through the ctx_*.h operations, so both programs take the same
 * decision and make the same rewrite for the same packet. Include a ctx_*.h first. */
#ifndef CILIA_LB_H
#define CILIA_LB_H

#include "lb_maps.h"
#include "l2.h"
#include "parse.h"

/* Candidate SNAT ports tried for a new flow before it is dropped as "no port". */
#define LB_SNAT_PORT_RETRIES 16
/* Odd constant spreading the hash of successive SNAT port candidates. */
#define LB_HASH_GOLDEN 0x9e3779b9u
#define LB_NSEC_PER_SEC 1000000000ull
/* IPv4 header length limit, in 4-byte words. */
#define IPV4_IHL_MAX 15

#define LB_SRC 1
#define LB_DST 0

/* ICMP error types whose payload quotes the packet that caused them. */
#define ICMP_T_DEST_UNREACH 3
#define ICMP_C_PORT_UNREACH 3
/* What an ICMP error quotes of the offending packet here: its 20-byte header and 8 bytes after. */
#define LB_REJECT_QUOTE 28
#define LB_REJECT_TTL 64
#define ICMP_T_TIME_EXCEEDED 11
#define ICMP_T_PARAMETERPROB 12

/* The backend with this id, or NULL (an array slot: inlined lookup; address 0 is an empty slot). */
static __always_inline struct lb4_backend *lb4_backend_get(__u32 id)
{
	struct lb4_backend *b = bpf_map_lookup_elem(&cilia_lb4_backend_ids, &id);

	return b && b->address ? b : NULL;
}

/* murmur3's finaliser: every input bit flips about half the output bits. */
static __always_inline __u32 lb_mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* Per-flow hash over the 5-tuple (fields as loaded, network order). Mirrored by
 * `cilia_datapath::lb::flow_hash` so tests and the agent can predict the datapath's choices. */
static __always_inline __u32 lb4_flow_hash(const struct pkt4 *p, __u32 seed)
{
	__u32 h = lb_mix32(seed ^ p->saddr);

	h = lb_mix32(h ^ p->daddr);
	h = lb_mix32(h ^ (((__u32)p->sport << 16) | p->dport));
	return lb_mix32(h ^ p->proto);
}

static __always_inline void lb4_tuple_of(const struct pkt4 *p, struct lb4_tuple *t)
{
	__builtin_memset(t, 0, sizeof(*t));
	t->saddr = p->saddr;
	t->daddr = p->daddr;
	t->sport = p->sport;
	t->dport = p->dport;
	t->proto = p->proto;
}

static __always_inline __u32 lb4_l4_csum_flags(const struct pkt4 *p, __u32 size)
{
	return size | (p->proto == IPPROTO_UDP ? CTX_CSUM_UDP : 0);
}

/* Rewrites the source or destination address, with the IPv4 and (pseudo-header) L4 checksums. */
static __always_inline int lb4_set_addr(lb_ctx *ctx, struct pkt4 *p, int src, __be32 addr)
{
	__be32 old = src ? p->saddr : p->daddr;
	__u32 off = p->l3_off + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));

	if (old == addr)
		return 0;
	if (ctx_store4(ctx, off, addr))
		return -1;
	if (ctx_l3_csum_replace(ctx, p->l3_off + offsetof(struct iphdr, check), old, addr, 4))
		return -1;
	/* Later fragments carry no L4 header; the first fragment's checksum covers the whole datagram. */
	if (p->has_l4 && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
	    ctx_l4_csum_replace(ctx, pkt4_l4_csum_off(p), old, addr,
				lb4_l4_csum_flags(p, 4) | CTX_CSUM_PSEUDO))
		return -1;
	if (src)
		p->saddr = addr;
	else
		p->daddr = addr;
	return 0;
}

/* Rewrites the source or destination port, with the L4 checksum. */
static __always_inline int lb4_set_port(lb_ctx *ctx, struct pkt4 *p, int src, __be16 port)
{
	__be16 old = src ? p->sport : p->dport;

	if (old == port)
		return 0;
	if (p->has_l4) {
		if (ctx_store2(ctx, p->l4_off + (src ? 0 : 2), port))
			return -1;
		if (ctx_l4_csum_replace(ctx, pkt4_l4_csum_off(p), old, port, lb4_l4_csum_flags(p, 2)))
			return -1;
	}
	if (src)
		p->sport = port;
	else
		p->dport = port;
	return 0;
}

/* One's-complement change of a checksum when a 32-bit / 16-bit covered word changes (RFC 1624:
 * ~old + new), unfolded so several changes add up before one fold. */
static __always_inline __u32 csum_delta4(__u32 from, __u32 to)
{
	return (__u16)~(from & 0xffff) + (__u16)~(from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_delta2(__u16 from, __u16 to)
{
	return (__u16)~from + (__u32)to;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 delta)
{
	return (__u16)~csum_fold32((__u32)(__u16)~check + delta);
}

/* Rewrites both ends (address and port) at once. On XDP the four fields and both checksums are
 * written directly, the checksum changes summed in registers and folded once (the hit path's
 * rewrite); on TC through the helpers, which keep the skb's checksum state right. */
static __always_inline int lb4_rewrite(lb_ctx *ctx, struct pkt4 *p, __be32 saddr, __be16 sport,
				       __be32 daddr, __be16 dport)
{
#ifdef CTX_DIRECT_WRITES
	void *data = ctx_data(ctx);
	void *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN;
	__u32 delta = csum_delta4(p->saddr, saddr) + csum_delta4(p->daddr, daddr);

	if ((void *)(ip + 1) > end)
		return -1;
	ip->saddr = saddr;
	ip->daddr = daddr;
	ip->check = csum_apply(ip->check, delta);
	if (p->has_l4 && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)) {
		__u32 off = p->l4_off;
		__be16 *ports;
		__u16 *cs;

		if (off > ETH_HLEN + IPV4_IHL_MAX * 4)
			return -1;
		ports = data + off;
		cs = data + off + (p->proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
		if ((void *)(ports + 2) > end || (void *)(cs + 1) > end)
			return -1;
		delta += csum_delta2(ports[0], sport) + csum_delta2(ports[1], dport);
		ports[0] = sport;
		ports[1] = dport;
		/* A UDP datagram sent without checksum stays without one; a computed 0 is sent as ~0. */
		if (p->proto == IPPROTO_TCP || *cs) {
			__u16 n = csum_apply(*cs, delta);

			*cs = (p->proto == IPPROTO_UDP && !n) ? CSUM_MANGLED_0 : n;
		}
	}
	p->saddr = saddr;
	p->daddr = daddr;
	p->sport = sport;
	p->dport = dport;
	return 0;
#else
	if (lb4_set_addr(ctx, p, LB_SRC, saddr) || lb4_set_port(ctx, p, LB_SRC, sport) ||
	    lb4_set_addr(ctx, p, LB_DST, daddr) || lb4_set_port(ctx, p, LB_DST, dport))
		return -1;
	return 0;
#endif
}

/* Inserts the DSR option (VIP:port for the backend's node) right after the fixed IPv4 header. */
static __always_inline int lb4_push_dsr_opt(lb_ctx *ctx, struct pkt4 *p, __be32 vip, __be16 vport)
{
	__u32 csum_off = p->l3_off + offsetof(struct iphdr, check);
	__u32 opt_off = p->l3_off + sizeof(struct iphdr);
	__be16 old_len = p->tot_len;
	__be16 new_len = bpf_htons(bpf_ntohs(old_len) + LB_DSR_OPT_LEN);
	__u8 old_vihl = 0x40 | p->ihl;
	__u8 new_vihl = 0x40 | (p->ihl + LB_DSR_OPT_LEN / 4);
	__be16 opt_head = bpf_htons((LB_DSR_OPT_TYPE << 8) | LB_DSR_OPT_LEN);
	__u8 tos = 0;
	void *data = ctx_data(ctx);
	struct iphdr *ip = data + ETH_HLEN;

	if (p->ihl + LB_DSR_OPT_LEN / 4 > IPV4_IHL_MAX)
		return -1;
	if ((void *)(ip + 1) > ctx_data_end(ctx))
		return -1;
	tos = ip->tos;
	if (ctx_insert_after_iph(ctx, LB_DSR_OPT_LEN))
		return -1;
#ifdef CTX_DIRECT_WRITES
	{
		/* Written in place; the five checksum changes summed in registers, folded once. */
		__u8 *d = ctx_data(ctx);
		struct iphdr *nip = (void *)(d + ETH_HLEN);
		__u8 *o = d + ETH_HLEN + sizeof(struct iphdr);
		__u32 delta = csum_delta2(bpf_htons((old_vihl << 8) | tos),
					  bpf_htons((new_vihl << 8) | tos)) +
			      csum_delta2(old_len, new_len) + csum_delta2(0, opt_head) +
			      csum_delta2(0, vport) + csum_delta4(0, vip);

		(void)csum_off;
		(void)opt_off;
		if ((void *)(o + LB_DSR_OPT_LEN) > ctx_data_end(ctx))
			return -1;
		*(__u8 *)nip = new_vihl;
		nip->tot_len = new_len;
		*(__be16 *)o = opt_head;
		*(__be16 *)(o + 2) = vport;
		*(__be32 *)(o + 4) = vip;
		nip->check = csum_apply(nip->check, delta);
	}
#else
	/* Version/IHL and TOS share the header's first checksum word. */
	if (ctx_store1(ctx, p->l3_off, new_vihl) ||
	    ctx_l3_csum_replace(ctx, csum_off, bpf_htons((old_vihl << 8) | tos),
				bpf_htons((new_vihl << 8) | tos), 2) ||
	    ctx_store2(ctx, p->l3_off + offsetof(struct iphdr, tot_len), new_len) ||
	    ctx_l3_csum_replace(ctx, csum_off, old_len, new_len, 2))
		return -1;
	/* The option's words were zero in the sum; adding them is a replace from zero. */
	if (ctx_store2(ctx, opt_off, opt_head) || ctx_store2(ctx, opt_off + 2, vport) ||
	    ctx_store4(ctx, opt_off + 4, vip) || ctx_l3_csum_replace(ctx, csum_off, 0, opt_head, 2) ||
	    ctx_l3_csum_replace(ctx, csum_off, 0, vport, 2) ||
	    ctx_l3_csum_replace(ctx, csum_off, 0, vip, 4))
		return -1;
#endif
	p->ihl += LB_DSR_OPT_LEN / 4;
	p->l4_off += LB_DSR_OPT_LEN;
	p->tot_len = new_len;
	return 0;
}

/* The datapath's clock (see lb_config.ct_tick_shift): inlined by the verifier, no helper call. */
static __always_inline __u64 lb_now(void)
{
	return bpf_jiffies64();
}

/* The per-CPU FIB memo slot of daddr on ifindex (NULL never happens: an in-range array index). */
static __always_inline struct lb_fib_memo *lb_fib_memo_slot(__be32 daddr, __u32 ifindex)
{
	__u32 slot = lb_mix32(daddr ^ ifindex) & (CILIA_LB_FIB_MEMO_SLOTS - 1);

	return bpf_map_lookup_elem(&cilia_lb_fib_memo, &slot);
}

/* Whether a memo answers for daddr on ifindex, for a packet of len bytes, now. */
static __always_inline int lb_fib_memo_valid(const struct lb_fib_memo *m, __be32 daddr,
					     __u32 ifindex, __u16 len, __u64 now)
{
	return m && m->daddr == daddr && m->ifindex == ifindex && len <= m->ok_len &&
	       now < m->expires;
}

/* Sends the frame back out of its device with these MACs; counts `c` (xmit_tx after a FIB lookup,
 * fib_memo_hit with a memoised next hop: one counter per packet on the hit path). */
static __always_inline int lb4_tx(lb_ctx *ctx, const __u8 *dmac, const __u8 *smac,
				  enum lb_counter c)
{
	if (ctx_store_macs(ctx, dmac, smac)) {
		lb_count(LB_C_XMIT_STACK);
		return CTX_PASS;
	}
	lb_count(c);
	return ctx_tx(ctx);
}

/* Sends a translated packet on:
 *  - straight back out of its device when the FIB says the next hop is there (neighbour known);
 *  - TC: out of the FIB's device when that is another one (a backend pod behind its veth, a client
 *    behind another uplink), via bpf_redirect_neigh (the kernel resolves the neighbour). Handing
 *    such a packet to the stack does not work: with the node's address as source (SNAT) it is a
 *    martian on the device it came in on, and a local backend's reply would miss the reverse NAT;
 *  - TC: the same with no neighbour yet, on any device (bpf_redirect_neigh resolves it);
 *  - XDP never gets here with another device or no neighbour: lb4_xdp_defer() passed the packet
 *    untranslated first (TC, on the same device and sharing the conntrack map, translates and
 *    redirects it);
 *  - otherwise (no route, too big) to the stack, which fragments and runs netfilter.
 * Same-device answers are memoised per CPU for LB_FIB_MEMO_TTL_NS; other-device answers only as
 * "not here" (TC looks them up again); missing routes or neighbours are not memoised. */
static __always_inline int lb4_xmit(lb_ctx *ctx, const struct pkt4 *p,
				    const struct lb_config *cfg, __u64 now)
{
	struct bpf_fib_lookup fib = {};
	__u32 ifindex = ctx_ifindex(ctx);
	__u16 len = bpf_ntohs(p->tot_len);
	struct lb_fib_memo *m = lb_fib_memo_slot(p->daddr, ifindex);
	long rc;

	if (lb_fib_memo_valid(m, p->daddr, ifindex, len, now)) {
		if (m->tx)
			return lb4_tx(ctx, m->dmac, m->smac, LB_C_FIB_MEMO_HIT);
#ifndef CTX_HAS_REDIRECT
		lb_count(LB_C_XMIT_STACK);
		return CTX_PASS;
#endif
	}
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = p->proto;
	fib.tot_len = len;
	fib.ipv4_src = p->saddr;
	fib.ipv4_dst = p->daddr;
	fib.ifindex = ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
#ifdef CTX_HAS_REDIRECT
	/* Another device, or no neighbour yet (on any device): the kernel resolves it. The stack
	 * would drop an SNATed packet (the node's own address as source, a martian). */
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH ||
	    (rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex != ifindex)) {
		lb_count(LB_C_XMIT_REDIRECT);
		return ctx_redirect_neigh(ctx, fib.ifindex);
	}
#endif
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		lb_count(LB_C_XMIT_STACK);
		return CTX_PASS;
	}
	if (m) {
		m->daddr = p->daddr;
		m->ifindex = ifindex;
		m->ok_len = len;
		m->tx = fib.ifindex == ifindex;
		__builtin_memcpy(m->dmac, fib.dmac, 6);
		__builtin_memcpy(m->smac, fib.smac, 6);
		m->expires = now + cfg->fib_memo_jiffies;
	}
	if (fib.ifindex != ifindex) {
		lb_count(LB_C_XMIT_STACK);
		return CTX_PASS;
	}
	return lb4_tx(ctx, fib.dmac, fib.smac, LB_C_XMIT_TX);
}

/* lb4_xmit when the memo was just found valid by lb4_xdp_defer (XDP's hit path: one memo lookup per
 * packet, not two): only the length, grown by a DSR option since, is checked again. */
static __always_inline int lb4_xmit_memo(lb_ctx *ctx, const struct pkt4 *p,
					 const struct lb_config *cfg, __u64 now,
					 const struct lb_fib_memo *hint)
{
	if (hint && bpf_ntohs(p->tot_len) <= hint->ok_len)
		return lb4_tx(ctx, hint->dmac, hint->smac, LB_C_FIB_MEMO_HIT);
	return lb4_xmit(ctx, p, cfg, now);
}

/* XDP only, before a translation: whether the translated packet (saddr -> daddr) would leave by
 * another device than the one it came in on, or has no resolved neighbour yet. XDP cannot send it there (a veth peer runs no XDP
 * program) nor hand a translated packet to the stack (martian source, see lb4_xmit), so such a
 * packet is passed untouched: TC on the same device finds the conntrack entry just written (same
 * backend, same SNAT port) and translates and redirects it. Intentional XDP/TC divergence: XDP
 * answers XDP_PASS with the packet unchanged where TC answers TC_ACT_REDIRECT. */
static __always_inline int lb4_xdp_defer(lb_ctx *ctx, const struct pkt4 *p, __be32 saddr,
					  __be32 daddr, __u64 now, struct lb_fib_memo **hint)
{
	*hint = NULL;
#ifdef CTX_HAS_REDIRECT
	return 0;
#else
	struct bpf_fib_lookup fib = {};
	__u32 ifindex = ctx_ifindex(ctx);
	__u16 len = bpf_ntohs(p->tot_len);
	struct lb_fib_memo *m = lb_fib_memo_slot(daddr, ifindex);
	long rc;

	if (lb_fib_memo_valid(m, daddr, ifindex, len, now)) {
		if (!m->tx)
			return 1;
		*hint = m;
		return 0;
	}
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = p->proto;
	fib.tot_len = len;
	fib.ipv4_src = saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = ifindex;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH ||
	    (rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex != ifindex)) {
		lb_count(LB_C_XDP_TO_TC);
		return 1;
	}
	return 0;
#endif
}

/* Non-first fragments carry no ports: remember the first fragment's, by datagram. */
static __always_inline void lb4_frag_remember(const struct pkt4 *p)
{
	struct lb4_frag_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .id = p->id, .proto = p->proto,
	};
	struct lb4_frag_ports v = { .sport = p->sport, .dport = p->dport };

	bpf_map_update_elem(&cilia_lb4_frag, &k, &v, BPF_ANY);
	lb_count(LB_C_FRAG_FIRST);
}

static __always_inline int lb4_frag_recall(struct pkt4 *p)
{
	struct lb4_frag_key k = {
		.saddr = p->saddr, .daddr = p->daddr, .id = p->id, .proto = p->proto,
	};
	struct lb4_frag_ports *v = bpf_map_lookup_elem(&cilia_lb4_frag, &k);

	if (!v)
		return -1;
	p->sport = v->sport;
	p->dport = v->dport;
	return 0;
}

/* The backend a new flow goes to: its maglev table entry, or its hash over the slots. */
static __always_inline __u32 lb4_pick(const struct lb4_key *key, const struct lb4_service *svc,
				      const struct lb_config *cfg, __u32 hash)
{
	struct lb4_key slot = *key;
	struct lb4_service *s;

	if (svc->algorithm == LB_ALG_MAGLEV && cfg->maglev_table_size) {
		__u32 outer = svc->rev_nat_index;
		void *table = bpf_map_lookup_elem(&cilia_lb4_maglev, &outer);

		if (table) {
			__u32 idx = hash % cfg->maglev_table_size;
			__u32 *id = bpf_map_lookup_elem(table, &idx);

			if (id && *id)
				return *id;
		}
		/* No table (yet): the agent writes it after the slots; the slots still balance. */
	}
	slot.backend_slot = (hash % svc->count) + 1;
	s = bpf_map_lookup_elem(&cilia_lb4_services, &slot);
	return s ? s->backend_id : 0;
}

/* ClientIP session affinity: a client keeps its backend across flows until the timeout. */
static __always_inline __u32 lb4_affinity_get(const struct pkt4 *p, const struct lb4_service *svc)
{
	struct lb4_affinity_key k = { .client_addr = p->saddr, .rev_nat_index = svc->rev_nat_index };
	struct lb4_affinity_entry *e = bpf_map_lookup_elem(&cilia_lb4_affinity, &k);

	if (!e || bpf_ktime_get_ns() - e->last_used_ns > svc->affinity_timeout * LB_NSEC_PER_SEC)
		return 0;
	return e->backend_id;
}

static __always_inline void lb4_affinity_put(const struct pkt4 *p, const struct lb4_service *svc,
					     __u32 backend_id)
{
	struct lb4_affinity_key k = { .client_addr = p->saddr, .rev_nat_index = svc->rev_nat_index };
	struct lb4_affinity_entry e = { .backend_id = backend_id, .last_used_ns = bpf_ktime_get_ns() };

	bpf_map_update_elem(&cilia_lb4_affinity, &k, &e, BPF_ANY);
}

/* How a flow reaches its backend. */
static __always_inline __u8 lb4_fwd_mode(const struct lb4_service *svc, const struct lb4_backend *be,
					 const struct pkt4 *p, int from_pod)
{
	/* From a pod (the program on its host-side device): DNAT only, the backend sees the pod, as
	 * with Cilium's ClusterIP. The reply is restored where it enters: the node device for a remote
	 * backend, the backend's device for a local one (lb4_rev_dnat). */
	if (from_pod)
		return LB_FWD_LOCAL;
	/* On this node: DNAT is enough, the reply passes our egress hook on its way out. */
	if (be->flags & LB_BE_F_LOCAL)
		return LB_FWD_LOCAL;
	/* A host process's reply shares the node's sockets and skips the pod hooks that would put the
	 * VIP back as its source: keep such flows on this node with SNAT. */
	if (be->flags & LB_BE_F_HOST_NETWORK)
		return LB_FWD_SNAT;
	if (svc->mode == LB_MODE_DSR || (svc->mode == LB_MODE_HYBRID && p->proto == IPPROTO_TCP))
		return LB_FWD_DSR;
	return LB_FWD_SNAT;
}

/* The 28 bytes an ICMP error puts before the quote: its own IPv4 header and the ICMP header. */
struct lb4_icmp_err_hdr {
	struct iphdr ip;
	struct icmp4hdr icmp;
};
_Static_assert(sizeof(struct lb4_icmp_err_hdr) == 28, "IPv4 + ICMP header, no padding");

static __always_inline __u16 csum_words(const __u16 *w, __u32 n, __u32 seed)
{
	__u32 s = seed;

	for (__u32 i = 0; i < n; i++)
		s += w[i];
	return (__u16)~csum_fold32(s);
}

/* Turns the packet into the ICMP port unreachable a host without a listener would send, from the
 * frontend to the client, and leaves it ready to go back out of its device. Only for packets without
 * IPv4 options (a fixed-size quote); -1 leaves the caller to drop. */
static __always_inline int lb4_reject(lb_ctx *ctx, const struct pkt4 *p)
{
	struct lb4_icmp_err_hdr h = {};
	__u16 quote[LB_REJECT_QUOTE / 2];
	__u8 macs[12];
	__u8 *eth = ctx_data(ctx);

	if (p->ihl != 5 || !p->has_l4 || (void *)(eth + 12) > ctx_data_end(ctx))
		return -1;
	/* Back to where it came from: the MACs swap. */
	__builtin_memcpy(macs, eth + 6, 6);
	__builtin_memcpy(macs + 6, eth, 6);
	if (ctx_load_bytes(ctx, ETH_HLEN, quote, sizeof(quote)))
		return -1;
	if (ctx_insert_after_eth(ctx, sizeof(h)) ||
	    ctx_set_len(ctx, ETH_HLEN + sizeof(h) + LB_REJECT_QUOTE))
		return -1;
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tot_len = bpf_htons(sizeof(h) + LB_REJECT_QUOTE);
	h.ip.ttl = LB_REJECT_TTL;
	h.ip.protocol = IPPROTO_ICMP;
	h.ip.saddr = p->daddr;
	h.ip.daddr = p->saddr;
	h.ip.check = csum_words((const __u16 *)&h, sizeof(h.ip) / 2, 0);
	h.icmp.type = ICMP_T_DEST_UNREACH;
	h.icmp.code = ICMP_C_PORT_UNREACH;
	h.icmp.checksum = csum_words(quote, LB_REJECT_QUOTE / 2,
				     (__u32)h.icmp.type | ((__u32)h.icmp.code << 8));
	if (ctx_store_bytes(ctx, ETH_HLEN, &h, sizeof(h)) || ctx_store_macs(ctx, macs, macs + 6))
		return -1;
	return 0;
}

/* Allocates the node port a new SNATed flow leaves with: hashed candidates, each claimed with a
 * BPF_NOEXIST insert of the reply's NAT entry, so two CPUs never hand out the same port. */
static __always_inline int lb4_snat_alloc(const struct pkt4 *p, const struct lb4_backend *be,
					  __u32 rev_nat_index, const struct lb_config *cfg, __u32 hash,
					  __be16 *port)
{
	struct lb4_tuple reply = {
		.saddr = be->address, .daddr = cfg->node_addr, .sport = be->port, .proto = p->proto,
	};
	struct lb4_nat_entry v = {
		.client_addr = p->saddr, .client_port = p->sport, .rev_nat_index = rev_nat_index,
	};
	__u32 range;

	if (cfg->snat_port_max < cfg->snat_port_min)
		return -1;
	range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;
	for (__u32 i = 0; i < LB_SNAT_PORT_RETRIES; i++) {
		__u16 cand = cfg->snat_port_min + lb_mix32(hash + i * LB_HASH_GOLDEN) % range;

		reply.dport = bpf_htons(cand);
		if (bpf_map_update_elem(&cilia_lb4_nat, &reply, &v, BPF_NOEXIST) == 0) {
			*port = reply.dport;
			return 0;
		}
		lb_count(LB_C_SNAT_PORT_RETRY);
	}
	lb_count(LB_C_SNAT_PORT_EXHAUSTED);
	return -1;
}

#define TCP_F_FIN 0x01
#define TCP_F_RST 0x04
#define TCP_F_ACK 0x10

/* How long a flow lives after this packet (in ticks), recording the TCP state it shows. */
static __always_inline __u32 lb4_ct_lifetime(struct lb4_ct_entry *e, const struct pkt4 *p,
					     const struct lb_config *cfg)
{
	if (p->proto != IPPROTO_TCP)
		return cfg->ct_timeout[LB_CT_NONTCP];
	if (p->tcp_flags & (TCP_F_FIN | TCP_F_RST))
		e->closing = 1;
	if (p->tcp_flags & TCP_F_ACK)
		e->seen_ack = 1;
	if (e->closing)
		return cfg->ct_timeout[LB_CT_TCP_CLOSE];
	return cfg->ct_timeout[e->seen_ack ? LB_CT_TCP : LB_CT_TCP_SYN];
}

/* An expired SNATed flow gives its node port back: the reply tuple's NAT entry goes with it. */
static __always_inline void lb4_ct_release(const struct lb4_ct_entry *e, const struct pkt4 *p)
{
	struct lb4_backend *bp;

	if (e->fwd != LB_FWD_SNAT)
		return;
	bp = lb4_backend_get(e->backend_id);
	if (!bp)
		return;
	struct lb4_tuple reply = {
		.saddr = bp->address, .daddr = e->nat_addr, .sport = bp->port, .dport = e->nat_port,
		.proto = p->proto,
	};

	bpf_map_delete_elem(&cilia_lb4_nat, &reply);
}

/* A packet for a known frontend: find (or keep) its backend and translate it. */
static __always_inline int lb4_service_xlate(lb_ctx *ctx, struct pkt4 *p, const struct lb4_key *key,
					     const struct lb4_service *svc, const struct lb_config *cfg,
					     int from_pod)
{
	struct lb4_tuple t;
	struct lb4_ct_entry entry = {};
	struct lb4_ct_entry *ct;
	struct lb4_backend *bp;
	struct lb4_backend be;
	__be32 vip = p->daddr;
	__be16 vport = p->dport;
	struct lb_fib_memo *memo;
	__u64 now = lb_now();
	__u32 tick = now >> (cfg->ct_tick_shift & 63);
	__u32 hash, id = 0, expires;

	lb4_tuple_of(p, &t);
	ct = bpf_map_lookup_elem(&cilia_lb4_ct, &t);
	if (ct && ct->rev_nat_index == svc->rev_nat_index) {
		if ((__s32)(tick - ct->expires) > 0) {
			/* Idle past its lifetime: forgotten, as if it had been evicted. */
			lb_count(LB_C_CT_EXPIRED);
			lb4_ct_release(ct, p);
			goto new_flow;
		}
		bp = lb4_backend_get(ct->backend_id);
		if (bp) {
			/* Refreshed in place; written only when the tick or the TCP state moved. */
			expires = tick + lb4_ct_lifetime(ct, p, cfg);
			if (ct->expires != expires)
				ct->expires = expires;
			entry = *ct;
			be = *bp;
			lb_count(LB_C_CT_HIT);
			goto xlate;
		}
		/* The backend's entry is gone. The agent removes a backend that left its services
		 * only once no live conntrack entry names it (until then it is kept, draining, and the
		 * hit above keeps the flow on it), so this flow was idle past its lifetime or evicted:
		 * give it a live backend. */
		lb_count(LB_C_CT_STALE);
	}
new_flow:
	if (svc->count == 0) {
		/* A known service without backends: the packet must not reach the stack as if the VIP
		 * were local. Reject answers the client at once (not rate-limited: one reply of the
		 * request's size per request, no amplification); packets with options are dropped. */
		if (svc->flags & LB_SVC_F_REJECT) {
			lb_count(LB_C_NO_BACKEND_REJECT);
			if (lb4_reject(ctx, p))
				return CTX_DROP;
			lb_count(LB_C_XMIT_TX);
			return ctx_tx(ctx);
		}
		lb_count(LB_C_NO_BACKEND_DROP);
		return CTX_DROP;
	}
	hash = lb4_flow_hash(p, cfg->hash_seed);
	if (svc->flags & LB_SVC_F_AFFINITY) {
		id = lb4_affinity_get(p, svc);
		bp = id ? lb4_backend_get(id) : NULL;
		/* A draining backend (removed, kept only for established flows) takes no new flow,
		 * affinity or not: the client gets a live backend (and a new affinity). */
		if (bp && !(bp->flags & LB_BE_F_DRAINING))
			lb_count(LB_C_AFFINITY_HIT);
		else
			id = 0;
	}
	if (!id)
		id = lb4_pick(key, svc, cfg, hash);
	bp = lb4_backend_get(id);
	if (!bp) {
		/* The agent writes backends before the slots naming them; a miss is a bug, not a race. */
		lb_count(LB_C_STALE_SLOT);
		return CTX_DROP;
	}
	be = *bp;
	entry.backend_id = id;
	entry.rev_nat_index = svc->rev_nat_index;
	entry.fwd = lb4_fwd_mode(svc, &be, p, from_pod);
	if (entry.fwd == LB_FWD_DSR && p->ihl + LB_DSR_OPT_LEN / 4 > IPV4_IHL_MAX) {
		/* No room for the option: the backend could not answer as the VIP, so SNAT it. */
		lb_count(LB_C_DSR_NO_ROOM);
		entry.fwd = LB_FWD_SNAT;
	}
	if (entry.fwd == LB_FWD_SNAT) {
		if (lb4_snat_alloc(p, &be, svc->rev_nat_index, cfg, hash, &entry.nat_port))
			return CTX_DROP;
		entry.nat_addr = cfg->node_addr;
	}
	entry.expires = tick + lb4_ct_lifetime(&entry, p, cfg);
	bpf_map_update_elem(&cilia_lb4_ct, &t, &entry, BPF_ANY);
	if (svc->flags & LB_SVC_F_AFFINITY)
		lb4_affinity_put(p, svc, id);

xlate:
	if (lb4_xdp_defer(ctx, p, entry.fwd == LB_FWD_SNAT ? entry.nat_addr : p->saddr, be.address,
			  now, &memo))
		return CTX_PASS;
	if (entry.fwd == LB_FWD_SNAT) {
		if (lb4_rewrite(ctx, p, entry.nat_addr, entry.nat_port, be.address, be.port))
			return CTX_DROP;
		lb_count(LB_C_FWD_SNAT);
		return lb4_xmit_memo(ctx, p, cfg, now, memo);
	} else if (entry.fwd == LB_FWD_DSR) {
		/* Only packets with ports carry the option: that is what the backend side keys on. An
		 * established flow whose packet has no room keeps going without it (already recorded). */
		if (p->has_l4 && p->ihl + LB_DSR_OPT_LEN / 4 <= IPV4_IHL_MAX &&
		    lb4_push_dsr_opt(ctx, p, vip, vport))
			return CTX_DROP;
		lb_count(LB_C_FWD_DSR);
	} else {
		struct lb4_tuple reply = {
			.saddr = be.address, .daddr = p->saddr, .sport = be.port, .dport = p->sport,
			.proto = p->proto,
		};
		struct lb4_dsr_entry rev = { .vip = vip, .vport = vport };

		bpf_map_update_elem(&cilia_lb4_dsr, &reply, &rev, BPF_ANY);
		lb_count(LB_C_FWD_LOCAL);
	}
	if (lb4_rewrite(ctx, p, p->saddr, p->sport, be.address, be.port))
		return CTX_DROP;
	return lb4_xmit_memo(ctx, p, cfg, now, memo);
}

/* A reply of an SNATed flow (backend -> node:port): restore VIP:port -> client:port. */
static __always_inline int lb4_rev_snat(lb_ctx *ctx, struct pkt4 *p, const struct lb4_nat_entry *nat,
					const struct lb_config *cfg)
{
	struct lb_fib_memo *memo;
	__u64 now;
	struct lb4_nat_entry n = *nat;
	__u32 rev = n.rev_nat_index;
	struct lb4_reverse_nat *rn = bpf_map_lookup_elem(&cilia_lb4_reverse_nat, &rev);
	struct lb4_reverse_nat fe;

	if (!rn) {
		/* The service is gone: nothing to restore, the stack answers (with a RST/ICMP). */
		lb_count(LB_C_MISS);
		return CTX_PASS;
	}
	fe = *rn;
	now = lb_now();
	if (lb4_xdp_defer(ctx, p, fe.address, n.client_addr, now, &memo))
		return CTX_PASS;
	if (lb4_rewrite(ctx, p, fe.address, fe.port, n.client_addr, n.client_port))
		return CTX_DROP;
	lb_count(LB_C_REV_SNAT);
	return lb4_xmit_memo(ctx, p, cfg, now, memo);
}

/* What an ICMP error quotes of the offending packet: its IPv4 header (no options) and the first 8
 * bytes of its L4 header (ports; for UDP also length and checksum). */
struct lb4_icmp_quote {
	struct iphdr ip;
	__be16 sport;
	__be16 dport;
	__be16 w2;	/* UDP length / TCP sequence (high) */
	__be16 w3;	/* UDP checksum / TCP sequence (low) */
};
_Static_assert(sizeof(struct lb4_icmp_quote) == 28, "IPv4 header + 8 bytes");

/* An ICMP error to the node about a packet it SNATed (node:port -> backend, from the backend or a
 * router on the way, e.g. "fragmentation needed"): translated back into the error the client's
 * stack expects for its own flow (client:port -> VIP:port), and sent towards the client:
 *  - quoted header: source node:port -> client:port, destination backend -> VIP:port, quoted IPv4
 *    checksum updated, quoted UDP checksum too when there is one;
 *  - outer: destination node -> client; source backend -> VIP when the backend itself sent it
 *    (a router's address stays);
 *  - ICMP checksum: the quoted IPv4 header sums to the same value after the update (its checksum
 *    moves opposite to the addresses), so only the ports and the UDP checksum change it.
 * Errors about anything else, and quotes with IPv4 options, are the stack's. */
static __always_inline int lb4_icmp(lb_ctx *ctx, struct pkt4 *p, const struct lb_config *cfg)
{
	struct lb4_icmp_quote q;
	struct lb4_nat_entry *nat;
	struct lb4_nat_entry n;
	struct lb4_reverse_nat *rn;
	struct lb4_reverse_nat fe;
	__be32 backend;
	__be16 old_sport, old_dport, old_w3, w3;
	__u32 off, csum_off;

	if (!p->has_l4 || p->daddr != cfg->node_addr)
		return CTX_PASS;
	if (p->icmp_type != ICMP_T_DEST_UNREACH && p->icmp_type != ICMP_T_TIME_EXCEEDED &&
	    p->icmp_type != ICMP_T_PARAMETERPROB)
		return CTX_PASS;
	off = p->l4_off + sizeof(struct icmp4hdr);
	csum_off = p->l4_off + ICMP_CSUM_OFF;
	if (ctx_load_bytes(ctx, off, &q, sizeof(q)))
		return CTX_PASS;
	if (q.ip.ihl != 5 || (q.ip.protocol != IPPROTO_TCP && q.ip.protocol != IPPROTO_UDP) ||
	    q.ip.saddr != cfg->node_addr)
		return CTX_PASS;
	struct lb4_tuple reply = {
		.saddr = q.ip.daddr, .daddr = q.ip.saddr, .sport = q.dport, .dport = q.sport,
		.proto = q.ip.protocol,
	};

	nat = bpf_map_lookup_elem(&cilia_lb4_nat, &reply);
	if (!nat)
		return CTX_PASS;
	n = *nat;
	rn = bpf_map_lookup_elem(&cilia_lb4_reverse_nat, &n.rev_nat_index);
	if (!rn)
		return CTX_PASS;
	fe = *rn;
	backend = q.ip.daddr;
	old_sport = q.sport;
	old_dport = q.dport;
	old_w3 = q.w3;
	q.ip.check = csum_replace4(q.ip.check, q.ip.saddr, n.client_addr);
	q.ip.check = csum_replace4(q.ip.check, q.ip.daddr, fe.address);
	w3 = q.w3;
	if (q.ip.protocol == IPPROTO_UDP && w3) {
		w3 = csum_replace4(w3, q.ip.saddr, n.client_addr);
		w3 = csum_replace4(w3, q.ip.daddr, fe.address);
		w3 = csum_replace2(w3, old_sport, n.client_port);
		w3 = csum_replace2(w3, old_dport, fe.port);
		if (!w3)
			w3 = CSUM_MANGLED_0;
		q.w3 = w3;
	}
	q.ip.saddr = n.client_addr;
	q.ip.daddr = fe.address;
	q.sport = n.client_port;
	q.dport = fe.port;
	if (ctx_store_bytes(ctx, off, &q, sizeof(q)) ||
	    ctx_l4_csum_replace(ctx, csum_off, old_sport, n.client_port, 2) ||
	    ctx_l4_csum_replace(ctx, csum_off, old_dport, fe.port, 2) ||
	    ctx_l4_csum_replace(ctx, csum_off, old_w3, w3, 2))
		return CTX_DROP;
	if (p->saddr == backend && lb4_set_addr(ctx, p, LB_SRC, fe.address))
		return CTX_DROP;
	if (lb4_set_addr(ctx, p, LB_DST, n.client_addr))
		return CTX_DROP;
	lb_count(LB_C_ICMP_ERR_FLOW);
	return lb4_xmit(ctx, p, cfg, lb_now());
}

/* Entry of the load balancer on a node device's ingress (XDP or TC). */
/* A reply of a DNAT-only flow (a local backend's, or any backend's of a pod's flow): the backend's
 * source becomes the frontend again, as cilia_lb4_dsr recorded it, and the packet goes on towards
 * the client (redirected to the client pod's device when it is one). Returns LB_NOT_A_REPLY (no
 * verdict of either hook) when the packet is not such a reply. */
#define LB_NOT_A_REPLY (-1000)
static __always_inline int lb4_rev_dnat(lb_ctx *ctx, struct pkt4 *p, const struct lb_config *cfg)
{
	struct lb_fib_memo *memo;
	struct lb4_dsr_entry *e;
	struct lb4_dsr_entry rev;
	struct lb4_tuple t;
	__u64 now;

	if (!p->has_l4)
		return LB_NOT_A_REPLY;
	lb4_tuple_of(p, &t);
	e = bpf_map_lookup_elem(&cilia_lb4_dsr, &t);
	if (!e)
		return LB_NOT_A_REPLY;
	rev = *e;
	now = lb_now();
	if (lb4_xdp_defer(ctx, p, rev.vip, p->daddr, now, &memo))
		return CTX_PASS;
	/* A failed rewrite would leak the backend's address to the client: drop instead. */
	if (lb4_set_addr(ctx, p, LB_SRC, rev.vip) || lb4_set_port(ctx, p, LB_SRC, rev.vport))
		return CTX_DROP;
	lb_count(LB_C_DSR_REVERSED);
	return lb4_xmit_memo(ctx, p, cfg, now, memo);
}

#ifndef CTX_HAS_PKT_TYPE
/* XDP: the MAC of the device the frame came in on: the config's for the agent's primary device (the
 * program holds that entry anyway), cilia_lb_dev's for the others; NULL when unknown. */
static __always_inline const __u8 *lb_dev_mac(lb_ctx *ctx, const struct lb_config *cfg)
{
	__u32 key = ctx_ifindex(ctx);
	const struct lb_dev *dev;

	if (key == cfg->node_ifindex)
		return cfg->node_mac;
	dev = bpf_map_lookup_elem(&cilia_lb_dev, &key);
	return dev ? dev->mac : NULL;
}
#endif

/* Whether the frame is addressed to another host's MAC: a switch flooded it (see cilia_lb_dev). */
static __always_inline int lb_other_host(lb_ctx *ctx, const struct lb_config *cfg)
{
#ifdef CTX_HAS_PKT_TYPE
	return ctx_other_host(ctx);
#else
	__u8 *d = ctx_data(ctx);
	const __u8 *mac;
	__u32 f0, m0;
	__u16 f1, m1;

	if ((void *)(d + 6) > ctx_data_end(ctx) || (d[0] & 1))
		return 0; /* runt (parse judges it), broadcast or multicast */
	mac = lb_dev_mac(ctx, cfg);
	if (!mac)
		return 0;
	__builtin_memcpy(&m0, mac, 4);
	__builtin_memcpy(&m1, mac + 4, 2);
	if (!(m0 | m1))
		return 0; /* no MAC known for the device: not checked */
	__builtin_memcpy(&f0, d, 4);
	__builtin_memcpy(&f1, d + 4, 2);
	return ((f0 ^ m0) | (__u32)(f1 ^ m1)) != 0;
#endif
}

/* Whether this node serves a frame for `vip` that arrived on `ifindex` addressed to another host's
 * MAC (flooded by a switch): only when it announces the VIP there or is its standby, and only
 * while its L2 lease runs (the operator still speaks to it, so that role is current). After the
 * announcer's link went down its clients keep using its MAC until the new announcer's gratuitous
 * ARP, and the switch floods those frames: the standby (the operator's runner-up, or the
 * would-be announcer while the old one's lease runs out) serves them at once, and nobody else does,
 * so no backend gets a copy from every node. Off the hot path: frames for the node's own MAC never
 * get here. */
static __always_inline int lb_serves_flooded(__be32 vip, __u32 ifindex)
{
	struct l2_responder_key k = { .ip4 = vip, .ifindex = ifindex };
	const struct l2_lease *l;
	__u32 zero = 0;

	if (!bpf_map_lookup_elem(&cilia_l2_responder_v4, &k) &&
	    !bpf_map_lookup_elem(&cilia_lb_standby, &vip))
		return 0;
	l = bpf_map_lookup_elem(&cilia_l2_lease, &zero);
	return l && bpf_ktime_get_ns() < l->expires_ns;
}

/* Makes a served frame for another MAC the node's own, so every later step (the stack included,
 * which drops PACKET_OTHERHOST) treats it as addressed here. */
static __always_inline void lb_claim_frame(lb_ctx *ctx, const struct lb_config *cfg)
{
#ifdef CTX_HAS_PKT_TYPE
	bpf_skb_change_type(ctx, 0); /* PACKET_HOST */
#else
	__u8 *d = ctx_data(ctx);
	const __u8 *mac = lb_dev_mac(ctx, cfg);

	if (mac && (void *)(d + 6) <= ctx_data_end(ctx))
		__builtin_memcpy(d, mac, 6);
#endif
}

/* from_pod: the program runs on a pod's host-side device (see lb4_fwd_mode). */
static __always_inline int lb4_ingress_at(lb_ctx *ctx, int from_pod)
{
	const struct lb_config *cfg = lb_config_get();
	struct lb4_service *sp;
	struct lb4_service svc;
	struct lb4_nat_entry *nat;
	struct lb4_tuple t;
	struct pkt4 p;
	int rc;

	ctx_pull(ctx);
	rc = parse_ipv4(ctx, &p);
	if (rc == PARSE_NOT_IPV4)
		return CTX_PASS;
	if (rc == PARSE_MALFORMED) {
		lb_count(LB_C_MALFORMED);
		return CTX_PASS;
	}
	if (!cfg)
		return CTX_PASS;
	ctx_pull(ctx);	if (p.proto == IPPROTO_ICMP)
		return lb4_icmp(ctx, &p, cfg);
	/* Frontends are TCP or UDP; every other protocol is the stack's. */
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return CTX_PASS;
	if (p.frag == PKT_FRAG_LATER) {
		/* Unknown datagram (not ours, or its first fragment not seen yet): the stack reassembles. */
		if (lb4_frag_recall(&p)) {
			lb_count(LB_C_FRAG_LATER_UNKNOWN);
			return CTX_PASS;
		}
		lb_count(LB_C_FRAG_LATER_FWD);
	}
	/* Replies of SNATed flows come back to the node address, on a port from the SNAT range. */
	if (p.daddr == cfg->node_addr) {
		lb4_tuple_of(&p, &t);
		nat = bpf_map_lookup_elem(&cilia_lb4_nat, &t);
		if (nat) {
			if (p.frag == PKT_FRAG_FIRST)
				lb4_frag_remember(&p);
			return lb4_rev_snat(ctx, &p, nat, cfg);
		}
	}
	struct lb4_key key = {
		.address = p.daddr, .dport = p.dport, .proto = p.proto, .scope = LB_SCOPE_EXT,
	};

	sp = bpf_map_lookup_elem(&cilia_lb4_services, &key);
	if (!sp) {
		rc = lb4_rev_dnat(ctx, &p, cfg);
		if (rc != LB_NOT_A_REPLY)
			return rc;
		lb_count(LB_C_MISS);
		return CTX_PASS;
	}
	/* A frontend's frame addressed to another host's MAC (flooded by a switch): only the node that
	 * announces or stands by for the VIP serves it. Checked here, on hits only: a miss passes
	 * anyway, and a reply to the node's own address is this node's whatever its MAC. */
	if (!from_pod && lb_other_host(ctx, cfg)) {
		if (!lb_serves_flooded(p.daddr, ctx_ifindex(ctx))) {
			lb_count(LB_C_OTHER_HOST);
			return CTX_PASS;
		}
		lb_count(LB_C_OTHER_HOST_SERVED);
		lb_claim_frame(ctx, cfg);
	}
	svc = *sp;
	if (p.frag == PKT_FRAG_FIRST)
		lb4_frag_remember(&p);
	return lb4_service_xlate(ctx, &p, &key, &svc, cfg, from_pod);
}

static __always_inline int lb4_ingress(lb_ctx *ctx)
{
	return lb4_ingress_at(ctx, 0);
}

#endif /* CILIA_LB_H */
