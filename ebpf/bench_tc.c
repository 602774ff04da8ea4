/* Benchmark floor for TC programs that never rewrite a frame: the cheapest classifier, run through
 * BPF_PROG_TEST_RUN on the same frames as the program under test. */
#include "lib/common.h"

SEC("classifier")
int cil_bench_tc_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "GPL";
