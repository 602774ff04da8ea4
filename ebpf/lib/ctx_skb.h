/* Packet context for TC programs: the operations lb.h needs, on __sk_buff through helpers, so the skb's
 * checksum state (CHECKSUM_COMPLETE) is kept right. Include exactly one ctx_*.h before parse.h / lb.h. */
#ifndef CILIA_CTX_H
#define CILIA_CTX_H

#include "common.h"
#include "csum.h"

typedef struct __sk_buff lb_ctx;

/* TC_ACT_UNSPEC: pass, and let the next program of a TCX chain see the packet too. */
#define CTX_PASS TC_ACT_UNSPEC
#define CTX_DROP TC_ACT_SHOT

#define CTX_CSUM_PSEUDO 0x10
#define CTX_CSUM_UDP 0x20
#define CTX_CSUM_SIZE_MASK 0x0f

/* Headers the load balancer reads: Ethernet, IPv4 with options, TCP with options, DSR option. */
#define CTX_PULL_LEN (ETH_HLEN + 60 + 60)

static __always_inline void *ctx_data(lb_ctx *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(lb_ctx *ctx)
{
	return (void *)(long)ctx->data_end;
}

static __always_inline __u32 ctx_ifindex(lb_ctx *ctx)
{
	return ctx->ifindex;
}

/* A unicast frame for another host's MAC (PACKET_OTHERHOST, set by eth_type_trans). */
#define CTX_HAS_PKT_TYPE 1
static __always_inline int ctx_other_host(lb_ctx *ctx)
{
	return ctx->pkt_type == 3; /* PACKET_OTHERHOST */
}

/* Makes the headers linear so they can be read directly. */
static __always_inline void ctx_pull(lb_ctx *ctx)
{
	__u32 want = ctx->len < CTX_PULL_LEN ? ctx->len : CTX_PULL_LEN;

	if (ctx_data(ctx) + want > ctx_data_end(ctx))
		bpf_skb_pull_data(ctx, want);
}

static __always_inline int ctx_store4(lb_ctx *ctx, __u32 off, __u32 v)
{
	return bpf_skb_store_bytes(ctx, off, &v, sizeof(v), 0);
}

static __always_inline int ctx_store2(lb_ctx *ctx, __u32 off, __u16 v)
{
	return bpf_skb_store_bytes(ctx, off, &v, sizeof(v), 0);
}

static __always_inline int ctx_store1(lb_ctx *ctx, __u32 off, __u8 v)
{
	return bpf_skb_store_bytes(ctx, off, &v, sizeof(v), 0);
}

static __always_inline int ctx_store_macs(lb_ctx *ctx, const __u8 *dst, const __u8 *src)
{
	__u8 macs[12];

	__builtin_memcpy(macs, dst, 6);
	__builtin_memcpy(macs + 6, src, 6);
	return bpf_skb_store_bytes(ctx, 0, macs, sizeof(macs), 0);
}

static __always_inline int ctx_l3_csum_replace(lb_ctx *ctx, __u32 off, __u32 from, __u32 to, __u32 size)
{
	return bpf_l3_csum_replace(ctx, off, from, to, size);
}

static __always_inline int ctx_l4_csum_replace(lb_ctx *ctx, __u32 off, __u32 from, __u32 to, __u32 flags)
{
	__u64 f = flags & CTX_CSUM_SIZE_MASK;

	if (flags & CTX_CSUM_PSEUDO)
		f |= BPF_F_PSEUDO_HDR;
	if (flags & CTX_CSUM_UDP)
		f |= BPF_F_MARK_MANGLED_0;
	return bpf_l4_csum_replace(ctx, off, from, to, f);
}

/* Opens `len` zero bytes right after the fixed 20-byte IPv4 header (BPF_ADJ_ROOM_NET inserts there). */
static __always_inline int ctx_insert_after_iph(lb_ctx *ctx, __u32 len)
{
	return bpf_skb_adjust_room(ctx, len, BPF_ADJ_ROOM_NET, 0);
}

static __always_inline int ctx_load_bytes(lb_ctx *ctx, __u32 off, void *buf, __u32 len)
{
	return bpf_skb_load_bytes(ctx, off, buf, len);
}

static __always_inline int ctx_store_bytes(lb_ctx *ctx, __u32 off, void *buf, __u32 len)
{
	return bpf_skb_store_bytes(ctx, off, buf, len, 0);
}

/* Opens `len` bytes right after the Ethernet header. */
static __always_inline int ctx_insert_after_eth(lb_ctx *ctx, __u32 len)
{
	return bpf_skb_adjust_room(ctx, len, BPF_ADJ_ROOM_MAC, 0);
}

/* Cuts the frame to `len` bytes. */
static __always_inline int ctx_set_len(lb_ctx *ctx, __u32 len)
{
	return bpf_skb_change_tail(ctx, len, 0);
}

/* Sends the frame back out of the device it came in on (the TC twin of XDP_TX). */
static __always_inline int ctx_tx(lb_ctx *ctx)
{
	return bpf_redirect(ctx->ifindex, 0);
}

/* Sends the frame out of another device, the kernel filling in the MACs (resolving the neighbour
 * when needed): a translated packet whose next hop is a pod's veth or another uplink. */
#define CTX_HAS_REDIRECT 1
static __always_inline int ctx_redirect_neigh(lb_ctx *ctx, __u32 ifindex)
{
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

#endif /* CILIA_CTX_H */
