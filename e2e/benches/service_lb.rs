//! Service load balancing: ns per packet of the XDP load balancer (SNAT hit, DSR hit, miss) at 10,
//! 1,000 and 100,000 services, next to an empty XDP program (the floor) and Katran's balancer built
//! from shared/anchors/katran, all on the same 64-byte frames in the same run; and the first-packet
//! cost of kube-proxy-shaped iptables rules at 10 and 10,000 services.
//!
//! Method (shared/anchors/katran/README.md): BPF_PROG_TEST_RUN with `repeat` reruns a program on the
//! same buffer, so a rewriting program would time its own output. Every case therefore runs through
//! `cil_bench_restore` (ebpf/bench_xdp.c), which puts the original frame back and tail-calls the
//! program under test; the floor is the same wrapper tail-calling `cil_bench_empty`, and every cost is
//! reported minus that floor. Counters confirm every run took the path it is named after.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use aya::maps::{Array, ArrayOfMaps, HashMap, MapData, ProgramArray};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader, Pod};
use cilia_datapath::lb::{assign_backend_ids, desired_entries, lb_diff};
use cilia_datapath::lb_bpf::{BENCH_XDP_OBJ, LbDatapath, LbMapSizes, XDP_LB_PROG};
use cilia_datapath::lb_fixtures::{
    MAGLEV, TestNet, VIP_DSR, bench_frames, in_test_net, node_config, scaled_world, seed_node_dev,
    xdp_ctx,
};
use cilia_datapath::lb_maps::{LbConfig, LbCounter};
use cilia_datapath::testrun::test_run;
use cilia_e2e::bench::{Measure, Report, median, percentile};
use cilia_e2e::netns::NetNs;

/// Program runs per sample: short enough (a few ms) that every case of a round sees the same
/// machine (this VM's speed drifts by tens of percent over seconds), long enough to amortise the
/// syscall.
const REPEAT: u32 = 20_000;
/// Rounds; each times every case once, in a fresh order, right after its own floor.
const ROUNDS: usize = 150;
/// Program runs per timed case: warm-up plus ROUNDS x REPEAT.
const RUNS_PER_CASE: u64 = 10_000 + ROUNDS as u64 * REPEAT as u64;
const SCALES: [usize; 3] = [10, 1_000, 100_000];
const FRAME_LEN: usize = 64;
/// Katran's RING_SIZE (balancer_consts.h).
const KATRAN_RING_SIZE: u32 = 65537;
const KATRAN_LRU_SIZE: u32 = 1000;
const XDP_TX: u32 = 3;
const XDP_PASS: u32 = 2;

type Err = Box<dyn std::error::Error>;

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "service_lb: SKIP: needs root (BPF_PROG_TEST_RUN, bpffs pins, network namespaces)"
        );
        return;
    }
    // The harness passes --bench; nothing to parse.
    pin_to_cpu();
    let mut report = Report::default();
    let xdp = in_test_net(|net| xdp_bench(net).map_err(|e| e.to_string()))
        .expect("test namespace")
        .unwrap_or_else(|e| panic!("XDP benchmark: {e}"));
    for m in xdp.measures {
        report.push(m);
    }
    for n in xdp.notes {
        report.note(n);
    }
    match iptables_bench() {
        Ok((m, notes)) => {
            report.push(m);
            for n in notes {
                report.note(n);
            }
        }
        Err(e) => report.note(format!("iptables: SKIP: {e}")),
    }
    report.finish("service_lb").expect("writing the report");
}

/// Runs on one CPU so runs do not migrate mid-measurement.
fn pin_to_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = if cpus > 1 { 1 } else { 0 };
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A bpffs directory removed with everything pinned in it.
struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Wrapper {
    ebpf: Ebpf,
    ctx: Vec<u8>,
}

impl Wrapper {
    fn load(net: TestNet) -> Result<Self, Err> {
        let mut ebpf = EbpfLoader::new().load(BENCH_XDP_OBJ)?;
        for name in ["cil_bench_empty", "cil_bench_restore"] {
            let p: &mut Xdp = ebpf.program_mut(name).ok_or(name)?.try_into()?;
            p.load()?;
        }
        Ok(Wrapper {
            ebpf,
            ctx: xdp_ctx(FRAME_LEN, net.lb0),
        })
    }

    fn fd(&self, name: &str) -> Result<RawFd, Err> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or("program")?
            .fd()?
            .as_fd()
            .as_raw_fd())
    }

    /// Makes the wrapper restore `frame` and tail-call `target`.
    fn aim(&mut self, frame: &[u8], target: &aya::programs::ProgramFd) -> Result<(), Err> {
        let mut f = [0u8; FRAME_LEN];
        f.copy_from_slice(frame);
        let mut a: Array<&mut MapData, [u8; FRAME_LEN]> =
            Array::try_from(self.ebpf.map_mut("cilia_bench_frame").ok_or("frame map")?)?;
        a.set(0, f, 0)?;
        let mut t: ProgramArray<&mut MapData> = ProgramArray::try_from(
            self.ebpf
                .map_mut("cilia_bench_target")
                .ok_or("target map")?,
        )?;
        t.set(0, target, 0)?;
        Ok(())
    }

    fn empty_fd(&self) -> Result<aya::programs::ProgramFd, Err> {
        Ok(self
            .ebpf
            .program("cil_bench_empty")
            .ok_or("empty")?
            .fd()?
            .try_clone()?)
    }
}

fn sample(fd: RawFd, frame: &[u8], ctx: Option<&[u8]>, repeat: u32) -> Result<(f64, u32), Err> {
    let out = test_run(fd, frame, repeat, ctx)?;
    Ok((f64::from(out.duration_ns), out.retval))
}

struct XdpResults {
    measures: Vec<Measure>,
    notes: Vec<String>,
}

/// What one sample times.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Case {
    /// The wrapper tail-calling the empty program: subtracted from every other case.
    Floor,
    /// The empty program alone.
    Bare,
    /// Our load balancer at SCALES[.0] services on bench_frames()[.1].
    Ours(usize, usize),
    KatranHit,
    KatranMiss,
}

/// Samples per case (index = round) and the floor of each round.
struct Samples {
    raw: BTreeMap<Case, Vec<f64>>,
}

impl Samples {
    /// Median over rounds of the case minus its round's floor.
    fn net(&self, c: Case) -> f64 {
        let f = &self.raw[&Case::Floor];
        let v: Vec<f64> = self.raw[&c].iter().zip(f).map(|(x, f)| x - f).collect();
        median(&v)
    }

    /// Median over rounds of the quotient of two cases' net costs in the same round.
    fn paired_ratio(&self, a: Case, b: Case) -> f64 {
        let f = &self.raw[&Case::Floor];
        let v: Vec<f64> = (0..f.len())
            .map(|r| (self.raw[&a][r] - f[r]) / (self.raw[&b][r] - f[r]))
            .collect();
        median(&v)
    }

    fn spread(&self, c: Case) -> (f64, f64) {
        let f = &self.raw[&Case::Floor];
        let v: Vec<f64> = self.raw[&c].iter().zip(f).map(|(x, f)| x - f).collect();
        (percentile(&v, 10.0), percentile(&v, 90.0))
    }
}

fn xdp_bench(net: TestNet) -> Result<XdpResults, Err> {
    let mut notes = Vec::new();
    let mut wrap = Wrapper::load(net)?;
    let frames = bench_frames();
    let empty = wrap.empty_fd()?;
    let mut lbs = Vec::new();
    for n in SCALES {
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/cilia/bench-{}-{n}",
            std::process::id()
        )));
        let dp = seeded(&pins.0, n, net.lb0)?;
        lbs.push((n, pins, dp));
    }
    // Katran, built now from the shared anchor, with one TCP VIP on the DSR frontend's address.
    let katran = match Katran::load(&frames[1].1) {
        Ok(k) => Some(k),
        Err(e) => {
            notes.push(format!("katran: SKIP: {e}"));
            None
        }
    };
    let counter_of = |f: usize| match frames[f].0 {
        "hit_snat" => LbCounter::FwdSnat,
        "hit_dsr" => LbCounter::FwdDsr,
        _ => LbCounter::Miss,
    };
    let mut cases = vec![Case::Floor, Case::Bare];
    for i in 0..lbs.len() {
        for f in 0..frames.len() {
            cases.push(Case::Ours(i, f));
        }
    }
    if katran.is_some() {
        cases.extend([Case::KatranHit, Case::KatranMiss]);
    }
    let katran_before = match &katran {
        Some(k) => k.vip_packets()?,
        None => 0,
    };
    let mut before = BTreeMap::new();
    for (i, (_, _, dp)) in lbs.iter().enumerate() {
        for f in 0..frames.len() {
            before.insert((i, f), dp.counter(counter_of(f))?);
        }
    }

    // Aims the wrapper at a case; returns its frame and the verdict every run must give.
    let aim = |wrap: &mut Wrapper, c: Case| -> Result<(usize, u32), Err> {
        let (f, target, want) = match c {
            Case::Floor | Case::Bare => (0, empty.try_clone()?, XDP_PASS),
            Case::Ours(i, f) => {
                let prog = lbs[i].2.program_fd(XDP_LB_PROG).ok_or("xdp prog")?;
                let want = if frames[f].0 == "miss" {
                    XDP_PASS
                } else {
                    XDP_TX
                };
                (f, prog.try_clone()?, want)
            }
            Case::KatranHit => (
                1,
                katran.as_ref().ok_or("katran")?.prog.try_clone()?,
                XDP_TX,
            ),
            Case::KatranMiss => (
                2,
                katran.as_ref().ok_or("katran")?.prog.try_clone()?,
                XDP_PASS,
            ),
        };
        wrap.aim(&frames[f].1, &target)?;
        Ok((f, want))
    };
    let run = |wrap: &Wrapper, c: Case, f: usize, repeat: u32| -> Result<(f64, u32), Err> {
        match c {
            Case::Bare => sample(
                wrap.fd("cil_bench_empty")?,
                &frames[f].1,
                Some(&wrap.ctx),
                repeat,
            ),
            _ => sample(
                wrap.fd("cil_bench_restore")?,
                &frames[f].1,
                Some(&wrap.ctx),
                repeat,
            ),
        }
    };
    // Warm-up: caches, the conntrack entries of the hit frames, Katran's connection table.
    for &c in &cases {
        let (f, _) = aim(&mut wrap, c)?;
        run(&wrap, c, f, 10_000)?;
    }
    // Each round times every case once, in an order that moves from round to round, so slow drift
    // of the machine hits all cases alike and every comparison is between neighbours in time.
    let mut raw: BTreeMap<Case, Vec<f64>> = cases.iter().map(|&c| (c, Vec::new())).collect();
    for r in 0..ROUNDS {
        let k = cases.len();
        for j in 0..k {
            let c = cases[(j * 7 + r) % k];
            let (f, want) = aim(&mut wrap, c)?;
            let (t, verdict) = run(&wrap, c, f, REPEAT)?;
            if verdict != want {
                return Err(format!("{c:?}: verdict {verdict} (expected {want})").into());
            }
            raw.get_mut(&c).ok_or("case")?.push(t);
        }
    }
    // Every timed and warm-up run took the path it is named after.
    for (i, (n, _, dp)) in lbs.iter().enumerate() {
        for f in 0..frames.len() {
            let seen = dp.counter(counter_of(f))? - before[&(i, f)];
            if seen != RUNS_PER_CASE {
                return Err(format!(
                    "{} at {n} services: {seen} of {RUNS_PER_CASE} runs on the {:?} path",
                    frames[f].0,
                    counter_of(f)
                )
                .into());
            }
        }
        notes.push(format!(
            "{n} services: every run took its path (counters), hit verdict XDP_TX, miss XDP_PASS"
        ));
    }
    if let Some(k) = &katran {
        let seen = k.vip_packets()? - katran_before;
        if seen != RUNS_PER_CASE {
            return Err(
                format!("katran: {seen} of {RUNS_PER_CASE} hit runs counted on the VIP").into(),
            );
        }
        notes.push(
            "katran: one run checked to be IPIP to the real + XDP_TX; every timed hit run counted on its VIP"
                .to_string(),
        );
    }
    let s = Samples { raw };
    let ours = |n: usize, name: &str| -> Case {
        let i = SCALES.iter().position(|&x| x == n).expect("scale");
        let f = frames.iter().position(|(x, _)| *x == name).expect("frame");
        Case::Ours(i, f)
    };
    let get = |n, name| s.net(ours(n, name));
    let floor = median(&s.raw[&Case::Floor]);
    let bare = median(&s.raw[&Case::Bare]);
    let (katran_hit, katran_miss) = if katran.is_some() {
        (s.net(Case::KatranHit), s.net(Case::KatranMiss))
    } else {
        (f64::NAN, f64::NAN)
    };

    let mut m = vec![
        Measure::new("xdp_hit_snat_ns", get(10, "hit_snat"), "ns", katran_hit),
        Measure::new("xdp_hit_dsr_ns", get(10, "hit_dsr"), "ns", katran_hit),
        Measure::new("xdp_miss_ns", get(10, "miss"), "ns", katran_miss),
        Measure::new("empty_prog_ns", floor, "ns", bare),
        Measure::new("katran_hit_ns", katran_hit, "ns", floor),
        Measure::new(
            "xdp_hit_dsr_vs_katran_ratio",
            get(10, "hit_dsr"),
            "ns",
            katran_hit,
        ),
        Measure::new(
            "lookup_100k_vs_10_ratio",
            get(100_000, "hit_dsr"),
            "ns",
            get(10, "hit_dsr"),
        ),
        Measure::new(
            "lookup_100k_vs_10_snat_ratio",
            get(100_000, "hit_snat"),
            "ns",
            get(10, "hit_snat"),
        ),
        Measure::new("katran_miss_ns", katran_miss, "ns", floor),
    ];
    for n in [1_000, 100_000] {
        for name in ["hit_snat", "hit_dsr", "miss"] {
            m.push(Measure::new(
                &format!("xdp_{name}_{}_ns", if n == 1_000 { "1k" } else { "100k" }),
                get(n, name),
                "ns",
                get(10, name),
            ));
        }
    }
    let mut spread = Vec::new();
    for n in SCALES {
        for name in ["hit_snat", "hit_dsr", "miss"] {
            let (lo, hi) = s.spread(ours(n, name));
            spread.push(format!("{name}@{n} {lo:.0}-{hi:.0}"));
        }
    }
    if katran.is_some() {
        let (lo, hi) = s.spread(Case::KatranHit);
        spread.push(format!("katran hit {lo:.0}-{hi:.0}"));
        notes.push(format!(
            "paired per-round ratios (median): dsr/katran {:.3}, snat/katran {:.3}, dsr 100k/10 {:.3}",
            s.paired_ratio(ours(10, "hit_dsr"), Case::KatranHit),
            s.paired_ratio(ours(10, "hit_snat"), Case::KatranHit),
            s.paired_ratio(ours(100_000, "hit_dsr"), ours(10, "hit_dsr")),
        ));
    }
    notes.push(format!("p10-p90 over rounds, ns: {}", spread.join(", ")));
    notes.push(format!(
        "ns/packet = median over {ROUNDS} rounds of (one run of {REPEAT} repeats through the frame-restoring wrapper, minus the same round's floor); each round times every case once, in a rotating order (wrapper + empty = {floor:.1} ns; bare empty program {bare:.1} ns); *_ns baselines: Katran (hits, miss) or the floor"
    ));
    notes.push(
        "*_ratio measures: value = numerator, baseline = denominator, ratio = their quotient (all same run)"
            .to_string(),
    );
    Ok(XdpResults { measures: m, notes })
}

/// Loads and seeds the load balancer with `n` services.
fn seeded(pin: &Path, n: usize, node_ifindex: u32) -> Result<LbDatapath, Err> {
    let services = scaled_world(n);
    let sizes = LbMapSizes {
        services: (2 * n as u32 + 1024).next_power_of_two(),
        rev_nat: (n as u32 + 1024).next_power_of_two(),
        ..LbMapSizes::small()
    };
    let mut dp = LbDatapath::load(pin, &sizes)?;
    // As the agent writes it: the node device's MAC in the config (XDP checks it there).
    dp.set_config(&LbConfig {
        node_ifindex,
        ..node_config()
    })?;
    seed_node_dev(&mut dp)?;
    let ids = assign_backend_ids(&services, &BTreeMap::new());
    let want = desired_entries(&services, &ids, MAGLEV)?;
    dp.apply(&lb_diff(&want, &Default::default()), MAGLEV)?;
    Ok(dp)
}

// Katran's map layouts (katran/lib/bpf/balancer_structs.h), for seeding only.
#[repr(C)]
#[derive(Clone, Copy)]
struct KatVip {
    addr: [u32; 4],
    port: u16,
    proto: u8,
    pad: u8,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct KatVipMeta {
    flags: u32,
    vip_num: u32,
}
#[repr(C)]
#[derive(Clone, Copy)]
struct KatReal {
    addr: [u32; 4],
    flags: u8,
    pad: [u8; 3],
}
// SAFETY: plain data with explicit padding.
unsafe impl Pod for KatVip {}
unsafe impl Pod for KatVipMeta {}
unsafe impl Pod for KatReal {}
/// sizeof(struct flow_key) and sizeof(struct real_pos_lru).
const KAT_FLOW_KEY: u32 = 40;
const KAT_REAL_POS_LRU: u32 = 16;

/// Builds Katran's balancer exactly as its README says, into a temporary directory.
fn build_katran() -> Result<(PathBuf, tempdir::Dir), Err> {
    let anchor = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/katran");
    let anchor = if anchor.exists() {
        anchor
    } else {
        PathBuf::from("/work/shared/anchors/katran")
    };
    let dir = tempdir::Dir::new("cilia-katran")?;
    std::fs::create_dir_all(dir.0.join("stub/gnu"))?;
    std::fs::write(dir.0.join("stub/gnu/stubs-32.h"), "")?;
    let obj = dir.0.join("balancer.bpf.o");
    let out = Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-I."])
        .arg(format!("-I{}", dir.0.join("stub").display()))
        .arg(format!(
            "-I/usr/include/{}-linux-gnu",
            std::env::consts::ARCH
        ))
        .args(["-c", "katran/lib/bpf/balancer.bpf.c", "-o"])
        .arg(&obj)
        .current_dir(&anchor)
        .output()?;
    if !out.status.success() {
        return Err(format!("clang: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok((obj, dir))
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// BPF_MAP_CREATE of an LRU hash (aya creates no standalone LRU maps).
fn lru_map(key: u32, value: u32, entries: u32) -> Result<MapData, Err> {
    let mut attr = [0u32; 32];
    attr[0] = 9; // BPF_MAP_TYPE_LRU_HASH
    attr[1] = key;
    attr[2] = value;
    attr[3] = entries;
    // SAFETY: attr is a zeroed bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the syscall returned a new fd we own.
    Ok(MapData::from_fd(unsafe {
        OwnedFd::from_raw_fd(fd as i32)
    })?)
}

fn possible_cpus() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| s.trim().rsplit(['-', ',']).next()?.parse::<u32>().ok())
        .map_or(1, |m| m + 1)
}

/// Katran's balancer, loaded from the object built at bench time, seeded with one TCP VIP.
struct Katran {
    ebpf: Ebpf,
    prog: aya::programs::ProgramFd,
    _dir: tempdir::Dir,
}

impl Katran {
    /// Builds, loads and seeds Katran; checks one run of `hit` (a TCP frame to VIP_DSR:80) is
    /// encapsulated (IPIP, +20 bytes) and transmitted.
    fn load(hit: &[u8]) -> Result<Self, Err> {
        let (obj, dir) = build_katran()?;
        let mut k = EbpfLoader::new().load_file(&obj)?;
        {
            let p: &mut Xdp = k
                .program_mut("balancer_ingress")
                .ok_or("balancer_ingress")?
                .try_into()?;
            p.load()?;
        }
        let real = KatReal {
            addr: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            flags: 0,
            pad: [0; 3],
        };
        // Real #1 (index 0 means "none" to Katran).
        Array::<&mut MapData, KatReal>::try_from(k.map_mut("reals").ok_or("reals")?)?
            .set(1, real, 0)?;
        let vip = KatVip {
            addr: [u32::from_ne_bytes(VIP_DSR.octets()), 0, 0, 0],
            port: 80u16.to_be(),
            proto: 6,
            pad: 0,
        };
        HashMap::<&mut MapData, KatVip, KatVipMeta>::try_from(
            k.map_mut("vip_map").ok_or("vip_map")?,
        )?
        .insert(
            vip,
            KatVipMeta {
                flags: 0,
                vip_num: 0,
            },
            0,
        )?;
        {
            let mut ring: Array<&mut MapData, u32> =
                Array::try_from(k.map_mut("ch_rings").ok_or("ch_rings")?)?;
            for i in 0..KATRAN_RING_SIZE {
                ring.set(i, 1, 0)?;
            }
        }
        let mac: u64 = u64::from_ne_bytes([0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0]);
        Array::<&mut MapData, u64>::try_from(k.map_mut("ctl_array").ok_or("ctl_array")?)?
            .set(0, mac, 0)?;
        {
            // Per-CPU connection tables, as Katran's userspace sets them up.
            let mut lru: ArrayOfMaps<&mut MapData, MapData> =
                ArrayOfMaps::try_from(k.map_mut("lru_mapping").ok_or("lru_mapping")?)?;
            for cpu in 0..possible_cpus() {
                let m = lru_map(KAT_FLOW_KEY, KAT_REAL_POS_LRU, KATRAN_LRU_SIZE)?;
                lru.set(cpu, &m, 0)?;
            }
        }
        let prog = k
            .program("balancer_ingress")
            .ok_or("prog")?
            .fd()?
            .try_clone()?;
        let out = test_run(prog.as_fd().as_raw_fd(), hit, 1, None)?;
        if out.retval != XDP_TX || out.data.len() != hit.len() + 20 || out.data[14 + 9] != 4 {
            return Err(format!(
                "katran hit: verdict {} len {} (expected XDP_TX, IPIP, {} bytes)",
                out.retval,
                out.data.len(),
                hit.len() + 20
            )
            .into());
        }
        Ok(Katran {
            ebpf: k,
            prog,
            _dir: dir,
        })
    }

    /// Packets Katran counted on VIP #0 (`stats`, per CPU).
    fn vip_packets(&self) -> Result<u64, Err> {
        let s: aya::maps::PerCpuArray<&MapData, [u64; 2]> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map("stats").ok_or("stats")?)?;
        Ok(s.get(&0, 0)?.iter().map(|v| v[0]).sum())
    }
}

/// kube-proxy-shaped `nat` rules for `n` ClusterIP services (KUBE-SERVICES → KUBE-SVC → KUBE-SEP),
/// the one we connect to last, so a new connection walks every other service's match first.
fn kube_proxy_rules(n: usize, target: Ipv4Addr, endpoint: SocketAddrV4) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
    );
    for i in 0..n {
        let last = i + 1 == n;
        let vip = if last {
            target
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 1)) + i as u32)
        };
        let ep = if last {
            endpoint
        } else {
            SocketAddrV4::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 1)) + i as u32),
                8080,
            )
        };
        let (svc, sep) = (format!("KUBE-SVC-{i:016X}"), format!("KUBE-SEP-{i:016X}"));
        let name = format!("default/svc-{i}:http");
        chains.push_str(&format!(":{svc} - [0:0]\n:{sep} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j {svc}\n\
             -A {svc} ! -s 10.244.0.0/16 -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n\
             -A {svc} -m comment --comment \"{name} -> {ep}\" -j {sep}\n\
             -A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}\n",
            ep.ip()
        ));
    }
    chains + &rules + "COMMIT\n"
}

const CONNS_PER_BATCH: usize = 400;
const BATCHES: usize = 5;

/// µs per new TCP connection to the last of `n` services, median of batches.
fn first_packet_us(ns: &NetNs, n: usize) -> Result<(f64, f64), Err> {
    let target = Ipv4Addr::new(10, 96, 0, 10);
    let endpoint = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 8080);
    let rules = kube_proxy_rules(n, target, endpoint);
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iptables-restore"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("iptables-restore: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let install = t0.elapsed().as_secs_f64();
    let batches = ns.run(move || -> Result<Vec<f64>, String> {
        let l = TcpListener::bind(endpoint).map_err(|e| e.to_string())?;
        let vip = SocketAddrV4::new(target, 80);
        // Warm-up: the path works and caches are hot.
        for _ in 0..50 {
            let c = TcpStream::connect(vip).map_err(|e| format!("connect {vip}: {e}"))?;
            drop(l.accept().map_err(|e| e.to_string())?);
            drop(c);
        }
        let mut v = Vec::new();
        for _ in 0..BATCHES {
            let t = Instant::now();
            for _ in 0..CONNS_PER_BATCH {
                let c = TcpStream::connect(vip).map_err(|e| e.to_string())?;
                drop(l.accept().map_err(|e| e.to_string())?);
                drop(c);
            }
            v.push(t.elapsed().as_secs_f64() * 1e6 / CONNS_PER_BATCH as f64);
        }
        Ok(v)
    })??;
    // Flush before the next size.
    ns.exec(&["iptables", "-t", "nat", "-F"])?;
    ns.exec(&["iptables", "-t", "nat", "-X"])?;
    Ok((median(&batches), install))
}

fn iptables_bench() -> Result<(Measure, Vec<String>), Err> {
    let ns = NetNs::create(&format!("cilia-bench-{}", std::process::id()))?;
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    ns.ip(&["link", "set", "v0", "up"])?;
    ns.ip(&["link", "set", "v1", "up"])?;
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "v0"])?;
    ns.ip(&["route", "add", "10.96.0.0/12", "dev", "v0"])?;
    let (small, i_small) = first_packet_us(&ns, 10)?;
    let (big, i_big) = first_packet_us(&ns, 10_000)?;
    let notes = vec![format!(
        "iptables (kube-proxy shape, 5 rules/service, target last): {small:.1} µs/connection at 10 services, {big:.1} at 10,000 (install {i_small:.2} s / {i_big:.2} s); median of {BATCHES} batches x {CONNS_PER_BATCH} connect+accept in netns {}",
        ns.name
    )];
    Ok((
        Measure::new("iptables_first_packet_10k_vs_10_ratio", big, "us", small),
        notes,
    ))
}
