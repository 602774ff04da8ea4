//! The ARP announcer with real packets: two "nodes" and a client on one bridged LAN (network
//! namespaces). The client's `arping` for a VIP is answered by exactly the node that announces it,
//! with that node's MAC; moving the VIP to the other node sends a gratuitous ARP that moves the
//! client's neighbour entry; a withdrawn (or lapsed) VIP is answered by nobody, and a lease that
//! nobody renews (the agent was killed) silences the node by itself.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use cilia_agent::announcer::{Announcer, Heard, L2Agent};
use cilia_datapath::l2::{link_states, monotonic_now_ns};
use cilia_model::l2::L2Announcement;
use cilia_model::service::ServiceName;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);

fn can_run() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (network namespaces, eBPF)");
        return false;
    }
    if Command::new("arping").arg("--help").output().is_err() {
        eprintln!("SKIP: arping is not installed (make deps)");
        return false;
    }
    true
}

/// Network namespaces and pins of one test run, removed on drop (also on panic).
struct Lab {
    tag: String,
    pins: Vec<PathBuf>,
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("cl2-{}-{role}", self.tag)
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn in_ns(&self, role: &str, args: &[&str]) -> String {
        let ns = self.ns(role);
        let mut full = vec!["ip", "netns", "exec", ns.as_str()];
        full.extend_from_slice(args);
        self.sh(&full)
    }

    /// `name` keeps the namespaces of tests running at once apart.
    fn up(name: &str) -> Lab {
        let lab = Lab {
            tag: format!("{:x}-{name}", std::process::id()),
            pins: vec![],
        };
        for role in ["lan", "n1", "n2", "cl"] {
            lab.sh(&["ip", "netns", "add", &lab.ns(role)]);
        }
        lab.in_ns("lan", &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.in_ns("lan", &["ip", "link", "set", "br0", "up"]);
        for (role, ip) in [
            ("n1", "10.77.0.2/24"),
            ("n2", "10.77.0.3/24"),
            ("cl", "10.77.0.100/24"),
        ] {
            let ns = lab.ns(role);
            let lan = lab.ns("lan");
            let port = format!("p-{role}");
            lab.sh(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &lan,
            ]);
            lab.in_ns("lan", &["ip", "link", "set", &port, "master", "br0", "up"]);
            lab.in_ns(role, &["ip", "addr", "add", ip, "dev", "eth0"]);
            lab.in_ns(role, &["ip", "link", "set", "eth0", "up"]);
            lab.in_ns(role, &["ip", "link", "set", "lo", "up"]);
        }
        lab
    }

    fn mac(&self, role: &str) -> String {
        self.in_ns(role, &["cat", "/sys/class/net/eth0/address"])
            .trim()
            .to_string()
    }

    /// MACs that answered `count` ARP requests for the VIP from the client.
    fn arping(&self, count: u32) -> Vec<String> {
        self.arping_counted(count).0
    }

    /// MACs that answered, and how many replies came.
    fn arping_counted(&self, count: u32) -> (Vec<String>, u64) {
        let ns = self.ns("cl");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "arping",
                "-c",
                &count.to_string(),
                "-w",
                "1",
                "-i",
                "eth0",
            ])
            .arg(VIP.to_string())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut macs: Vec<String> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_lowercase))
            .collect();
        let replies = macs.len() as u64;
        macs.sort();
        macs.dedup();
        (macs, replies)
    }

    /// Makes the client's kernel resolve the VIP (arping's raw socket does not touch its
    /// neighbour table): one UDP datagram to it, then wait for the entry to be complete.
    fn client_resolve(&self) {
        let ns = self.ns("cl");
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns, "bash", "-c"])
            .arg(format!("echo probe > /dev/udp/{VIP}/9"))
            .output();
        for _ in 0..50 {
            if self.client_neighbour().contains("lladdr") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn client_neighbour(&self) -> String {
        self.in_ns("cl", &["ip", "neigh", "show", &VIP.to_string()])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for role in ["lan", "n1", "n2", "cl"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
        for p in &self.pins {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Runs `f` with an announcer inside the namespace of `role` (a thread that entered it).
fn in_node<T: Send + 'static>(
    lab: &Lab,
    role: &str,
    f: impl FnOnce(&mut Announcer, &[cilia_datapath::l2::LinkState]) -> T + Send + 'static,
) -> T {
    let ns = lab.ns(role);
    let pin = PathBuf::from(format!("/sys/fs/bpf/cilia/test-l2ann-{}-{role}", lab.tag));
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        assert_eq!(
            unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let links = rt.block_on(link_states()).unwrap();
        let mut a = Announcer::load(&pin).unwrap();
        f(&mut a, &links)
    })
    .join()
    .unwrap()
}

fn want() -> BTreeMap<Ipv4Addr, L2Announcement> {
    [(
        VIP,
        L2Announcement {
            vip: VIP,
            service: ServiceName::new("default", "deathstar-lb"),
            interfaces: ["eth0".to_string()].into(),
            standby: false,
        },
    )]
    .into()
}

// One announcer at a time answers for the VIP with its own MAC; a takeover moves the client's
// neighbour entry by gratuitous ARP; a lapsed announcement answers nothing.
#[test]
fn arp_replies_follow_the_announcer() {
    if !can_run() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let mut lab = Lab::up("a");
    for role in ["n1", "n2"] {
        lab.pins.push(PathBuf::from(format!(
            "/sys/fs/bpf/cilia/test-l2ann-{}-{role}",
            lab.tag
        )));
    }
    let (mac1, mac2) = (lab.mac("n1"), lab.mac("n2"));

    assert!(lab.arping(1).is_empty(), "nobody announces the VIP yet");

    // Node 1 is given the VIP, but has no lease yet (no word from the operator): silent.
    let r = in_node(&lab, "n1", |a, links| a.apply(&want(), links).unwrap());
    assert_eq!(r.garps, 0, "no announcement without a lease: {r:?}");
    assert!(r.writes >= 2, "attach + entry: {r:?}");
    assert!(lab.arping(1).is_empty(), "no lease, no answer");
    // The lease runs: a takeover, announced by gratuitous ARP.
    let garps = in_node(&lab, "n1", |a, _| a.renew(lease(60_000)).unwrap());
    assert_eq!(garps, 1);
    assert_eq!(lab.arping(3), vec![mac1.clone()], "exactly node 1 answers");
    lab.client_resolve();
    assert!(
        lab.client_neighbour().contains(&mac1),
        "{}",
        lab.client_neighbour()
    );
    // Applying the same again writes nothing and sends no new GARP.
    let again = in_node(&lab, "n1", |a, links| a.apply(&want(), links).unwrap());
    assert_eq!((again.writes, again.garps), (0, 0));

    // A renewal of a running lease is no takeover: no gratuitous ARP.
    assert_eq!(
        in_node(&lab, "n1", |a, _| a.renew(lease(61_000)).unwrap()),
        0
    );

    // Takeover: node 1 lapses, node 2 announces (what the operator's reassignment does).
    in_node(&lab, "n1", |a, _| a.lapse().unwrap());
    assert!(lab.arping(1).is_empty(), "node 1 lapsed, node 2 not yet");
    let r2 = in_node(&lab, "n2", |a, links| {
        a.renew(lease(60_000)).unwrap();
        a.apply(&want(), links).unwrap()
    });
    assert_eq!(
        r2.garps, 1,
        "a new VIP under a running lease is announced at once"
    );
    // The gratuitous ARP moved the client's existing neighbour entry without a new request.
    let neigh = lab.client_neighbour();
    assert!(
        neigh.contains(&mac2),
        "client neighbour after takeover: {neigh}"
    );
    let (macs, replies) = lab.arping_counted(2);
    assert_eq!(macs, vec![mac2.clone()], "exactly node 2 answers");

    // The reply counter and the listing.
    let listed = in_node(&lab, "n2", |a, links| {
        a.apply(&want(), links).unwrap();
        a.list().unwrap()
    });
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].vip, VIP);
    assert_eq!(listed[0].interface, "eth0");
    assert_eq!(listed[0].service, "default/deathstar-lb");
    // Every reply the client got was counted (the client's kernel may have asked too).
    assert!(replies >= 1);
    assert!(
        listed[0].replies >= replies,
        "{listed:?} vs {replies} received"
    );

    // Lapse: nobody answers.
    in_node(&lab, "n2", |a, _| a.lapse().unwrap());
    assert!(
        lab.arping(2).is_empty(),
        "a lapsed announcement answers nothing"
    );

    // A lease nobody renews (the agent was killed): the node falls silent by itself.
    in_node(&lab, "n2", |a, _| a.renew(lease(1_500)).unwrap());
    assert_eq!(
        lab.arping(1),
        vec![mac2.clone()],
        "answers while the lease runs"
    );
    std::thread::sleep(std::time::Duration::from_millis(1_600));
    let (macs, _) = lab.arping_counted(2);
    assert!(
        macs.is_empty(),
        "answered after the lease ran out: {macs:?}"
    );
    let listed = in_node(&lab, "n2", |a, links| {
        a.apply(&want(), links).unwrap();
        a.list().unwrap()
    });
    assert!(
        listed[0].lapsed >= 2,
        "unanswered requests counted: {listed:?}"
    );
}

/// A lease deadline `ms` from now.
fn lease(ms: u64) -> u64 {
    monotonic_now_ns() + ms * 1_000_000
}

/// `arping` for the VIP from the client namespace `cl`: the MACs that answered.
fn arping_from(cl: &str, count: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", cl, "arping", "-c", &count.to_string()])
        .args(["-w", "1", "-i", "eth0"])
        .arg(VIP.to_string())
        .output()
        .unwrap();
    let mut macs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_lowercase))
        .collect();
    macs.sort();
    macs.dedup();
    macs
}

/// An intent of node n1 with L2 announcements on and the VIP on eth0. The lease is longer than
/// the default 400 ms so that the arpings between the steps (each may take a while on a loaded
/// machine) stay inside it.
const TEST_LEASE_MS: u64 = 3_000;

fn l2_intent() -> cilia_model::NodeIntent {
    let mut i = cilia_model::NodeIntent::from_facts(
        cilia_model::NodeFacts {
            node: "n1".into(),
            node_ip: Ipv4Addr::new(10, 77, 0, 2),
            pod_cidr: None,
            routing_mode: cilia_model::RoutingMode::Native,
            native_routing_cidr: None,
        },
        Default::default(),
    );
    i.datapath.l2_announcements = true;
    i.datapath.l2_lease_ms = TEST_LEASE_MS as u32;
    i.l2 = std::sync::Arc::new(want());
    i
}

// The apply loop's driver: the lease follows the operator's word. Entries are written at once,
// but the node answers only after a word (a takeover, announced); without another word it falls
// silent by itself one lease later; a word that waits behind a newer intent does not renew; turning
// announcements off removes everything.
#[test]
fn the_lease_follows_the_operators_word() {
    if !can_run() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let mut lab = Lab::up("b");
    let pin = PathBuf::from(format!("/sys/fs/bpf/cilia/test-l2ann-{}-n1", lab.tag));
    lab.pins.push(pin.clone());
    let mac1 = lab.mac("n1");
    let (n1, cl) = (lab.ns("n1"), lab.ns("cl"));
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(format!("/run/netns/{n1}")).unwrap();
        assert_eq!(
            unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let links = rt.block_on(link_states()).unwrap();
        let intent = l2_intent();
        let mut a = L2Agent::load(&pin).unwrap();

        let w = a.sync(&intent, &links, Heard::Never, true, false).unwrap();
        assert!(w >= 2, "attach + entry: {w}");
        assert!(!a.status.answering && a.status.enabled);
        assert_eq!(a.status.gratuitous_arps, 0);
        assert!(arping_from(&cl, 1).is_empty(), "no word yet, no answer");

        a.sync(
            &intent,
            &links,
            Heard::At(std::time::Instant::now()),
            false,
            false,
        )
        .unwrap();
        assert!(a.status.answering, "{:?}", a.status);
        assert_eq!(a.status.gratuitous_arps, 1, "the takeover is announced");
        assert_eq!(arping_from(&cl, 1), vec![mac1.clone()]);
        assert_eq!(a.status.announced.len(), 1);
        assert_eq!(a.status.announced[0].mac, mac1);

        // No further word: silent by itself after the lease, before the agent notices.
        let last_word = std::time::Instant::now();
        a.sync(&intent, &links, Heard::At(last_word), false, false)
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(TEST_LEASE_MS + 100));
        assert!(arping_from(&cl, 2).is_empty(), "answered past the lease");
        a.sync(&intent, &links, Heard::At(last_word), false, false)
            .unwrap();
        assert!(!a.status.answering);
        assert_eq!(a.status.lapses, 1);

        // A word while a newer intent waits is not taken; once the intent is in, it is.
        let word = std::time::Instant::now();
        a.sync(&intent, &links, Heard::At(word), false, true)
            .unwrap();
        assert!(!a.status.answering, "renewed on a stale intent");
        let w = a
            .sync(&intent, &links, Heard::At(word), true, false)
            .unwrap();
        assert_eq!(w, 0, "same entries: nothing written");
        assert!(a.status.answering);
        assert_eq!(a.status.gratuitous_arps, 2, "a comeback is a takeover");

        // The takeover's announcement is repeated while the node answers.
        let before = a.status.gratuitous_arp_repeats;
        std::thread::sleep(std::time::Duration::from_millis(1_100));
        a.sync(
            &intent,
            &links,
            Heard::At(std::time::Instant::now()),
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            a.status.gratuitous_arp_repeats,
            before + 2,
            "{:?}",
            a.status
        );

        // Announcements off: entries gone, nobody answers.
        let mut off = intent.clone();
        off.datapath.l2_announcements = false;
        let w = a
            .sync(
                &off,
                &links,
                Heard::At(std::time::Instant::now()),
                true,
                false,
            )
            .unwrap();
        assert_eq!(w, 1, "the entry removed");
        assert!(!a.status.enabled && a.list().unwrap().is_empty());
        assert!(arping_from(&cl, 1).is_empty());
    })
    .join()
    .unwrap();
}
