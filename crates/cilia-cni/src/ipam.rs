//! Pod address allocation from the node's pod CIDR (`ipam.mode: kubernetes`), persisted on disk.
//!
//! Layout of `<ipam-data-dir>/<network name>/`:
//! - one file per allocated address, named by the address (`10.244.1.7`), holding
//!   `<containerID>\n<ifname>\n`;
//! - `last_reserved_ip`: the address handed out last, so allocation goes round-robin and a released
//!   address is not handed out again right away;
//! - `lock`: every read-modify-write of the directory holds an exclusive `flock(2)` on it, so plugin
//!   processes running at once never hand out one address twice.
//!
//! Nothing lives in memory between calls: a new process (or a fresh [`IpamStore`]) sees exactly
//! what the files say, so a restart never reuses a live address. A file whose owner cannot be read
//! (a crash between create and write) still counts as taken.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

/// File holding the last address handed out.
pub const LAST_RESERVED_FILE: &str = "last_reserved_ip";
/// File every operation `flock`s.
pub const LOCK_FILE: &str = "lock";

/// The addresses a node may give to pods: its pod CIDR without the network address, the broadcast
/// address and the router IP. A /31 or /32 has no pod addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    cidr: Ipv4Net,
    router: Ipv4Addr,
}

impl Pool {
    pub fn new(cidr: Ipv4Net, router: Ipv4Addr) -> Self {
        Pool {
            cidr: cidr.trunc(),
            router,
        }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// First and last host address (as integers), if the CIDR has any.
    fn host_range(&self) -> Option<(u32, u32)> {
        if self.cidr.prefix_len() >= 31 {
            return None;
        }
        let first = u32::from(self.cidr.network()) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        Some((first, last))
    }

    /// Whether `ip` may be handed to a pod.
    pub fn is_assignable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        self.host_range()
            .is_some_and(|(first, last)| (first..=last).contains(&n) && ip != self.router)
    }

    /// How many pod addresses the pool has.
    pub fn capacity(&self) -> usize {
        self.host_range().map_or(0, |(first, last)| {
            let router_inside = (first..=last).contains(&u32::from(self.router));
            (last - first + 1) as usize - usize::from(router_inside)
        })
    }
}

/// One allocated address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    /// Empty when the file could not be read.
    pub container_id: String,
    pub ifname: String,
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("IPAM store {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The on-disk allocation store of one network.
#[derive(Debug, Clone)]
pub struct IpamStore {
    dir: PathBuf,
}

/// The exclusive lock on a store; released on drop (when the file closes).
struct StoreLock(#[allow(dead_code)] Flock<File>);

impl IpamStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(IpamStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> io::Result<StoreLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.dir.join(LOCK_FILE))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Gives `(container_id, ifname)` an address from `pool`. If the attachment already holds one in
    /// the pool it gets that one again (ADD is idempotent); the flag says whether the address is new.
    pub fn allocate(
        &self,
        pool: &Pool,
        container_id: &str,
        ifname: &str,
    ) -> Result<(Ipv4Addr, bool), IpamError> {
        let io_err = |source| IpamError::Io {
            path: self.dir.clone(),
            source,
        };
        let _lock = self.lock().map_err(io_err)?;

        let held = self.scan().map_err(io_err)?;
        if let Some(a) = held.iter().find(|a| {
            a.container_id == container_id && a.ifname == ifname && pool.is_assignable(a.ip)
        }) {
            return Ok((a.ip, false));
        }

        let Some((first, last)) = pool.host_range() else {
            return Err(IpamError::Exhausted(pool.cidr()));
        };
        let start = self
            .last_reserved()
            .map(u32::from)
            .filter(|n| (first..=last).contains(n))
            .map_or(first, |n| if n == last { first } else { n + 1 });
        let span = last - first + 1;
        for step in 0..span {
            let n = first + (start - first + step) % span;
            let ip = Ipv4Addr::from(n);
            if ip == pool.router {
                continue;
            }
            match self.create_allocation(ip, container_id, ifname) {
                Ok(()) => {
                    self.write_last_reserved(ip).map_err(io_err)?;
                    return Ok((ip, true));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(IpamError::Exhausted(pool.cidr()))
    }

    /// The addresses `(container_id, ifname)` holds.
    pub fn find(&self, container_id: &str, ifname: &str) -> io::Result<Vec<Ipv4Addr>> {
        let _lock = self.lock()?;
        Ok(self
            .scan()?
            .into_iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect())
    }

    /// Frees every address `(container_id, ifname)` holds; returns them. Freeing nothing is fine.
    pub fn release(&self, container_id: &str, ifname: &str) -> io::Result<Vec<Ipv4Addr>> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for a in self.scan()? {
            if a.container_id == container_id && a.ifname == ifname {
                remove_if_present(&self.dir.join(a.ip.to_string()))?;
                freed.push(a.ip);
            }
        }
        Ok(freed)
    }

    /// Frees one address whatever holds it (GC of a file with an unreadable owner).
    pub fn release_ip(&self, ip: Ipv4Addr) -> io::Result<()> {
        let _lock = self.lock()?;
        remove_if_present(&self.dir.join(ip.to_string()))
    }

    /// Every allocation, sorted by address.
    pub fn allocations(&self) -> io::Result<Vec<Allocation>> {
        let _lock = self.lock()?;
        self.scan()
    }

    /// Reads the directory; callers hold the lock.
    fn scan(&self) -> io::Result<Vec<Allocation>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let (container_id, ifname) = match fs::read_to_string(entry.path()) {
                Ok(s) => parse_owner(&s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => (String::new(), String::new()),
            };
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    fn create_allocation(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> io::Result<()> {
        // create_new is a second guard behind the lock: an existing file is never overwritten.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.dir.join(ip.to_string()))?;
        f.write_all(format!("{container_id}\n{ifname}\n").as_bytes())
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_last_reserved(&self, ip: Ipv4Addr) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{LAST_RESERVED_FILE}.tmp"));
        fs::write(&tmp, ip.to_string())?;
        fs::rename(&tmp, self.dir.join(LAST_RESERVED_FILE))
    }
}

fn parse_owner(s: &str) -> (String, String) {
    let mut lines = s.lines().map(str::trim);
    let container_id = lines.next().unwrap_or_default().to_string();
    let ifname = lines.next().unwrap_or_default().to_string();
    (container_id, ifname)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const POD_CIDR: &str = "10.244.0.0/22";
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
    /// Set by the multi-process test for its child processes.
    const CHILD_DIR_ENV: &str = "CILIA_CNI_IPAM_CHILD_DIR";
    const CHILD_ALLOCS: usize = 40;

    fn pool(cidr: &str) -> Pool {
        let cidr: Ipv4Net = cidr.parse().unwrap();
        Pool::new(cidr, Ipv4Addr::from(u32::from(cidr.network()) + 1))
    }

    fn store() -> (tempfile::TempDir, IpamStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = IpamStore::open(dir.path().join("cilia")).unwrap();
        (dir, store)
    }

    // The network address, the broadcast address and the router IP are never assignable.
    #[test]
    fn pool_excludes_network_broadcast_router() {
        let p = pool("10.244.1.0/24");
        assert!(!p.is_assignable("10.244.1.0".parse().unwrap()));
        assert!(!p.is_assignable("10.244.1.1".parse().unwrap()));
        assert!(!p.is_assignable("10.244.1.255".parse().unwrap()));
        assert!(!p.is_assignable("10.244.2.2".parse().unwrap()));
        assert!(p.is_assignable("10.244.1.2".parse().unwrap()));
        assert!(p.is_assignable("10.244.1.254".parse().unwrap()));
        assert_eq!(p.capacity(), 253);
        assert_eq!(pool("10.0.0.0/30").capacity(), 1);
        assert_eq!(pool("10.0.0.0/31").capacity(), 0);
        // A router outside the CIDR takes nothing from it.
        assert_eq!(
            Pool::new("10.0.0.0/30".parse().unwrap(), ROUTER).capacity(),
            2
        );
    }

    // 1,000 ADDs on one node get 1,000 distinct pod addresses, none of them reserved.
    #[test]
    fn thousand_allocations_never_reuse_a_live_address() {
        let (_dir, store) = store();
        let p = pool(POD_CIDR);
        let mut seen = HashSet::new();
        for i in 0..1000 {
            let (ip, new) = store.allocate(&p, &format!("c{i}"), "eth0").unwrap();
            assert!(new);
            assert!(p.is_assignable(ip), "{ip} is reserved");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(store.allocations().unwrap().len(), 1000);
    }

    // A second ADD of the same attachment gets the same address back.
    #[test]
    fn allocation_is_idempotent_per_attachment() {
        let (_dir, store) = store();
        let p = pool(POD_CIDR);
        let (a, new_a) = store.allocate(&p, "c1", "eth0").unwrap();
        let (b, new_b) = store.allocate(&p, "c1", "eth0").unwrap();
        let (c, _) = store.allocate(&p, "c1", "net1").unwrap();
        assert_eq!(a, b);
        assert!(new_a && !new_b);
        assert_ne!(a, c);
        assert_eq!(store.find("c1", "eth0").unwrap(), [a]);
    }

    // A released address is handed out again once the round-robin comes back to it.
    #[test]
    fn release_then_reuse() {
        let (_dir, store) = store();
        let p = pool("10.0.0.0/29"); // .2 .. .6 assignable
        let ips: Vec<_> = (0..5)
            .map(|i| store.allocate(&p, &format!("c{i}"), "eth0").unwrap().0)
            .collect();
        assert_eq!(ips[0], Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(store.release("c2", "eth0").unwrap(), [ips[2]]);
        assert!(store.release("c2", "eth0").unwrap().is_empty());
        let (again, _) = store.allocate(&p, "new", "eth0").unwrap();
        assert_eq!(again, ips[2]);
    }

    // Round-robin: right after a release, the next ADD gets a different address if one is free.
    #[test]
    fn round_robin_does_not_reuse_immediately() {
        let (_dir, store) = store();
        let p = pool(POD_CIDR);
        let (a, _) = store.allocate(&p, "c1", "eth0").unwrap();
        store.release("c1", "eth0").unwrap();
        let (b, _) = store.allocate(&p, "c2", "eth0").unwrap();
        assert_ne!(a, b);
    }

    // A full pool is an Exhausted error naming the CIDR; /31 and /32 are always exhausted.
    #[test]
    fn exhaustion_names_cidr() {
        let (_dir, store) = store();
        let p = pool("10.0.0.0/30");
        assert_eq!(
            store.allocate(&p, "c1", "eth0").unwrap().0,
            Ipv4Addr::new(10, 0, 0, 2)
        );
        let err = store.allocate(&p, "c2", "eth0").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted(c) if c == p.cidr()),
            "{err}"
        );
        assert!(err.to_string().contains("10.0.0.0/30"));
        for tiny in ["10.0.0.0/31", "10.0.0.0/32"] {
            let err = store.allocate(&pool(tiny), "c3", "eth0").unwrap_err();
            assert!(matches!(err, IpamError::Exhausted(_)));
        }
    }

    // A fresh store on the same directory (a new plugin process) sees every live allocation and
    // continues the round-robin where the last one stopped.
    #[test]
    fn allocations_persist_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(POD_CIDR);
        let first = {
            let s = IpamStore::open(dir.path()).unwrap();
            (0..10)
                .map(|i| s.allocate(&p, &format!("c{i}"), "eth0").unwrap().0)
                .collect::<Vec<_>>()
        };
        let s = IpamStore::open(dir.path()).unwrap();
        assert_eq!(s.find("c3", "eth0").unwrap(), [first[3]]);
        s.release("c0", "eth0").unwrap();
        let (next, _) = s.allocate(&p, "later", "eth0").unwrap();
        assert!(!first.contains(&next));
        assert_eq!(u32::from(next), u32::from(first[9]) + 1);
        // The files are what the module doc describes.
        let owner = fs::read_to_string(dir.path().join(first[3].to_string())).unwrap();
        assert_eq!(owner, "c3\neth0\n");
        let last = fs::read_to_string(dir.path().join(LAST_RESERVED_FILE)).unwrap();
        assert_eq!(last, next.to_string());
    }

    // An allocation file whose owner is unreadable still blocks its address.
    #[test]
    fn garbled_file_still_counts_as_taken() {
        let (_dir, store) = store();
        let p = pool("10.0.0.0/30");
        fs::write(store.dir().join("10.0.0.2"), "").unwrap();
        assert!(matches!(
            store.allocate(&p, "c1", "eth0"),
            Err(IpamError::Exhausted(_))
        ));
        store.release_ip(Ipv4Addr::new(10, 0, 0, 2)).unwrap();
        assert!(store.allocate(&p, "c1", "eth0").is_ok());
    }

    // Threads, each with its own store handle (its own lock file descriptions), never collide.
    #[test]
    fn concurrent_threads_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(POD_CIDR);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    let s = IpamStore::open(path).unwrap();
                    (0..50)
                        .map(|i| s.allocate(&p, &format!("t{t}-c{i}"), "eth0").unwrap().0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 400);
        assert_eq!(distinct.len(), 400, "an address was handed out twice");
    }

    // Separate processes (this test binary re-run as children) never hand out one address twice.
    #[test]
    fn concurrent_processes_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..4)
            .map(|i| {
                std::process::Command::new(&exe)
                    .args(["--exact", "ipam::tests::child_allocates_from_env"])
                    .args(["--test-threads=1", "--nocapture"])
                    .env(CHILD_DIR_ENV, dir.path())
                    .env("CILIA_CNI_IPAM_CHILD_ID", i.to_string())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "child allocator failed");
        }
        let store = IpamStore::open(dir.path()).unwrap();
        let all = store.allocations().unwrap();
        assert_eq!(all.len(), 4 * CHILD_ALLOCS);
        let owners: HashSet<_> = all.iter().map(|a| a.container_id.clone()).collect();
        assert_eq!(
            owners.len(),
            4 * CHILD_ALLOCS,
            "an address was handed out twice"
        );
    }

    /// Body of one child process of `concurrent_processes_never_collide`; a no-op when run alone.
    #[test]
    fn child_allocates_from_env() {
        let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
            return;
        };
        let id = std::env::var("CILIA_CNI_IPAM_CHILD_ID").unwrap();
        let s = IpamStore::open(dir).unwrap();
        let p = pool(POD_CIDR);
        for i in 0..CHILD_ALLOCS {
            s.allocate(&p, &format!("p{id}-c{i}"), "eth0").unwrap();
        }
    }
}
