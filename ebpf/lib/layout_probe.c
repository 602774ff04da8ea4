/* Host program run by cilia-datapath's build script: prints the layout of every shared map struct so
 * the Rust mirrors are checked against the C declarations at compile time. */
#include <stdio.h>
#include <stddef.h>
#include "endpoint.h"
#include "lb_maps.h"
#include "masq_maps.h"
#include "l2.h"
#include "policy.h"

#define SIZE(t) printf("pub const SIZE_%s: usize = %zu;\n", #t, sizeof(struct t))
#define CONST(n) printf("pub const %s: u32 = %u;\n", #n, (unsigned)(n))
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

	SIZE(lb4_key);
	OFF(lb4_key, address);
	OFF(lb4_key, dport);
	OFF(lb4_key, backend_slot);
	OFF(lb4_key, proto);
	OFF(lb4_key, scope);
	SIZE(lb4_service);
	OFF(lb4_service, backend_id);
	OFF(lb4_service, count);
	OFF(lb4_service, rev_nat_index);
	OFF(lb4_service, mode);
	OFF(lb4_service, algorithm);
	OFF(lb4_service, flags);
	OFF(lb4_service, affinity_timeout);
	SIZE(lb4_backend);
	OFF(lb4_backend, address);
	OFF(lb4_backend, port);
	OFF(lb4_backend, proto);
	OFF(lb4_backend, flags);
	SIZE(lb4_reverse_nat);
	OFF(lb4_reverse_nat, address);
	OFF(lb4_reverse_nat, port);
	SIZE(lb4_tuple);
	OFF(lb4_tuple, saddr);
	OFF(lb4_tuple, daddr);
	OFF(lb4_tuple, sport);
	OFF(lb4_tuple, dport);
	OFF(lb4_tuple, proto);
	SIZE(lb4_ct_entry);
	OFF(lb4_ct_entry, backend_id);
	OFF(lb4_ct_entry, rev_nat_index);
	OFF(lb4_ct_entry, fwd);
	OFF(lb4_ct_entry, nat_addr);
	OFF(lb4_ct_entry, nat_port);
	SIZE(lb4_nat_entry);
	OFF(lb4_nat_entry, client_addr);
	OFF(lb4_nat_entry, client_port);
	OFF(lb4_nat_entry, rev_nat_index);
	SIZE(lb4_dsr_entry);
	OFF(lb4_dsr_entry, vip);
	OFF(lb4_dsr_entry, vport);
	SIZE(lb4_frag_key);
	OFF(lb4_frag_key, saddr);
	OFF(lb4_frag_key, daddr);
	OFF(lb4_frag_key, id);
	OFF(lb4_frag_key, proto);
	SIZE(lb4_frag_ports);
	OFF(lb4_frag_ports, sport);
	OFF(lb4_frag_ports, dport);
	SIZE(lb4_affinity_key);
	OFF(lb4_affinity_key, client_addr);
	OFF(lb4_affinity_key, rev_nat_index);
	SIZE(lb4_affinity_entry);
	OFF(lb4_affinity_entry, backend_id);
	OFF(lb4_affinity_entry, last_used_ns);
	SIZE(lb_fib_memo);
	SIZE(lb_config);
	OFF(lb_config, node_addr);
	OFF(lb_config, node_mac);
	OFF(lb_config, snat_port_min);
	OFF(lb_config, snat_port_max);
	OFF(lb_config, maglev_table_size);
	OFF(lb_config, hash_seed);
	OFF(lb_config, fib_memo_jiffies);
	OFF(lb_config, ct_tick_shift);
	OFF(lb_config, ct_timeout);
	CONST(LB_CT_TIMEOUTS);
	CONST(CILIA_LB_SERVICES_MAX);
	CONST(CILIA_LB_BACKENDS_MAX);
	CONST(CILIA_LB_REVNAT_MAX);
	CONST(CILIA_LB_MAGLEV_MAX);
	CONST(CILIA_LB_MAGLEV_TABLE_DEFAULT);
	CONST(CILIA_LB_CT_MAX);
	CONST(CILIA_LB_NAT_MAX);
	CONST(CILIA_LB_DSR_MAX);
	CONST(CILIA_LB_COUNTERS_MAX);
	CONST(CILIA_LB_FRAG_MAX);
	CONST(CILIA_LB_FIB_MEMO_SLOTS);
	CONST(CILIA_LB_AFFINITY_MAX);
	CONST(LB_SCOPE_EXT);
	CONST(LB_SCOPE_INT);
	CONST(LB_MODE_SNAT);
	CONST(LB_MODE_DSR);
	CONST(LB_MODE_HYBRID);
	CONST(LB_ALG_RANDOM);
	CONST(LB_ALG_MAGLEV);
	CONST(LB_SVC_F_ETP_LOCAL);
	CONST(LB_SVC_F_AFFINITY);
	CONST(LB_SVC_F_REJECT);
	CONST(LB_BE_F_LOCAL);
	CONST(LB_BE_F_HOST_NETWORK);
	CONST(LB_BE_F_DRAINING);
	CONST(LB_FWD_SNAT);
	CONST(LB_FWD_DSR);
	CONST(LB_FWD_LOCAL);
	CONST(LB_DSR_OPT_TYPE);
	CONST(LB_DSR_OPT_LEN);
	CONST(LB_C_MAX);
	SIZE(l2_responder_key);
	OFF(l2_responder_key, ip4);
	OFF(l2_responder_key, ifindex);
	SIZE(l2_responder_entry);
	OFF(l2_responder_entry, mac);
	OFF(l2_responder_entry, responses_sent);
	OFF(l2_responder_entry, lapsed);
	SIZE(l2_lease);
	OFF(l2_lease, expires_ns);
	CONST(CILIA_L2_RESPONDER_MAX);

	/* Masquerading (masq_maps.h). */
	SIZE(masq4_tuple);
	OFF(masq4_tuple, saddr);
	OFF(masq4_tuple, daddr);
	OFF(masq4_tuple, sport);
	OFF(masq4_tuple, dport);
	OFF(masq4_tuple, proto);
	OFF(masq4_tuple, dir);
	SIZE(masq4_nat_entry);
	OFF(masq4_nat_entry, to_addr);
	OFF(masq4_nat_entry, to_port);
	OFF(masq4_nat_entry, flags);
	OFF(masq4_nat_entry, created_ns);
	OFF(masq4_nat_entry, seen_ns);
	SIZE(masq4_frag_key);
	OFF(masq4_frag_key, saddr);
	OFF(masq4_frag_key, daddr);
	OFF(masq4_frag_key, id);
	OFF(masq4_frag_key, proto);
	SIZE(ipmasq4_key);
	OFF(ipmasq4_key, prefixlen);
	OFF(ipmasq4_key, addr);
	SIZE(masq_config);
	OFF(masq_config, node_addr);
	OFF(masq_config, pod_net);
	OFF(masq_config, pod_mask);
	OFF(masq_config, hash_seed);
	OFF(masq_config, port_min);
	OFF(masq_config, port_max);
	OFF(masq_config, flags);
	CONST(CILIA_MASQ_NAT_MAX);
	CONST(CILIA_IPMASQ_MAX);
	CONST(CILIA_MASQ_CLUSTER_MAX);
	CONST(CILIA_MASQ_FRAG_MAX);
	CONST(MASQ_PORT_RETRIES);
	CONST(MASQ_DIR_OUT);
	CONST(MASQ_DIR_IN);
	CONST(MASQ_F_ENABLED);
	CONST(MASQ_F_DRAIN);
	CONST(MASQ_NAT_F_CLOSING);
	CONST(MASQ_C_MAX);
	SIZE(ipcache_key);
	OFF(ipcache_key, addr);
	SIZE(ipcache_value);
	SIZE(policy_key);
	OFF(policy_key, d);
	SIZE(policy_key_data);
	OFF(policy_key_data, ep_id);
	OFF(policy_key_data, dir);
	OFF(policy_key_data, identity);
	OFF(policy_key_data, proto);
	OFF(policy_key_data, dport);
	SIZE(policy_value);
	OFF(policy_value, rule);
	OFF(policy_value, verdict);
	SIZE(policy_ep_config);
	OFF(policy_ep_config, ingress_enforced);
	OFF(policy_ep_config, egress_enforced);
	OFF(policy_ep_config, audit);
	SIZE(policy_ct_key);
	OFF(policy_ct_key, ep_id);
	OFF(policy_ct_key, proto);
	SIZE(policy_event);
	OFF(policy_event, ep_id);
	OFF(policy_event, saddr);
	OFF(policy_event, daddr);
	OFF(policy_event, identity);
	OFF(policy_event, rule);
	OFF(policy_event, sport);
	OFF(policy_event, dport);
	OFF(policy_event, proto);
	OFF(policy_event, dir);
	OFF(policy_event, verdict);
	CONST(POLICY_KEY_FIXED_BITS);
	CONST(POLICY_ALLOW);
	CONST(POLICY_DENY);
	CONST(POLICY_VERDICT_DROP_DEFAULT);
	CONST(POLICY_VERDICT_AUDIT);
	CONST(CILIA_POLICY_MAX);
	CONST(CILIA_IPCACHE_MAX);

	return 0;
}
