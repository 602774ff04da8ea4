//! The endpoint accounting programs, run on real frames through BPF_PROG_TEST_RUN, with maps pinned
//! in bpffs like the agent does.

use std::os::fd::{AsFd, AsRawFd};

use aya::EbpfLoader;
use aya::programs::SchedClassifier;
use cilia_datapath::bpf::{TC_ENDPOINT_OBJ, read_ep_stats};
use cilia_datapath::testrun::test_run;

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1

/// A 64-byte Ethernet/IPv4/UDP frame.
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12] = 0x08; // ethertype IPv4
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 244, 1, 5]);
    f[30..34].copy_from_slice(&[10, 244, 2, 7]);
    f
}

mod common;
use common::{PinDir, can_load_bpf};

// Every packet in either direction is counted for the endpoint and passed on untouched.
#[test]
fn counts_packets_both_ways_and_never_drops() {
    if !can_load_bpf() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let dir = PinDir::new("ep", "prog");
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir.0)
        .load(TC_ENDPOINT_OBJ)
        .unwrap();
    let f = frame();
    for (name, runs) in [("cil_from_container", 3u32), ("cil_to_container", 2)] {
        let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        prog.load().unwrap();
        let fd = prog.fd().unwrap().as_fd().as_raw_fd();
        for _ in 0..runs {
            let out = test_run(fd, &f, 1, None).unwrap();
            assert_eq!(
                out.retval, TC_ACT_UNSPEC,
                "{name}: verdict got {} expected TC_ACT_UNSPEC",
                out.retval as i32
            );
            assert_eq!(out.data, f, "{name}: the frame must not be rewritten");
        }
    }
    assert!(dir.0.join("cilia_ep_stats").exists(), "map pinned by name");
    let stats = read_ep_stats(&dir.0).unwrap();
    // Without a context the test run's skb sits on loopback (ifindex 1).
    assert_eq!(stats.len(), 1, "{stats:?}");
    let (ifindex, s) = stats[0];
    assert_eq!(ifindex, 1);
    assert_eq!((s.rx_packets, s.rx_bytes), (3, 3 * 64));
    assert_eq!((s.tx_packets, s.tx_bytes), (2, 2 * 64));

    // A second loader (an agent restart) reuses the pinned map and its counters.
    drop(ebpf);
    let mut again = EbpfLoader::new()
        .default_map_pin_directory(&dir.0)
        .load(TC_ENDPOINT_OBJ)
        .unwrap();
    let prog: &mut SchedClassifier = again
        .program_mut("cil_from_container")
        .unwrap()
        .try_into()
        .unwrap();
    prog.load().unwrap();
    test_run(prog.fd().unwrap().as_fd().as_raw_fd(), &f, 1, None).unwrap();
    assert_eq!(read_ep_stats(&dir.0).unwrap()[0].1.rx_packets, 4);
}
