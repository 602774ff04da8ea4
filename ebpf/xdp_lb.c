/* XDP load balancer on node devices (loadBalancer.acceleration native / best-effort): LoadBalancer,
 * NodePort and externalIP frontends translated before the stack sees them. The decisions live in
 * lib/lb.h, shared with tc_lb.c. */
#include "lib/ctx_xdp.h"
#include "lib/lb.h"

SEC("xdp")
int cil_xdp_lb(struct xdp_md *ctx)
{
	return lb4_ingress(ctx);
}

char _license[] SEC("license") = "GPL";
