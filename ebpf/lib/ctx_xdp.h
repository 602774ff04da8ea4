/* Packet context for XDP programs: the operations lb.h needs, on xdp_md with direct packet writes.
 * Include exactly one ctx_*.h before parse.h / lb.h; both objects then share every decision. */
#ifndef CILIA_CTX_H
#define CILIA_CTX_H

#include "common.h"
#include "csum.h"

typedef struct xdp_md lb_ctx;

#define CTX_PASS XDP_PASS
#define CTX_DROP XDP_DROP
/* Headers can be rewritten in place with checksums computed in registers (lb4_rewrite). */
#define CTX_DIRECT_WRITES 1

/* ctx_l4_csum_replace flags (size in the low bits, as for bpf_l4_csum_replace). */
#define CTX_CSUM_PSEUDO 0x10	/* the changed word is part of the pseudo header (an address) */
#define CTX_CSUM_UDP 0x20	/* UDP: a zero checksum stays zero, a computed zero becomes 0xffff */
#define CTX_CSUM_SIZE_MASK 0x0f

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
	return ctx->ingress_ifindex;
}

/* XDP sees whole linear frames: nothing to pull. */
static __always_inline void ctx_pull(lb_ctx *ctx)
{
}

static __always_inline int ctx_store4(lb_ctx *ctx, __u32 off, __u32 v)
{
	void *p = ctx_data(ctx) + off;

	if (p + sizeof(__u32) > ctx_data_end(ctx))
		return -1;
	*(__u32 *)p = v;
	return 0;
}

static __always_inline int ctx_store2(lb_ctx *ctx, __u32 off, __u16 v)
{
	void *p = ctx_data(ctx) + off;

	if (p + sizeof(__u16) > ctx_data_end(ctx))
		return -1;
	*(__u16 *)p = v;
	return 0;
}

static __always_inline int ctx_store1(lb_ctx *ctx, __u32 off, __u8 v)
{
	void *p = ctx_data(ctx) + off;

	if (p + 1 > ctx_data_end(ctx))
		return -1;
	*(__u8 *)p = v;
	return 0;
}

/* Writes both Ethernet addresses (dst then src) at the start of the frame. */
static __always_inline int ctx_store_macs(lb_ctx *ctx, const __u8 *dst, const __u8 *src)
{
	__u8 *p = ctx_data(ctx);

	if ((void *)(p + 12) > ctx_data_end(ctx))
		return -1;
	__builtin_memcpy(p, dst, 6);
	__builtin_memcpy(p + 6, src, 6);
	return 0;
}

/* size 2 or 4: the IPv4 header word at the checksummed header changed from `from` to `to`. */
static __always_inline int ctx_l3_csum_replace(lb_ctx *ctx, __u32 off, __u32 from, __u32 to, __u32 size)
{
	__u16 *p = ctx_data(ctx) + off;

	if ((void *)(p + 1) > ctx_data_end(ctx))
		return -1;
	*p = size == 4 ? csum_replace4(*p, from, to) : csum_replace2(*p, (__u16)from, (__u16)to);
	return 0;
}

static __always_inline int ctx_l4_csum_replace(lb_ctx *ctx, __u32 off, __u32 from, __u32 to, __u32 flags)
{
	__u16 *p = ctx_data(ctx) + off;
	__u16 sum;

	if ((void *)(p + 1) > ctx_data_end(ctx))
		return -1;
	/* A UDP datagram sent without checksum stays without one. */
	if ((flags & CTX_CSUM_UDP) && *p == 0)
		return 0;
	if ((flags & CTX_CSUM_SIZE_MASK) == 4)
		sum = csum_replace4(*p, from, to);
	else
		sum = csum_replace2(*p, (__u16)from, (__u16)to);
	if ((flags & CTX_CSUM_UDP) && sum == 0)
		sum = CSUM_MANGLED_0;
	*p = sum;
	return 0;
}

/* Opens `len` zero bytes right after the fixed 20-byte IPv4 header (where an option goes), moving the
 * Ethernet and IPv4 headers towards the head. Only 8 (one DSR option) is supported. */
static __always_inline int ctx_insert_after_iph(lb_ctx *ctx, __u32 len)
{
	if (len != 8 || bpf_xdp_adjust_head(ctx, -(int)len))
		return -1;
	__u8 *p = ctx_data(ctx);

	if ((void *)(p + ETH_HLEN + 20 + 8) > ctx_data_end(ctx))
		return -1;
	/* 34 header bytes move 8 bytes down; copying ascending in 8-byte words never reads a byte
	 * that was already overwritten. */
	*(__u64 *)(p + 0) = *(__u64 *)(p + 8);
	*(__u64 *)(p + 8) = *(__u64 *)(p + 16);
	*(__u64 *)(p + 16) = *(__u64 *)(p + 24);
	*(__u64 *)(p + 24) = *(__u64 *)(p + 32);
	*(__u16 *)(p + 32) = *(__u16 *)(p + 40);
	return 0;
}

static __always_inline int ctx_load_bytes(lb_ctx *ctx, __u32 off, void *buf, __u32 len)
{
	return bpf_xdp_load_bytes(ctx, off, buf, len);
}

static __always_inline int ctx_store_bytes(lb_ctx *ctx, __u32 off, void *buf, __u32 len)
{
	return bpf_xdp_store_bytes(ctx, off, buf, len);
}

/* Opens `len` bytes right after the Ethernet header (moved towards the head). */
static __always_inline int ctx_insert_after_eth(lb_ctx *ctx, __u32 len)
{
	if (len > 64 || bpf_xdp_adjust_head(ctx, -(int)len))
		return -1;
	__u8 *p = ctx_data(ctx);

	/* Overlap-safe as long as len >= 8: each 8-byte word is read before the write that lands on it. */
	if (len < 8 || (void *)(p + ETH_HLEN + len) > ctx_data_end(ctx))
		return -1;
	*(__u64 *)(p + 0) = *(__u64 *)(p + len);
	*(__u32 *)(p + 8) = *(__u32 *)(p + len + 8);
	*(__u16 *)(p + 12) = *(__u16 *)(p + len + 12);
	return 0;
}

/* Cuts the frame to `len` bytes. */
static __always_inline int ctx_set_len(lb_ctx *ctx, __u32 len)
{
	return bpf_xdp_adjust_tail(ctx, (int)len - (int)(ctx->data_end - ctx->data));
}

/* Sends the frame back out of the device it came in on. */
static __always_inline int ctx_tx(lb_ctx *ctx)
{
	return XDP_TX;
}

#endif /* CILIA_CTX_H */
