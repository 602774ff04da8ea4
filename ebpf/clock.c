/* The datapath's clock, read from user space: BPF_PROG_TEST_RUN of cil_clock writes bpf_jiffies64()
 * (what the load balancer's conntrack and FIB memo run on) into the first 8 bytes of the frame it is
 * given, so the agent compares conntrack expiries against exactly the clock that wrote them. Never
 * attached to a device. */
#include "lib/common.h"

SEC("xdp")
int cil_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;

	if (data + sizeof(__u64) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	*(__u64 *)data = bpf_jiffies64();
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
