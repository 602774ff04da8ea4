//! LB-IPAM (in progress).
