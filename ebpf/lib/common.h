/* Shared includes and helpers for every Cilia eBPF program. */
#ifndef CILIA_COMMON_H
#define CILIA_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif /* CILIA_COMMON_H */
