//! BPF masquerading: ns per packet of the SNAT path (an established pod → outside flow through
//! `cil_masq_egress`) next to an empty TC program (the floor), the same SNAT path with 100,000 live
//! NAT entries in the map, and the memory of that NAT table.
//!
//! Method: BPF_PROG_TEST_RUN with `repeat` reruns a program on the same skb, so a rewriting program
//! would time its own output (after one SNAT the source is no longer a pod). Every case therefore
//! runs through `cil_masq_bench_restore` (ebpf/tc_masq_bench.c), which writes the original frame back
//! and tail-calls the program under test; the floor is the same wrapper tail-calling
//! `cil_masq_bench_empty`, and every cost is reported minus that floor. Counters confirm every timed
//! run took the SNAT path of an existing flow.
//!
//! Toggles (in the lab, installed with the real Helm engine and the seed values):
//! `toggle_p50_ms` / `toggle_p99_ms` over 20 live switches by `helm upgrade --reuse-values --set
//! bpf.masquerade=false|true` (BPF <-> iptables), each timed from the start of helm upgrade to the
//! node running the new mode (status line and `CILIUM_POST_nat` as expected), against helm upgrade
//! alone; `toggle_failed_connections`: failed or unmasqueraded round trips of a pod -> outside loop
//! of new connections running through all 20 switches, plus failed round trips of one long-lived
//! connection kept open through them. Uses the workspace's built binaries (`make build`) and
//! `.venv` (`make deps`); without the binaries the toggle measures are reported as not measured.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, ProgramArray};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use cilia_datapath::lb_fixtures::skb_ctx;
use cilia_datapath::masq_bpf::{
    EGRESS_PROG, MasqDatapath, MasqMapSizes, NAT_MAP, TC_MASQ_BENCH_OBJ, nat_pair,
};
use cilia_datapath::masq_fixtures::{EXT, NODE_IP, bench_frame, world};
use cilia_datapath::masq_maps::MasqCounter;
use cilia_datapath::testrun::test_run;
use cilia_e2e::bench::{Measure, Report, median};

const REPEAT: u32 = 200_000;
const RUNS: usize = 5;
/// Interleaved rounds over every case.
const ROUNDS: usize = 5;
/// Program runs per timed case: warm-up plus RUNS x REPEAT.
const WARMUP: u32 = 10_000;
const RUNS_PER_CASE: u64 = WARMUP as u64 + RUNS as u64 * REPEAT as u64;
const FRAME_LEN: usize = 64;
/// Live NAT entries of the big table (two per flow).
const BIG_ENTRIES: u32 = 100_000;
/// max_entries of the big table: the next power of two, so the LRU never evicts while seeding.
const BIG_MAX: u32 = 131_072;
const TC_ACT_UNSPEC: u32 = u32::MAX;

type Err = Box<dyn std::error::Error>;

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("masquerade: SKIP: needs root (BPF_PROG_TEST_RUN, bpffs pins)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    pin_to_cpu();
    let mut report = Report::default();
    match bench(&mut report) {
        Ok(()) => {}
        Err(e) => panic!("masquerade benchmark: {e}"),
    }
    unpin_cpu();
    match toggle::bin_dir() {
        Some(dir) => {
            // SAFETY: set before the lab starts any thread that reads the environment.
            unsafe { std::env::set_var("CILIA_BIN_DIR", &dir) };
            if let Err(e) = toggle::bench(&mut report, &dir) {
                panic!("masquerade toggle benchmark: {e}");
            }
        }
        None => report.note(
            "not measured: toggle_p50_ms, toggle_p99_ms, toggle_failed_connections (the lab binaries are not built: run `make build` first)",
        ),
    }
    report.finish("masquerade").expect("writing the report");
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

/// Back on every CPU: the lab's processes (API server, operator, agents) inherit this mask.
fn unpin_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t with the bits of every CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
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

/// The frame-restoring wrapper and the empty floor.
struct Wrapper {
    ebpf: Ebpf,
    ctx: Vec<u8>,
}

impl Wrapper {
    fn load() -> Result<Self, Err> {
        let mut ebpf = EbpfLoader::new().load(TC_MASQ_BENCH_OBJ)?;
        for name in ["cil_masq_bench_empty", "cil_masq_bench_restore"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).ok_or(name)?.try_into()?;
            p.load()?;
        }
        Ok(Wrapper {
            ebpf,
            ctx: skb_ctx(1),
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

    fn empty_fd(&self) -> Result<aya::programs::ProgramFd, Err> {
        Ok(self
            .ebpf
            .program("cil_masq_bench_empty")
            .ok_or("empty")?
            .fd()?
            .try_clone()?)
    }

    /// Makes the wrapper restore `frame` and tail-call `target`.
    fn aim(&mut self, frame: &[u8], target: &aya::programs::ProgramFd) -> Result<(), Err> {
        let mut f = [0u8; FRAME_LEN];
        f.copy_from_slice(frame);
        let mut a: Array<&mut MapData, [u8; FRAME_LEN]> = Array::try_from(
            self.ebpf
                .map_mut("cilia_masq_bench_frame")
                .ok_or("frame map")?,
        )?;
        a.set(0, f, 0)?;
        let mut t: ProgramArray<&mut MapData> = ProgramArray::try_from(
            self.ebpf
                .map_mut("cilia_masq_bench_target")
                .ok_or("target map")?,
        )?;
        t.set(0, target, 0)?;
        Ok(())
    }

    /// Median ns per packet of the wrapper (and its target), and the last verdict and frame.
    fn time(&self, frame: &[u8]) -> Result<(f64, u32, Vec<u8>), Err> {
        time_prog(self.fd("cil_masq_bench_restore")?, frame, &self.ctx)
    }
}

fn time_prog(fd: RawFd, frame: &[u8], ctx: &[u8]) -> Result<(f64, u32, Vec<u8>), Err> {
    test_run(fd, frame, WARMUP, Some(ctx))?;
    let mut ns = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let out = test_run(fd, frame, REPEAT, Some(ctx))?;
        ns.push(f64::from(out.duration_ns));
        last = Some(out);
    }
    let out = last.ok_or("no run")?;
    Ok((median(&ns), out.retval, out.data))
}

/// A masquerading datapath pinned under `pins` with the table's world, `extra` NAT entries, and the
/// benchmark's flow established (one SNAT run), so timed runs take the established-flow path.
fn seeded(pins: &Path, sizes: &MasqMapSizes, extra: u32) -> Result<MasqDatapath, Err> {
    let mut dp = MasqDatapath::open(pins, sizes)?;
    dp.apply(&world())?;
    for i in 0..extra / 2 {
        // Flows of 250 sources x 200 ports to one outside address, on distinct NAT ports.
        let pod =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 244, 0, 10)) + i / 200);
        let port = 10_000 + (i % 200) as u16;
        let nat_port = 1024 + (i % 64_000) as u16;
        let dst = std::net::Ipv4Addr::new(198, 18, (i / 64_000) as u8, 1);
        for (k, v) in nat_pair((pod, port), (dst, 443), 6, NODE_IP, nat_port, 0) {
            dp.nat_insert(&k, &v)?;
        }
    }
    let out = test_run(
        dp.prog_fd(EGRESS_PROG).ok_or("egress prog")?,
        &bench_frame(),
        1,
        Some(&skb_ctx(1)),
    )?;
    if out.retval != TC_ACT_UNSPEC || out.data[26..30] != NODE_IP.octets() {
        return Err(format!(
            "establishing the bench flow: verdict {} source {:?}",
            out.retval,
            &out.data[26..30]
        )
        .into());
    }
    Ok(dp)
}

/// `memlock` of a map fd (bytes the kernel charges for it).
fn memlock(fd: RawFd) -> Result<u64, Err> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .ok_or("no memlock in fdinfo")?
        .trim()
        .parse()
        .map_err(|e| format!("memlock: {e}").into())
}

fn bench(report: &mut Report) -> Result<(), Err> {
    let base = format!("/sys/fs/bpf/cilia/bench-masq-{}", std::process::id());
    let small_pins = Pins(PathBuf::from(format!("{base}-few")));
    let big_pins = Pins(PathBuf::from(format!("{base}-100k")));
    let small = seeded(&small_pins.0, &MasqMapSizes::default(), 0)?;
    let big_sizes = MasqMapSizes {
        nat: BIG_MAX,
        ..MasqMapSizes::default()
    };
    let big = seeded(&big_pins.0, &big_sizes, BIG_ENTRIES)?;
    let live_small = small.nat_entries()?.len();
    let live_big = big.nat_entries()?.len();
    if live_big != BIG_ENTRIES as usize + 2 {
        return Err(format!(
            "big NAT table holds {live_big} entries, expected {}",
            BIG_ENTRIES + 2
        )
        .into());
    }
    let mut wrap = Wrapper::load()?;
    let frame = bench_frame();
    let empty = wrap.empty_fd()?;

    let (mut floors, mut bares, mut few, mut many) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        wrap.aim(&frame, &empty)?;
        let (floor, _, _) = wrap.time(&frame)?;
        let (bare, _, _) = time_prog(wrap.fd("cil_masq_bench_empty")?, &frame, &wrap.ctx)?;
        floors.push(floor);
        bares.push(bare);
        for (dp, into, what) in [(&small, &mut few, "few"), (&big, &mut many, "100k")] {
            wrap.aim(&frame, dp.program_fd(EGRESS_PROG).ok_or("egress prog")?)?;
            let before = (
                dp.counter(MasqCounter::Snat)?,
                dp.counter(MasqCounter::SnatNew)?,
            );
            let (t, verdict, out) = wrap.time(&frame)?;
            let grew = (
                dp.counter(MasqCounter::Snat)? - before.0,
                dp.counter(MasqCounter::SnatNew)? - before.1,
            );
            if verdict != TC_ACT_UNSPEC
                || out[26..30] != NODE_IP.octets()
                || grew != (RUNS_PER_CASE, 0)
            {
                return Err(format!(
                    "SNAT with {what} entries: verdict {verdict}, source {:?}, (snat, new) counted {grew:?} of {RUNS_PER_CASE}",
                    &out[26..30]
                )
                .into());
            }
            into.push(t - floor);
        }
    }
    let floor = median(&floors);
    let bare = median(&bares);
    let snat = median(&few);
    let snat_big = median(&many);

    let nat_map = MapData::from_pin(big_pins.0.join(NAT_MAP))?;
    let mem = memlock(nat_map.fd().as_fd().as_raw_fd())? as f64;
    let (key_b, value_b) = (
        std::mem::size_of::<cilia_datapath::masq_maps::Masq4Tuple>(),
        std::mem::size_of::<cilia_datapath::masq_maps::Masq4NatEntry>(),
    );
    let payload = f64::from(BIG_ENTRIES) * (key_b + value_b) as f64;
    let mb = |b: f64| b / (1024.0 * 1024.0);

    report.push(Measure::new("snat_ns", snat, "ns", floor));
    report.push(Measure::new("empty_prog_ns", floor, "ns", bare));
    report.push(Measure::new(
        "nat_100k_entries_mb",
        mb(mem),
        "MiB",
        mb(payload),
    ));
    report.push(Measure::new("snat_100k_entries_ns", snat_big, "ns", snat));
    report.note(format!(
        "ns/packet = median over {ROUNDS} interleaved rounds of (median of {RUNS} runs x {REPEAT} repeats through the frame-restoring TC wrapper, minus that round's floor); wrapper + empty = {floor:.1} ns, bare empty TC program {bare:.1} ns"
    ));
    report.note(format!(
        "every timed run counted on the SNAT path of the established flow {} -> {EXT}:443 (no new flow), output source = node address",
        "10.244.0.5:40000"
    ));
    report.note(format!(
        "nat_100k_entries_mb: memlock of cilia_snat_v4_external (LRU hash, max_entries {BIG_MAX}, {live_big} live entries, {key_b} B key + {value_b} B value) from /proc/self/fdinfo; baseline = raw key+value bytes of {BIG_ENTRIES} entries"
    ));
    report.note(format!(
        "snat_100k_entries_ns: the same SNAT path with {live_big} live NAT entries vs {live_small} (baseline snat_ns): hash lookup cost at scale"
    ));
    Ok(())
}

/// Live `enable-bpf-masquerade` switches in the lab, with a client loop running.
mod toggle {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{SocketAddr, SocketAddrV4, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use cilia_e2e::bench::{Measure, Report, median, percentile};
    use cilia_e2e::lab::{CLIENT_IP, Lab, default_nodes, repo_root, wait_until};
    use cilia_e2e::netns::enter;
    use cilia_e2e::traffic::{EchoServer, tcp_echo};

    use super::Err;

    const TOGGLES: usize = 20;
    /// Between switches: lets the loops run a few rounds in each mode.
    const PAUSE: Duration = Duration::from_millis(500);
    const NODE: &str = "worker";
    const PORT: u16 = 8080;
    /// A long-lived connection to the outside, kept open through every switch.
    const LONG_PORT: u16 = 8081;

    /// Where the built lab binaries are: release first, then debug (`make build`).
    pub fn bin_dir() -> Option<PathBuf> {
        ["release", "debug"]
            .iter()
            .map(|p| repo_root().join("target").join(p))
            .find(|d| {
                [
                    "cilia-agent",
                    "cilia-cni",
                    "cilia-dbg",
                    "cilia-operator",
                    "cilia-apiserver",
                ]
                .iter()
                .all(|b| d.join(b).exists())
            })
    }

    /// Whether the node runs the mode: its status line and the iptables chain (under BPF it only
    /// keeps conntrack on; under iptables it masquerades).
    fn runs(lab: &Lab, bpf: bool) -> bool {
        let m = lab
            .dbg(NODE, &["status", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["masquerading"].as_str().map(str::to_string))
            .unwrap_or_default();
        let chain = lab
            .node(NODE)
            .ns
            .exec(&["iptables", "-t", "nat", "-S", "CILIUM_POST_nat"])
            .unwrap_or_default();
        if bpf {
            m.starts_with("BPF") && !chain.contains("MASQUERADE")
        } else {
            m.starts_with("IPTables") && chain.contains("-j MASQUERADE")
        }
    }

    /// A line server on the client: answers each line with the peer it accepted.
    fn line_server(ns: &str, addr: SocketAddr) -> Result<(), Err> {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = ns.to_string();
        std::thread::spawn(move || {
            let l = enter(&path).and_then(|_| Ok(std::net::TcpListener::bind(addr)?));
            let l = match l {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => return drop(tx.send(Err(e.to_string()))),
            };
            // One connection is all it serves; the thread ends with the process.
            if let Ok((s, peer)) = l.accept() {
                let mut w = s.try_clone().expect("clone");
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{peer}|{line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        rx.recv()?.map_err(|e| e.into())
    }

    pub fn bench(report: &mut Report, bins: &Path) -> Result<(), Err> {
        // Installed as a user would: the real Helm engine with the seed values (BPF masquerading
        // with ip-masq-agent), toggled with `helm upgrade --reuse-values --set`.
        let mut lab = Lab::up_kube_unconfigured(default_nodes())?;
        lab.helm_install_seed()?;
        let node_ip = lab.node(NODE).spec.ip;
        let dst = SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, PORT));
        let long_dst = SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, LONG_PORT));
        let _server = EchoServer::start(&lab.client.path(), dst)?;
        line_server(&lab.client.path(), long_dst)?;
        let pod = lab.add_pod(NODE, "masq-toggle")?;
        wait_until(Duration::from_secs(30), || {
            runs(&lab, true) && tcp_echo(&pod.ns_path(), dst, b"probe").is_ok()
        })
        .map_err(|_| format!("BPF masquerading not on: {}", lab.agent_log(NODE)))?;
        let pid = lab.agent_pid(NODE);

        let stop = Arc::new(AtomicBool::new(false));
        let t_start = Instant::now();
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let client = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let errors = errors.clone();
            let ns = pod.ns_path();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = t_start.elapsed().as_secs_f64();
                    match tcp_echo(&ns, dst, b"toggle") {
                        Ok(e) if e.seen_as.ip() == node_ip && e.payload == b"toggle" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("at {t:.2}s: seen as {}", e.seen_as));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("at {t:.2}s: {e:#}"));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        // The long-lived connection: one round trip a toggle, from the same flow every time.
        let long = {
            let path = pod.ns_path();
            std::thread::spawn(move || -> Result<TcpStream, String> {
                enter(&path).map_err(|e| e.to_string())?;
                TcpStream::connect_timeout(&long_dst, Duration::from_secs(3))
                    .map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "connect thread panicked")??
        };
        long.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut long_r = BufReader::new(long.try_clone()?);
        let mut long_w = long;
        let mut long_peer: Option<String> = None;
        let mut long_round = |i: usize| -> Result<(), String> {
            long_w
                .write_all(format!("{i}\n").as_bytes())
                .map_err(|e| format!("long-lived write: {e}"))?;
            let mut line = String::new();
            long_r
                .read_line(&mut line)
                .map_err(|e| format!("long-lived read: {e}"))?;
            let peer = line.split('|').next().unwrap_or_default().to_string();
            match &long_peer {
                None if peer.starts_with(&format!("{node_ip}:")) => long_peer = Some(peer),
                Some(p) if *p == peer => {}
                _ => {
                    return Err(format!(
                        "long-lived connection seen as {line:?} ({long_peer:?} before)"
                    ));
                }
            }
            Ok(())
        };
        let mut long_failed = 0u64;
        if let Err(e) = long_round(0) {
            long_failed += 1;
            errors.lock().unwrap().push(e);
        }
        let (mut toggles, mut helm_alone, mut after_helm) = (Vec::new(), Vec::new(), Vec::new());
        let mut result: Result<(), Err> = Ok(());
        for i in 0..TOGGLES {
            let bpf = i % 2 == 1;
            let t0 = Instant::now();
            let run = match lab
                .helm_upgrade_set(&[("bpf.masquerade", if bpf { "true" } else { "false" })])
            {
                Ok(r) => r,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            let returned = Instant::now();
            helm_alone.push(run.took.as_secs_f64() * 1e3);
            if wait_until(Duration::from_secs(10), || runs(&lab, bpf)).is_err() {
                result = Err(format!("toggle {i} (to BPF: {bpf}) did not happen").into());
                break;
            }
            toggles.push(t0.elapsed().as_secs_f64() * 1e3);
            after_helm.push(returned.elapsed().as_secs_f64() * 1e3);
            println!(
                "  toggle {i} at {:.2}s: to {} in {:.0} ms (helm {:.0} ms, then {:.0} ms)",
                t0.duration_since(t_start).as_secs_f64(),
                if bpf { "BPF" } else { "iptables" },
                toggles[i],
                helm_alone[i],
                after_helm[i]
            );
            if let Err(e) = long_round(i + 1) {
                long_failed += 1;
                errors.lock().unwrap().push(format!("toggle {i}: {e}"));
            }
            std::thread::sleep(PAUSE);
        }
        stop.store(true, Ordering::Relaxed);
        client.join().map_err(|_| "client loop panicked")?;
        result?;
        if lab.agent_pid(NODE) != pid || !lab.agent_alive(NODE) {
            return Err("the agent restarted during the toggles".into());
        }
        let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        let errors = errors.lock().unwrap().clone();
        report.push(Measure::new(
            "toggle_p50_ms",
            median(&toggles),
            "ms",
            median(&helm_alone),
        ));
        report.push(Measure::new(
            "toggle_p99_ms",
            percentile(&toggles, 99.0),
            "ms",
            percentile(&helm_alone, 99.0),
        ));
        report.push(Measure::new(
            "toggle_failed_connections",
            (failed + long_failed) as f64,
            "connections",
            0.0,
        ));
        report.note(format!(
            "toggle_*_ms: {TOGGLES} live switches through the real Helm engine (`helm upgrade cilia charts/cilia --reuse-values --set bpf.masquerade=false|true` after `helm install` with cilium-medium.yaml; BPF <-> iptables, same agent pid), from the start of helm upgrade to the node's status line and CILIUM_POST_nat showing the new mode (polled); baseline = helm upgrade alone; after helm returned: p50 {:.0} ms, p99 {:.0} ms; binaries from {}",
            median(&after_helm),
            percentile(&after_helm, 99.0),
            bins.display()
        ));
        report.note(format!(
            "toggle_failed_connections: pod -> {dst} round trips (new TCP connection each, every 10 ms) that failed or were seen from another address than the node's, plus round trips of one long-lived pod -> {long_dst} connection (one per switch) that failed or changed flow, over all {TOGGLES} switches ({} ms apart); {ok} new connections succeeded; baseline 0; failures: {errors:?}",
            PAUSE.as_millis()
        ));
        Ok(())
    }
}
