/* IPv4 packet parsing into offsets and values (never pointers), so the same description stays valid
 * across the helper calls that move or rewrite packet data. Needs a ctx_*.h included first. */
#ifndef CILIA_PARSE_H
#define CILIA_PARSE_H

#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#define IP_MF_BIT 0x2000
#define IP_OFFSET_MASK 0x1fff

/* What parse_ipv4 found. */
#define PARSE_OK 0
#define PARSE_NOT_IPV4 1	/* not an IPv4 frame: not ours to look at */
#define PARSE_MALFORMED 2	/* truncated or bogus IPv4: left for the stack to judge */

/* pkt4.frag */
#define PKT_NOT_FRAG 0
#define PKT_FRAG_FIRST 1	/* offset 0 with more fragments: carries the L4 header */
#define PKT_FRAG_LATER 2	/* offset > 0: no L4 header */

/* Offsets in the L4 header of the checksum field. */
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6
#define ICMP_CSUM_OFF 2

/* The fixed ICMP header (linux/icmp.h drags in libc headers the bpf target cannot use). */
struct icmp4hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;
};

/* One IPv4 packet as the load balancer sees it: header offsets and the fields it decides on. */
struct pkt4 {
	__u32 l3_off;
	__u32 l4_off;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;		/* ICMP: 0 */
	__be16 dport;
	__be16 tot_len;
	__be16 id;
	__u8 proto;
	__u8 ihl;		/* header length in 4-byte words, options included */
	__u8 frag;
	__u8 has_l4;		/* the L4 header is in this packet (not a later fragment) */
	__u8 icmp_type;
	__u8 tcp_flags;		/* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
	__u8 pad[2];
};

static __always_inline __u32 pkt4_l4_csum_off(const struct pkt4 *p)
{
	return p->l4_off + (p->proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
}

static __always_inline int parse_ipv4(lb_ctx *ctx, struct pkt4 *p)
{
	void *data = ctx_data(ctx);
	void *end = ctx_data_end(ctx);
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	p->l3_off = ETH_HLEN;
	p->ihl = ip->ihl;
	p->l4_off = ETH_HLEN + ((__u32)ip->ihl & 0xf) * 4;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->tot_len = ip->tot_len;
	p->id = ip->id;
	p->sport = 0;
	p->dport = 0;
	p->icmp_type = 0;
	p->tcp_flags = 0;

	__u16 frag = bpf_ntohs(ip->frag_off);

	if (frag & IP_OFFSET_MASK)
		p->frag = PKT_FRAG_LATER;
	else if (frag & IP_MF_BIT)
		p->frag = PKT_FRAG_FIRST;
	else
		p->frag = PKT_NOT_FRAG;
	p->has_l4 = p->frag != PKT_FRAG_LATER;
	if (!p->has_l4)
		return PARSE_OK;

	void *l4 = data + p->l4_off;

	switch (p->proto) {
	case IPPROTO_TCP:
		if (l4 + sizeof(struct tcphdr) > end)
			return PARSE_MALFORMED;
		p->sport = ((struct tcphdr *)l4)->source;
		p->dport = ((struct tcphdr *)l4)->dest;
		p->tcp_flags = ((__u8 *)l4)[13];
		break;
	case IPPROTO_UDP:
		if (l4 + sizeof(struct udphdr) > end)
			return PARSE_MALFORMED;
		p->sport = ((struct udphdr *)l4)->source;
		p->dport = ((struct udphdr *)l4)->dest;
		break;
	case IPPROTO_ICMP:
		if (l4 + sizeof(struct icmp4hdr) > end)
			return PARSE_MALFORMED;
		p->icmp_type = ((struct icmp4hdr *)l4)->type;
		break;
	}
	return PARSE_OK;
}

#endif /* CILIA_PARSE_H */
