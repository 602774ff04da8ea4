//! L2 announcements: ARP replies per second the announcer sustains. A node namespace runs the
//! responder (`ebpf/tc_l2.c`) for one VIP on its LAN port; a client namespace on the same bridge
//! sends ARP requests for the VIP as fast as one AF_PACKET socket can for a fixed time and counts
//! the replies that come back. The baseline is the request rate offered in the same run, so the
//! ratio says which fraction was answered.
//!
//! `failover_p50_ms` / `failover_p99_ms`: the lab (operator, agents, the seed pool, Service and L2
//! policy, Cilium's lease timings as Cilia reads them: 400 ms lease, 300 ms renew deadline, 100 ms
//! retry period) goes through 20 failovers by `kill -9` of the announcing agent and 20 by taking
//! the announcing node's eth0 carrier away, each followed by a restore and a settle. The measure is
//! the interruption a client request loop sees (a new TCP connection to the VIP every 10 ms, 100 ms
//! timeout: the longest time between two successful connections). Also reported: the same per
//! cause, and the handover on the wire (the new announcer's first ARP frame after the cause, from
//! a capture on the LAN bridge). The baseline of these is the 1 s target, not a measurement.

use std::collections::BTreeMap;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cilia_agent::announcer::Announcer;
use cilia_datapath::l2::link_states;
use cilia_e2e::bench::{Measure, Report, median, percentile};
use cilia_e2e::l2lab::{L2World, interleaved};
use cilia_e2e::lab::{repo_root, wait_until};
use cilia_e2e::netns::NetNs;
use cilia_model::l2::L2Announcement;
use cilia_model::service::ServiceName;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 50);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
const SECONDS: f64 = 2.0;

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("l2_announce: SKIP: needs root (network namespaces, eBPF)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let tag = format!("{:x}", std::process::id());
    let lan = NetNs::create(&format!("cl2b-{tag}-lan")).expect("lan ns");
    let node = NetNs::create(&format!("cl2b-{tag}-node")).expect("node ns");
    let client = NetNs::create(&format!("cl2b-{tag}-cl")).expect("client ns");
    let pin = PathBuf::from(format!("/sys/fs/bpf/cilia/bench-l2-{tag}"));
    let _pins = Pins(pin.clone());
    lan.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    lan.ip(&["link", "set", "br0", "up"]).unwrap();
    for (ns, ip) in [(&node, "10.78.0.2/24"), (&client, "10.78.0.100/24")] {
        let port = format!("p{}", &ns.name[ns.name.len() - 4..]);
        lan.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])
        .unwrap();
        lan.ip(&["link", "set", &port, "master", "br0", "up"])
            .unwrap();
        ns.ip(&["addr", "add", ip, "dev", "eth0"]).unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    }

    // The node announces the VIP on eth0.
    let announced = node
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let links = rt.block_on(link_states()).unwrap();
            let mut a = Announcer::load(&pin).unwrap();
            let want: BTreeMap<_, _> = [(
                VIP,
                L2Announcement {
                    vip: VIP,
                    service: ServiceName::new("default", "bench"),
                    interfaces: ["eth0".to_string()].into(),
                    standby: false,
                },
            )]
            .into();
            a.apply(&want, &links).unwrap();
            // The responder answers only under a running lease (normally renewed on every word
            // from the operator): one long enough for the blast.
            a.renew(cilia_datapath::l2::monotonic_now_ns() + 600 * 1_000_000_000)
                .unwrap();
            a
        })
        .expect("announcer in the node namespace");

    let (sent, received) = client.run(blast).expect("client run").expect("blast");
    let offered = sent as f64 / SECONDS;
    let answered = received as f64 / SECONDS;
    drop(announced);
    println!("offered {offered:.0} ARP requests/s, {answered:.0} replies/s");

    let mut report = Report::default();
    report.push(Measure::new(
        "arp_replies_per_s",
        answered,
        "replies/s",
        offered,
    ));
    report.note(
        "baseline: ARP requests/s the client offered in the same run (ratio = share answered)",
    );
    match lab_bins() {
        Some(dir) => {
            // SAFETY: set before the lab starts any thread that reads the environment.
            unsafe { std::env::set_var("CILIA_BIN_DIR", &dir) };
            if let Err(e) = failovers(&mut report) {
                panic!("l2_announce failover benchmark: {e:#}");
            }
        }
        None => report.note(
            "not measured: failover_p50_ms, failover_p99_ms (the lab binaries are not built: run `make build` first)",
        ),
    }
    report.finish("l2_announce").expect("write the report");
}

/// Failovers per cause.
const FAILOVERS: usize = 20;
/// The target for the interruption's p99.
const TARGET_MS: f64 = 1000.0;

/// The lab binaries: `CILIA_BIN_DIR`, else the newer build of target/{release,debug} (a stale
/// release build must not stand in for the current code).
fn lab_bins() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CILIA_BIN_DIR") {
        return Some(PathBuf::from(d));
    }
    let bins = [
        "cilia-agent",
        "cilia-cni",
        "cilia-dbg",
        "cilia-operator",
        "cilia-apiserver",
    ];
    ["release", "debug"]
        .iter()
        .map(|p| repo_root().join("target").join(p))
        .filter(|d| bins.iter().all(|b| d.join(b).exists()))
        .max_by_key(|d| {
            std::fs::metadata(d.join("cilia-agent"))
                .and_then(|m| m.modified())
                .ok()
        })
}

fn failovers(report: &mut Report) -> anyhow::Result<()> {
    let mut w = L2World::up()?;
    let mut all = Vec::new();
    // Failovers in which the capture saw the old MAC answer after the new one did.
    let mut overlaps = 0;
    for (cause, label) in [("kill", "agent kill -9"), ("link", "eth0 carrier down")] {
        let mut gaps = Vec::new();
        let mut handovers = Vec::new();
        for i in 0..FAILOVERS {
            let name = format!("{cause}-{i}");
            let run = w.failover(&name, |w, holder| match cause {
                "kill" => w.lab.stop_agent(holder, libc::SIGKILL),
                _ => w.set_carrier(holder, false),
            })?;
            let ms = run.interruption.as_secs_f64() * 1000.0;
            println!(
                "{name}: {} -> {}: interruption {ms:.0} ms, new MAC first on the wire at {:?} ms",
                run.holder,
                run.heir,
                run.new_first_ms.map(|t| t.round())
            );
            if run.new_first_ms.is_none() {
                println!(
                    "{name}: no frame from {} after the cause in the capture (since {:.3}):\n{}",
                    run.heir,
                    run.since,
                    run.capture_tail(30)
                );
            }
            if let Some((a, b)) = interleaved(&run.seen, run.since) {
                overlaps += 1;
                println!("{name}: two MACs answered at once: {a:?} then {b:?}");
            }
            gaps.push(ms);
            if let Some(t) = run.new_first_ms {
                handovers.push(t);
            }
            // Restore, then wait for the restored agent to be in step and the choice to settle
            // (the VIP may move back), so the next failover starts from a quiet state.
            match cause {
                "kill" => w.lab.start_agent(&run.holder)?,
                _ => w.set_carrier(&run.holder, true)?,
            }
            wait_until(Duration::from_secs(60), || w.agent_in_step(&run.holder))
                .map_err(|_| anyhow::anyhow!("{name}: {} never caught up", run.holder))?;
            w.settled(3, Duration::from_secs(60))?;
        }
        report.push(Measure::new(
            &format!("failover_{cause}_p50_ms"),
            median(&gaps),
            "ms",
            TARGET_MS,
        ));
        report.push(Measure::new(
            &format!("failover_{cause}_p99_ms"),
            percentile(&gaps, 99.0),
            "ms",
            TARGET_MS,
        ));
        report.push(Measure::new(
            &format!("handover_{cause}_p99_ms"),
            percentile(&handovers, 99.0),
            "ms",
            TARGET_MS,
        ));
        report.note(format!(
            "failover_{cause}_*: {FAILOVERS} failovers by {label}; handover_{cause}_p99_ms: the new announcer's first ARP frame after the cause ({} of {FAILOVERS} seen)",
            handovers.len()
        ));
        all.extend(gaps);
    }
    report.push(Measure::new(
        "failover_p50_ms",
        median(&all),
        "ms",
        TARGET_MS,
    ));
    report.push(Measure::new(
        "failover_p99_ms",
        percentile(&all, 99.0),
        "ms",
        TARGET_MS,
    ));
    report.push(Measure::new(
        "failovers_with_two_answering_macs",
        overlaps as f64,
        "count",
        all.len() as f64,
    ));
    report.note(format!(
        "failover_p50_ms / failover_p99_ms: interruption seen by a client request loop (new TCP connection to the VIP every 10 ms, 100 ms timeout) over {} failovers ({FAILOVERS} by agent kill -9, {FAILOVERS} by eth0 carrier down); baseline: the 1 s target, not a measurement",
        all.len()
    ));
    Ok(())
}

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends ARP requests for the VIP on eth0 for `SECONDS` and counts the replies from it.
fn blast() -> std::io::Result<(u64, u64)> {
    // sysfs shows the namespace it was mounted in, not this thread's: ask the kernel.
    let ifindex = nix_ifindex("eth0").ok_or_else(|| std::io::Error::other("no eth0 here"))?;
    let mac = own_mac(ifindex)?;
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    addr.sll_ifindex = ifindex;
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut req = [0u8; 42];
    req[0..6].copy_from_slice(&[0xff; 6]);
    req[6..12].copy_from_slice(&mac);
    req[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    req[14..16].copy_from_slice(&1u16.to_be_bytes());
    req[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    req[18] = 6;
    req[19] = 4;
    req[20..22].copy_from_slice(&1u16.to_be_bytes());
    req[22..28].copy_from_slice(&mac);
    req[28..32].copy_from_slice(&CLIENT.octets());
    req[38..42].copy_from_slice(&VIP.octets());
    let (mut sent, mut received) = (0u64, 0u64);
    let mut buf = [0u8; 128];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(SECONDS);
    let count = |buf: &[u8], n: isize| -> bool {
        n >= 42 && buf[20..22] == [0, 2] && buf[28..32] == VIP.octets() && buf[0..6] == mac
    };
    while Instant::now() < end {
        for _ in 0..32 {
            let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
            if n > 0 {
                sent += 1;
            }
        }
        loop {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            if count(&buf, n) {
                received += 1;
            }
        }
    }
    // Late replies of the last requests.
    let drain_end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < drain_end {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 && count(&buf, n) {
            received += 1;
        } else if n <= 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    unsafe { libc::close(fd) };
    Ok((sent, received))
}

fn nix_ifindex(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i as i32)
}

/// The MAC of `ifindex` in the current namespace (SIOCGIFHWADDR).
fn own_mac(ifindex: i32) -> std::io::Result<[u8; 6]> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    unsafe { libc::if_indextoname(ifindex as u32, name.as_mut_ptr()) };
    ifr.ifr_name = name;
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut ifr) };
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sa = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}
