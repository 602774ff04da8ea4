//! Scale check (ignored by default; run with `--release -- --ignored scale`): the operator
//! benchmark's shape, 10,000 LoadBalancer Services over 100 pools.

use std::time::Instant;

use super::*;

fn pools() -> Vec<Pool> {
    (0..100)
        .map(|i| {
            mk_pool(
                &format!("pool-{i:03}"),
                &[&format!("10.{}.{}.0/24", i / 50, i % 50 * 4)],
            )
            .with(|p| {
                p.creation_timestamp = i;
                p.service_selector = Some(selector(&[("pool", &format!("{i}"))]));
            })
        })
        .collect()
}

fn service(i: usize) -> Service {
    mk_svc(&format!("ns-{}", i % 10), &format!("svc-{i}"))
        .created(1000 + i as i64 / 50)
        .label("pool", &format!("{}", i % 100))
        .ports(&[80])
}

// 10k Services arrive one by one, get written back, survive a pool edit and a restart; prints
// the time of each phase.
#[test]
#[ignore]
fn scale_10k_services_100_pools() {
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let mut pool_map: BTreeMap<String, Pool> = BTreeMap::new();
    for p in pools() {
        pool_map.insert(p.name.clone(), p.clone());
        ipam.apply_pool(p);
    }
    let mut services: BTreeMap<ServiceKey, Service> = BTreeMap::new();

    let t = Instant::now();
    let mut writes = 0;
    for i in 0..10_000 {
        let s = service(i);
        let ch = ipam.apply_service(s.clone());
        writes += ch.services.len();
        services.insert(s.key(), s);
    }
    let create = t.elapsed();
    assert_eq!(writes, 10_000);

    let t = Instant::now();
    for s in services.values_mut() {
        let status = ipam.service_status(&s.key()).unwrap().clone();
        *s = written(s.clone(), &status);
        assert!(ipam.apply_service(s.clone()).services.is_empty());
    }
    let echo = t.elapsed();

    let t = Instant::now();
    let mut p = pool_map["pool-007"].clone();
    p.blocks.push(Block::Cidr("192.0.2.0/24".parse().unwrap()));
    p.generation = 2;
    let ch = ipam.apply_pool(p);
    assert!(ch.services.is_empty());
    let pool_edit = t.elapsed();

    let t = Instant::now();
    let mut restarted = LbIpam::new(LbIpamConfig::default());
    let ch = restarted.reset(LbIpamConfig::default(), pools(), services.values().cloned());
    assert!(ch.services.is_empty());
    let restart = t.elapsed();

    let t = Instant::now();
    for i in 0..1000 {
        ipam.delete_service(&service(i * 10).key());
    }
    let delete = t.elapsed();

    // Unwritten grants: a burst of 2,000 new Services, then an older one arriving late.
    let t = Instant::now();
    for i in 10_000..12_000 {
        ipam.apply_service(service(i));
    }
    ipam.apply_service(service(12_000).created(0));
    let burst = t.elapsed();

    println!(
        "create 10k: {create:?}, echo 10k: {echo:?}, pool edit: {pool_edit:?}, restart: {restart:?}, delete 1k: {delete:?}, burst 2k + late: {burst:?}"
    );
}
