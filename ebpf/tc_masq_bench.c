/* Benchmark helpers for TC programs (never attached to a device), the TC twin of bench_xdp.c:
 * BPF_PROG_TEST_RUN with repeat=N runs a program N times on the same skb, so a rewriting program would
 * time its own output from the second run on. cil_masq_bench_restore writes the original frame back
 * before every run and tail-calls the program under test; cil_masq_bench_empty is the floor measured
 * through the same wrapper. */
#include "lib/common.h"

/* Every benchmark frame is a minimal Ethernet frame (programs under test never resize it). */
#define MASQ_BENCH_FRAME_LEN 64

/* The frame every run must start from. */
struct masq_bench_frame {
	__u8 bytes[MASQ_BENCH_FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct masq_bench_frame);
} cilia_masq_bench_frame SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} cilia_masq_bench_target SEC(".maps");

SEC("classifier")
int cil_masq_bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int cil_masq_bench_restore(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct masq_bench_frame *f = bpf_map_lookup_elem(&cilia_masq_bench_frame, &k);

	if (!f)
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, 0, f->bytes, MASQ_BENCH_FRAME_LEN, 0))
		return TC_ACT_SHOT;
	bpf_tail_call(skb, &cilia_masq_bench_target, 0);
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";
