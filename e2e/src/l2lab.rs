//! L2 announcements in the lab, shared by the `l2_announce` suite and benchmark: the seed world (LB
//! pool, `deathstar-lb` with a backend on each worker, the seed `CiliumL2AnnouncementPolicy`), and
//! the client-side instruments — `arping`, a capture of ARP on the LAN bridge, and a request loop to
//! the VIP that measures interruptions.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::lab::{Lab, Pod, default_nodes, repo_root, wait_until};
use crate::netns::enter;
use crate::traffic::EchoServer;

pub const SVC: &str = "deathstar-lb";
pub const WORKERS: [&str; 2] = ["worker", "worker2"];
const STEP: Duration = Duration::from_secs(60);

/// A seed fixture's path (`../shared/fixtures/seed/<name>`).
pub fn seed(name: &str) -> String {
    repo_root()
        .join("../shared/fixtures/seed")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// The lab with L2 announcements on and the seed objects applied.
pub struct L2World {
    pub lab: Lab,
    pub vip: Ipv4Addr,
    pub backends: Vec<Pod>,
    /// eth0 MAC of every node, lower case.
    pub macs: BTreeMap<String, String>,
    _servers: Vec<EchoServer>,
}

impl L2World {
    /// Brings the lab up with `enable-l2-announcements` (Cilium's default lease timings as Cilia
    /// reads them: 400 ms lease, 300 ms renew deadline, 100 ms retry period), the service load
    /// balancer (so the VIP serves TCP), the seed pool, Service and L2 policy, and waits until the
    /// VIP is answered on the LAN.
    pub fn up() -> anyhow::Result<L2World> {
        let mut lab = Lab::up(default_nodes())?;
        lab.kubectl(&["apply", "-f", &repo_root().join("crds").to_string_lossy()])
            .context("CRDs")?;
        lab.apply_cilium_config(&[
            ("kube-proxy-replacement", "true"),
            ("enable-l2-announcements", "true"),
        ])?;
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for (node, name) in [("worker", "deathstar-1"), ("worker2", "deathstar-2")] {
            let pod = lab.add_pod(node, name)?;
            servers.push(EchoServer::start(
                &pod.ns_path(),
                SocketAddr::new(IpAddr::V4(pod.ip), 80),
            )?);
            backends.push(pod);
        }
        for f in ["lb-pool.yaml", "deathstar-svc.yaml", "l2-policy.yaml"] {
            lab.kubectl(&["apply", "-f", &seed(f)])
                .with_context(|| format!("seed {f}"))?;
        }
        lab.kubectl_with_input(
            &["apply", "-f", "-"],
            &crate::lab::endpoint_slice(SVC, &backends, 80),
        )?;
        let mut svc = Value::Null;
        wait_until(STEP, || {
            svc = lab
                .kubectl_json(&["svc", "-n", "default", SVC])
                .unwrap_or(Value::Null);
            svc.pointer("/status/loadBalancer/ingress/0/ip").is_some()
        })
        .map_err(|_| anyhow::anyhow!("{SVC} never got its VIP: {svc}"))?;
        let vip: Ipv4Addr = svc
            .pointer("/status/loadBalancer/ingress/0/ip")
            .and_then(Value::as_str)
            .context("VIP")?
            .parse()?;
        let mut macs = BTreeMap::new();
        for n in &lab.nodes {
            let m = n.ns.exec(&["cat", "/sys/class/net/eth0/address"])?;
            macs.insert(n.spec.name.clone(), m.trim().to_lowercase());
        }
        let w = L2World {
            lab,
            vip,
            backends,
            macs,
            _servers: servers,
        };
        let mut seen = Vec::new();
        wait_until(STEP, || {
            seen = w.arping(2);
            seen.len() == 1
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "the VIP {vip} is not answered by exactly one MAC: {seen:?}\n--- operator\n{}\n--- worker\n{}\n--- worker2\n{}",
                w.lab.operator_log(),
                w.lab.agent_log("worker"),
                w.lab.agent_log("worker2")
            )
        })?;
        Ok(w)
    }

    /// The node whose eth0 has `mac`.
    pub fn node_of(&self, mac: &str) -> Option<String> {
        self.macs
            .iter()
            .find(|(_, m)| m.as_str() == mac)
            .map(|(n, _)| n.clone())
    }

    /// The distinct MACs that answered `count` ARP requests for the VIP from the client.
    pub fn arping(&self, count: u32) -> Vec<String> {
        arping(&self.lab, self.vip, count)
    }

    /// The one node answering for the VIP now, if exactly one does.
    pub fn announcer(&self) -> Option<String> {
        match self.arping(2).as_slice() {
            [m] => self.node_of(m),
            _ => None,
        }
    }

    /// The client's neighbour entry for the VIP (`ip neigh show <vip>`).
    pub fn client_neighbour(&self) -> String {
        self.lab
            .client
            .exec(&["ip", "neigh", "show", &self.vip.to_string()])
            .unwrap_or_default()
    }

    /// Makes the client's kernel resolve the VIP (arping's raw socket leaves its neighbour table
    /// alone): one datagram to it, then the entry must carry a MAC.
    pub fn client_resolve(&self) -> anyhow::Result<String> {
        let _ = self.lab.client.exec(&[
            "bash",
            "-c",
            &format!("echo probe > /dev/udp/{}/9", self.vip),
        ]);
        let mut n = String::new();
        wait_until(Duration::from_secs(5), || {
            n = self.client_neighbour();
            n.contains("lladdr")
        })
        .map_err(|_| anyhow::anyhow!("client never resolved the VIP: {n:?}"))?;
        Ok(n)
    }

    /// The MAC in the client's neighbour entry for the VIP.
    pub fn client_neighbour_mac(&self) -> Option<String> {
        let n = self.client_neighbour();
        let mut it = n.split_whitespace();
        while let Some(w) = it.next() {
            if w == "lladdr" {
                return it.next().map(str::to_lowercase);
            }
        }
        None
    }

    /// The name of the LAN bridge port of `node` (its eth0's peer).
    pub fn lan_port(node: &str) -> String {
        format!("p-{node}").chars().take(15).collect()
    }

    /// Takes `node`'s eth0 carrier away (its LAN port goes down) or gives it back.
    pub fn set_carrier(&self, node: &str, up: bool) -> anyhow::Result<()> {
        self.lab.lan.ip(&[
            "link",
            "set",
            &Self::lan_port(node),
            if up { "up" } else { "down" },
        ])?;
        Ok(())
    }

    /// One TCP echo through the VIP from the client (the service answers).
    pub fn vip_serves(&self) -> bool {
        let path = self.lab.client.path();
        let dst = SocketAddr::new(IpAddr::V4(self.vip), 80);
        std::thread::spawn(move || enter(&path).is_ok() && echo_once(dst, Duration::from_secs(2)))
            .join()
            .unwrap_or(false)
    }
}

/// What one failover looked like from the client and on the wire.
#[derive(Debug, Clone)]
pub struct FailoverRun {
    pub holder: String,
    pub heir: String,
    pub old_mac: String,
    pub new_mac: String,
    /// When the cause was applied (Unix seconds, the capture's clock).
    pub since: f64,
    /// ARP replies and announcements about the VIP from `since - 1 s` on, in time order.
    pub seen: Vec<ArpSeen>,
    /// The request loop's attempts (start, success).
    pub results: Vec<(Instant, bool)>,
    /// The interruption the request loop saw.
    pub interruption: Duration,
    /// The old MAC's last and the new MAC's first answer after the cause, ms after it.
    pub old_last_ms: Option<f64>,
    pub new_first_ms: Option<f64>,
    /// The capture as tcpdump printed it (for failure messages).
    pub capture_file: PathBuf,
}

impl FailoverRun {
    /// The last `n` lines tcpdump printed.
    pub fn capture_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.capture_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Frames from the cause on.
    pub fn after(&self) -> Vec<&ArpSeen> {
        self.seen.iter().filter(|s| s.t >= self.since).collect()
    }
}

/// The other worker.
pub fn other_worker(node: &str) -> &'static str {
    if node == WORKERS[0] {
        WORKERS[1]
    } else {
        WORKERS[0]
    }
}

impl L2World {
    /// Runs one failover: resolves the VIP on the client, starts a capture on the LAN bridge,
    /// `arping` every 20 ms and a request loop (a new TCP connection every 10 ms, 100 ms timeout),
    /// applies `cause` to the announcing worker, and waits until the client's neighbour entry
    /// points at the other worker and the VIP served 20 requests after the cause.
    pub fn failover(
        &mut self,
        name: &str,
        cause: impl FnOnce(&mut L2World, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<FailoverRun> {
        let holder = self
            .announcer()
            .context("no single announcer before the failover")?;
        let heir = other_worker(&holder).to_string();
        let (old_mac, new_mac) = (self.macs[&holder].clone(), self.macs[&heir].clone());
        self.client_resolve()?;
        // The holder's announcements (repeated after a takeover) put the entry right.
        wait_until(Duration::from_secs(5), || {
            self.client_neighbour_mac().as_deref() == Some(old_mac.as_str())
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "{name}: client's entry {} is not {holder}'s MAC",
                self.client_neighbour()
            )
        })?;
        let cap = Capture::start(&self.lab, name)?;
        let arping = ArpingLoop::start(&self.lab, self.vip, Duration::from_millis(20))?;
        let reqs = RequestLoop::start(self, Duration::from_millis(10), Duration::from_millis(100));
        wait_until(Duration::from_secs(10), || {
            reqs.results().iter().filter(|(_, ok)| *ok).count() >= 10
        })
        .map_err(|_| anyhow::anyhow!("{name}: the VIP does not serve before the failover"))?;
        let since = unix_now();
        let at = Instant::now();
        cause(self, &holder)?;
        wait_until(Duration::from_secs(15), || {
            self.client_neighbour_mac().as_deref() == Some(new_mac.as_str())
        })
        .map_err(|_| {
            anyhow::anyhow!(
                "{name}: the client's neighbour entry did not move to {heir} ({new_mac}): {}",
                self.client_neighbour()
            )
        })?;
        wait_until(Duration::from_secs(10), || {
            reqs.results()
                .iter()
                .filter(|(t, ok)| *t > at && *ok)
                .count()
                >= 20
        })
        .map_err(|_| anyhow::anyhow!("{name}: the VIP does not serve after the failover"))?;
        let results = reqs.stop();
        drop(arping);
        let capture_file = cap.file();
        let seen: Vec<ArpSeen> = cap
            .stop(self.vip)
            .into_iter()
            .filter(|s| s.t >= since - 1.0)
            .collect();
        let interruption = interruption(&results, at)?;
        let rel = |t: f64| (t - since) * 1000.0;
        let old_last_ms = seen
            .iter()
            .rev()
            .find(|s| s.t >= since && s.mac == old_mac)
            .map(|s| rel(s.t));
        let new_first_ms = seen
            .iter()
            .find(|s| s.t >= since && s.mac == new_mac)
            .map(|s| rel(s.t));
        Ok(FailoverRun {
            holder,
            heir,
            old_mac,
            new_mac,
            since,
            seen,
            results,
            interruption,
            old_last_ms,
            new_first_ms,
            capture_file,
        })
    }

    /// Waits until exactly one worker answers, the same one `n` times in a row (the choice
    /// settled), and returns it.
    pub fn settled(&self, n: usize, timeout: Duration) -> anyhow::Result<String> {
        let mut last = None;
        let mut streak = 0;
        wait_until(timeout, || {
            let now = self.announcer();
            if now.is_some() && now == last {
                streak += 1;
            } else {
                streak = 0;
            }
            last = now;
            streak >= n
        })
        .map_err(|_| anyhow::anyhow!("the announcer did not settle: {last:?}"))?;
        Ok(last.expect("settled on one"))
    }

    /// Whether `node`'s agent is connected to the operator and has applied its current intent.
    pub fn agent_in_step(&self, node: &str) -> bool {
        let Ok(out) = self.lab.dbg(node, &["status", "-o", "json"]) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(&out) else {
            return false;
        };
        let s = &v["intentStream"];
        s["connected"] == true && s["appliedVersion"] == s["operatorVersion"]
    }
}

/// The distinct MACs (lower case, sorted) that answered `count` ARP requests for `vip` sent from
/// the client's eth0, 50 ms apart.
pub fn arping(lab: &Lab, vip: Ipv4Addr, count: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.client.name, "arping", "-i", "eth0"])
        .args(["-c", &count.to_string(), "-W", "0.05", "-w", "1"])
        .arg(vip.to_string())
        .output();
    let Ok(out) = out else { return Vec::new() };
    let mut macs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_lowercase))
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// Keeps asking for the VIP with `arping` from the client (every `every`) until dropped, so a
/// capture sees who answers at each moment.
pub struct ArpingLoop(Child);

impl ArpingLoop {
    pub fn start(lab: &Lab, vip: Ipv4Addr, every: Duration) -> anyhow::Result<ArpingLoop> {
        let c = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.client.name,
                "arping",
                "-q",
                "-i",
                "eth0",
            ])
            .args(["-W", &format!("{:.3}", every.as_secs_f64())])
            .arg(vip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("arping")?;
        Ok(ArpingLoop(c))
    }
}

impl Drop for ArpingLoop {
    fn drop(&mut self) {
        // Our own child, by its id.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One ARP frame about the VIP seen on the LAN bridge: a reply or a gratuitous announcement.
#[derive(Debug, Clone, PartialEq)]
pub struct ArpSeen {
    /// Unix seconds (tcpdump's clock).
    pub t: f64,
    /// The MAC the frame claims the VIP is at.
    pub mac: String,
    pub gratuitous: bool,
}

/// `tcpdump` on the LAN bridge, ARP only, until [`Capture::stop`].
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    pub fn start(lab: &Lab, name: &str) -> anyhow::Result<Capture> {
        let file = lab.dir.join(format!("{name}.arp.txt"));
        let err = lab.dir.join(format!("{name}.tcpdump.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.lan.name, "tcpdump", "-i", "br0"])
            .args(["-n", "-e", "-tt", "-l", "-U", "arp"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&file)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("tcpdump")?;
        let cap = Capture {
            child: Some(child),
            file,
        };
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&err).is_ok_and(|s| s.contains("listening on"))
        })
        .map_err(|_| anyhow::anyhow!("tcpdump did not start"))?;
        Ok(cap)
    }

    pub fn file(&self) -> PathBuf {
        self.file.clone()
    }

    /// Stops the capture and returns the replies and announcements about `vip`, in time order.
    pub fn stop(mut self, vip: Ipv4Addr) -> Vec<ArpSeen> {
        if let Some(mut c) = self.child.take() {
            // SIGINT so tcpdump flushes; our own child, by its id.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        parse_arp_capture(&text, vip)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads `tcpdump -n -e -tt` lines: `<t> <src> > <dst>, ethertype ARP (0x0806), length 42: Reply
/// <ip> is-at <mac>, length 28`, and gratuitous requests (`Request who-has <ip> tell <ip>` or, in
/// newer tcpdumps, `Announcement <ip>`), attributed to their Ethernet source.
pub fn parse_arp_capture(text: &str, vip: Ipv4Addr) -> Vec<ArpSeen> {
    let v = vip.to_string();
    let mut out = Vec::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let (Some(t), Some(src)) = (w.first().and_then(|t| t.parse::<f64>().ok()), w.get(1)) else {
            continue;
        };
        let Some(colon) = l.find(": ") else { continue };
        let body: Vec<&str> = l[colon + 2..]
            .split_whitespace()
            .map(|s| s.trim_end_matches(','))
            .collect();
        let seen = match body.as_slice() {
            ["Reply", ip, "is-at", mac, ..] if *ip == v => Some((mac.to_lowercase(), false)),
            ["Request", "who-has", a, "tell", b, ..] if *a == v && *b == v => {
                Some((src.to_lowercase(), true))
            }
            ["Announcement", ip, ..] if *ip == v => Some((src.to_lowercase(), true)),
            _ => None,
        };
        if let Some((mac, gratuitous)) = seen {
            out.push(ArpSeen { t, mac, gratuitous });
        }
    }
    out
}

/// Whether two MACs ever answered at once: after `since` (Unix seconds) the answering MAC may
/// change, but a MAC that was followed by another must never answer again — answers hand over and
/// do not interleave. Returns the offending pair (the other MAC's last frame, the late one).
pub fn interleaved(seen: &[ArpSeen], since: f64) -> Option<(ArpSeen, ArpSeen)> {
    let mut order: Vec<&str> = Vec::new();
    let mut last: BTreeMap<&str, &ArpSeen> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.t >= since) {
        if let Some(&prev) = order.last()
            && prev != s.mac
            && order.contains(&s.mac.as_str())
        {
            return Some((last[prev].clone(), s.clone()));
        }
        if order.last() != Some(&s.mac.as_str()) {
            order.push(&s.mac);
        }
        last.insert(&s.mac, s);
    }
    None
}

/// Now, in Unix seconds (the capture's clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn echo_once(dst: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&dst, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(b"l2").is_err() || s.shutdown(std::net::Shutdown::Write).is_err() {
        return false;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).is_ok() && out.ends_with(b"|l2")
}

/// New TCP connections to the VIP from the client, one every `every`, each given `timeout`;
/// records when each attempt started and whether it got its echo.
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl RequestLoop {
    pub fn start(world: &L2World, every: Duration, timeout: Duration) -> RequestLoop {
        Self::start_to(&world.lab, world.vip, every, timeout)
    }

    /// The same against `vip`:80 of any lab (the demo's).
    pub fn start_to(lab: &Lab, vip: Ipv4Addr, every: Duration, timeout: Duration) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let path = lab.client.path();
        let dst = SocketAddr::new(IpAddr::V4(vip), 80);
        let (s2, r2) = (stop.clone(), results.clone());
        let thread = std::thread::spawn(move || {
            if enter(&path).is_err() {
                return;
            }
            while !s2.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = echo_once(dst, timeout);
                r2.lock().unwrap().push((t, ok));
                if let Some(rest) = every.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
        RequestLoop {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Attempts so far.
    pub fn results(&self) -> Vec<(Instant, bool)> {
        self.results.lock().unwrap().clone()
    }

    pub fn stop(mut self) -> Vec<(Instant, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.results()
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The interruption a failover at `at` caused, as the request loop saw it: the longest time
/// between the starts of two consecutive successful requests, from the last success before `at`
/// on (without a failure that is about the loop's period). Errors when the service never came
/// back.
pub fn interruption(results: &[(Instant, bool)], at: Instant) -> anyhow::Result<Duration> {
    let oks: Vec<Instant> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| *t)
        .collect();
    let from = oks.iter().rposition(|t| *t < at).unwrap_or(0);
    if !oks.iter().any(|t| *t >= at) {
        bail!("the VIP never served again after the failover");
    }
    Ok(oks[from..]
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(172, 18, 250, 0);

    #[test]
    fn capture_lines_parse() {
        let text = "\
1700000000.100000 02:00:00:00:00:64 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 172.18.250.0 tell 172.18.0.100, length 28
1700000000.100100 02:00:00:00:00:03 > 02:00:00:00:00:64, ethertype ARP (0x0806), length 42: Reply 172.18.250.0 is-at 02:00:00:00:00:03, length 28
1700000000.200000 02:00:00:00:00:04 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 172.18.250.0 tell 172.18.250.0, length 28
1700000000.300000 02:00:00:00:00:04 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Announcement 172.18.250.0, length 28
1700000000.400000 02:00:00:00:00:05 > 02:00:00:00:00:64, ethertype ARP (0x0806), length 42: Reply 172.18.0.5 is-at 02:00:00:00:00:05, length 28
";
        let s = parse_arp_capture(text, VIP);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].mac, "02:00:00:00:00:03");
        assert!(!s[0].gratuitous);
        assert!(s[1].gratuitous && s[2].gratuitous);
        assert_eq!(s[1].mac, "02:00:00:00:00:04");
    }

    fn seen(t: f64, mac: &str) -> ArpSeen {
        ArpSeen {
            t,
            mac: mac.into(),
            gratuitous: false,
        }
    }

    #[test]
    fn a_clean_handover_is_not_interleaved_a_flap_is() {
        let clean = [
            seen(1.0, "a"),
            seen(1.1, "a"),
            seen(2.0, "b"),
            seen(2.1, "b"),
        ];
        assert!(interleaved(&clean, 0.0).is_none());
        let flap = [seen(1.0, "a"), seen(2.0, "b"), seen(2.05, "a")];
        assert!(interleaved(&flap, 0.0).is_some());
        assert!(interleaved(&flap, 2.01).is_none(), "only after `since`");
    }

    #[test]
    fn interruption_spans_last_success_to_first_success_after_failures() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let r = [
            (at(0), true),
            (at(10), true),
            (at(20), false),
            (at(130), false),
            (at(240), true),
        ];
        assert_eq!(interruption(&r, at(5)).unwrap(), Duration::from_millis(230));
        let clean = [(at(0), true), (at(10), true), (at(20), true)];
        assert_eq!(
            interruption(&clean, at(5)).unwrap(),
            Duration::from_millis(10)
        );
        assert!(interruption(&[(at(0), true), (at(20), false)], at(5)).is_err());
    }
}
