/* The backend side of DSR: read the DSR option of packets arriving at a backend's node and remember
 * the frontend they were sent to, then rewrite the backend's replies to leave with that frontend as
 * source (the client talked to VIP:port and must hear back from it). Include a ctx_*.h first. */
#ifndef CILIA_LB_DSR_H
#define CILIA_LB_DSR_H

#include "lb.h"

/* Finds the DSR option; 0 and VIP:port when present. The load balancer always inserts it as the first
 * option (before any the client sent), so only that position is read: no option walk, a constant
 * cost per packet. */
static __always_inline int lb4_dsr_opt_find(lb_ctx *ctx, const struct pkt4 *p, __be32 *vip,
					    __be16 *vport)
{
	__u8 *o = ctx_data(ctx) + p->l3_off + sizeof(struct iphdr);

	if (p->ihl < 5 + LB_DSR_OPT_LEN / 4 || (void *)(o + LB_DSR_OPT_LEN) > ctx_data_end(ctx))
		return -1;
	if (o[0] != LB_DSR_OPT_TYPE || o[1] != LB_DSR_OPT_LEN)
		return -1;
	*vport = *(__be16 *)(o + 2);
	*vip = *(__be32 *)(o + 4);
	return 0;
}

/* Ingress on the backend's node: remember the reply translation a DSR option asks for. The packet
 * itself goes on unchanged; Linux ignores unknown options on received packets. */
static __always_inline void lb4_dsr_record(lb_ctx *ctx)
{
	struct pkt4 p;
	__be32 vip;
	__be16 vport;

	ctx_pull(ctx);
	if (parse_ipv4(ctx, &p) != PARSE_OK || !p.has_l4 || p.ihl <= 5)
		return;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return;
	if (lb4_dsr_opt_find(ctx, &p, &vip, &vport))
		return;
	struct lb4_tuple reply = {
		.saddr = p.daddr, .daddr = p.saddr, .sport = p.dport, .dport = p.sport, .proto = p.proto,
	};
	struct lb4_dsr_entry e = { .vip = vip, .vport = vport };

	bpf_map_update_elem(&cilia_lb4_dsr, &reply, &e, BPF_ANY);
	lb_count(LB_C_DSR_RECORDED);
}

/* Egress on the backend's node: a reply of a DSR (or node-local) flow leaves as VIP:port. */
static __always_inline int lb4_dsr_reverse(lb_ctx *ctx)
{
	struct lb4_dsr_entry *e;
	struct lb4_dsr_entry rev;
	struct lb4_tuple t;
	struct pkt4 p;

	ctx_pull(ctx);
	if (parse_ipv4(ctx, &p) != PARSE_OK || !p.has_l4)
		return CTX_PASS;
	if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
		return CTX_PASS;
	lb4_tuple_of(&p, &t);
	e = bpf_map_lookup_elem(&cilia_lb4_dsr, &t);
	if (!e)
		return CTX_PASS;
	rev = *e;
	/* A failed rewrite would leak the backend's address to the client: drop instead. */
	if (lb4_set_addr(ctx, &p, LB_SRC, rev.vip) || lb4_set_port(ctx, &p, LB_SRC, rev.vport))
		return CTX_DROP;
	lb_count(LB_C_DSR_REVERSED);
	return CTX_PASS;
}

#endif /* CILIA_LB_DSR_H */
