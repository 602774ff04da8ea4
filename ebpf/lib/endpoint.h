/* Map layouts for per-endpoint accounting. Mirrored by `cilia_datapath::maps` (checked at build time). */
#ifndef CILIA_ENDPOINT_H
#define CILIA_ENDPOINT_H

#include "common.h"

/* Upper bound of pod endpoints one node accounts for. */
#define CILIA_EP_STATS_MAX 65536

/* Key of cilia_ep_stats: the ifindex of the pod's host-side veth. */
struct ep_stats_key {
	__u32 ifindex;
};

/* Traffic counters of one endpoint, per CPU; "rx" is from the pod, "tx" is towards the pod. */
struct ep_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 tx_packets;
	__u64 tx_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, CILIA_EP_STATS_MAX);
	__type(key, struct ep_stats_key);
	__type(value, struct ep_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilia_ep_stats SEC(".maps");

static __always_inline struct ep_stats *ep_stats_of(__u32 ifindex)
{
	struct ep_stats_key key = { .ifindex = ifindex };
	struct ep_stats *s = bpf_map_lookup_elem(&cilia_ep_stats, &key);

	if (s)
		return s;
	struct ep_stats zero = {};
	/* BPF_NOEXIST: another CPU may have created it meanwhile; either way look it up again. */
	bpf_map_update_elem(&cilia_ep_stats, &key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&cilia_ep_stats, &key);
}

#endif /* CILIA_ENDPOINT_H */
