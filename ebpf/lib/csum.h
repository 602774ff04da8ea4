/* Internet checksum arithmetic on raw (as loaded) header words: incremental updates per RFC 1624, so a
 * rewrite costs a few adds instead of a pass over the packet. Byte order does not matter as long as the
 * checksum field and the words are loaded the same way. */
#ifndef CILIA_CSUM_H
#define CILIA_CSUM_H

#include "common.h"

/* The value a UDP checksum of zero is sent as (zero means "no checksum", RFC 768). */
#define CSUM_MANGLED_0 ((__u16)0xffff)

static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* Checksum field after a 16-bit word of the covered data changed from `from` to `to`. */
static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~from;
	s += to;
	return (__u16)~csum_fold32(s);
}

/* Checksum field after a 32-bit word of the covered data changed from `from` to `to`. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~(from & 0xffff);
	s += (__u16)~(from >> 16);
	s += to & 0xffff;
	s += to >> 16;
	return (__u16)~csum_fold32(s);
}

#endif /* CILIA_CSUM_H */
