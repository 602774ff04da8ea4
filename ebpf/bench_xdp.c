/* Benchmark helpers (never attached to a device). BPF_PROG_TEST_RUN with repeat=N runs a program N times
 * on the same buffer, so a program that rewrites the frame would time its own output from the second
 * run on. cil_bench_restore puts the original frame back before every run and tail-calls the program
 * under test; cil_bench_empty is the floor measured through the same wrapper. */
#include "lib/common.h"

/* Every benchmark frame is a minimal Ethernet frame. */
#define BENCH_FRAME_LEN 64

/* The frame every run must start from. */
struct bench_frame {
	__u8 bytes[BENCH_FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_frame);
} cilia_bench_frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} cilia_bench_target SEC(".maps");

SEC("xdp")
int cil_bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int cil_bench_restore(struct xdp_md *ctx)
{
	__u32 k = 0;
	struct bench_frame *f = bpf_map_lookup_elem(&cilia_bench_frame, &k);

	if (!f)
		return XDP_ABORTED;
	/* Programs under test only grow or shrink at the head, so the original frame is always the last
	 * BENCH_FRAME_LEN bytes. The helper is called also with delta 0 so every case pays the same. */
	int delta = (int)(ctx->data_end - ctx->data) - BENCH_FRAME_LEN;

	if (bpf_xdp_adjust_head(ctx, delta))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;

	if (data + BENCH_FRAME_LEN > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, f->bytes, BENCH_FRAME_LEN);
	bpf_tail_call(ctx, &cilia_bench_target, 0);
	return XDP_ABORTED;
}

char _license[] SEC("license") = "GPL";
