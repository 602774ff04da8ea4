/* Host program run by cilia-datapath's build script: prints the layout of every shared map struct so
 * the Rust mirrors are checked against the C declarations at compile time. */
#include <stdio.h>
#include <stddef.h>
#include "endpoint.h"

#define SIZE(t) printf("pub const SIZE_%s: usize = %zu;\n", #t, sizeof(struct t))
#define OFF(t, f) printf("pub const OFF_%s_%s: usize = %zu;\n", #t, #f, offsetof(struct t, f))

int main(void)
{
	SIZE(ep_stats_key);
	OFF(ep_stats_key, ifindex);
	SIZE(ep_stats);
	OFF(ep_stats, rx_packets);
	OFF(ep_stats, rx_bytes);
	OFF(ep_stats, tx_packets);
	OFF(ep_stats, tx_bytes);
	printf("pub const EP_STATS_MAX: u32 = %d;\n", CILIA_EP_STATS_MAX);
	return 0;
}
