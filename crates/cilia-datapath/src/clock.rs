//! The load balancer's clock, from user space. The datapath reads `bpf_jiffies64()`: the verifier
//! inlines it, where the ktime helpers are calls (about 30 ns per packet on machines whose return
//! thunks make every kernel `ret` expensive; see the service_lb bench). Jiffies tick at the
//! kernel's `CONFIG_HZ`, which user space cannot read, and no file holds the counter for every
//! user, so both are taken from the datapath itself: `ebpf/clock.c` writes `bpf_jiffies64()` into a
//! test frame, and HZ is two such readings against `CLOCK_MONOTONIC`.
//!
//! Conntrack counts in ticks of `2^shift` jiffies with `shift = ⌊log2 HZ⌋` (0.5 s to 1 s at any
//! HZ: a shift, not a division, on the hit path); lifetimes are written into the node config in
//! those ticks, rounded up.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};

use crate::testrun::test_run;

/// The object with `cil_clock`.
pub static CLOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/clock.o"));

/// The kernel HZ values in use (`kernel/Kconfig.hz` offers 100, 250, 300 and 1000; 24 to 1024 appear
/// on some architectures).
const KNOWN_HZ: [u32; 10] = [24, 32, 48, 64, 100, 128, 250, 256, 300, 1000];
/// Also 1024.
const MAX_HZ: u32 = 1024;

/// How long the HZ calibration counts jiffies (between two jiffy edges, so ±1 µs, not ±1 jiffy).
const CALIBRATION: Duration = Duration::from_millis(60);

/// The datapath's clock: jiffies and their rate.
pub struct Clock {
    _obj: Ebpf,
    prog: RawFd,
    hz: u32,
}

static CLOCK: OnceLock<Result<Clock, String>> = OnceLock::new();

impl Clock {
    /// The process's clock, loaded and calibrated on first use (about 70 ms, once).
    pub fn get() -> io::Result<&'static Clock> {
        CLOCK
            .get_or_init(|| Clock::load().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| io::Error::other(format!("datapath clock: {e}")))
    }

    fn load() -> Result<Clock, Box<dyn std::error::Error>> {
        let mut obj = EbpfLoader::new().load(CLOCK_OBJ)?;
        let prog: &mut Xdp = obj
            .program_mut("cil_clock")
            .ok_or("no cil_clock in clock.o")?
            .try_into()?;
        prog.load()?;
        let fd = prog.fd()?.as_fd().as_raw_fd();
        let mut c = Clock {
            _obj: obj,
            prog: fd,
            hz: 0,
        };
        c.hz = c.calibrate()?;
        Ok(c)
    }

    /// `bpf_jiffies64()` now.
    pub fn jiffies(&self) -> io::Result<u64> {
        let out = test_run(self.prog, &[0u8; 64], 1, None)?;
        let b: [u8; 8] = out
            .data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| io::Error::other("cil_clock returned a short frame"))?;
        Ok(u64::from_ne_bytes(b))
    }

    /// The kernel's HZ.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// The conntrack tick shift for this kernel.
    pub fn tick_shift(&self) -> u8 {
        tick_shift(self.hz)
    }

    /// The datapath's conntrack tick now (`jiffies >> shift`, truncated as the datapath does).
    pub fn ct_tick(&self) -> io::Result<u32> {
        Ok((self.jiffies()? >> self.tick_shift()) as u32)
    }

    /// `secs` in conntrack ticks, rounded up.
    pub fn ct_ticks(&self, secs: u64) -> u32 {
        ticks(secs, self.hz, self.tick_shift())
    }

    /// Jiffies counted between two jiffy edges about CALIBRATION apart, per second of
    /// CLOCK_MONOTONIC, snapped to a known HZ.
    fn calibrate(&self) -> io::Result<u32> {
        let (j0, t0) = self.edge()?;
        std::thread::sleep(CALIBRATION);
        let (j1, t1) = self.edge()?;
        let measured = (j1 - j0) as f64 / (t1 - t0).as_secs_f64();
        snap_hz(measured).ok_or_else(|| {
            io::Error::other(format!(
                "jiffies advance at {measured:.1}/s, not a kernel HZ"
            ))
        })
    }

    /// The first reading after the jiffies counter moves, and when it was taken.
    fn edge(&self) -> io::Result<(u64, Instant)> {
        let start = self.jiffies()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let j = self.jiffies()?;
            let t = Instant::now();
            if j != start {
                return Ok((j, t));
            }
            if t > deadline {
                return Err(io::Error::other("jiffies did not move for 1 s"));
            }
        }
    }
}

/// `⌊log2 hz⌋`: ticks of `2^shift` jiffies last between 0.5 s and 1 s.
pub fn tick_shift(hz: u32) -> u8 {
    (31 - hz.max(1).leading_zeros()) as u8
}

/// `secs` in ticks of `2^shift` jiffies at `hz`, rounded up (a lifetime is never cut short).
pub fn ticks(secs: u64, hz: u32, shift: u8) -> u32 {
    let jiffies = secs * u64::from(hz);
    jiffies.div_ceil(1u64 << shift) as u32
}

/// The known HZ nearest a measured rate within 3%, or the rate itself when it is a plausible HZ no
/// list knows (rounded); None when it is no plausible HZ at all.
pub fn snap_hz(measured: f64) -> Option<u32> {
    let off = |hz: u32| (measured - f64::from(hz)).abs() / f64::from(hz);
    if let Some(&hz) = KNOWN_HZ
        .iter()
        .chain(std::iter::once(&MAX_HZ))
        .filter(|&&hz| off(hz) <= 0.03)
        .min_by(|a, b| off(**a).total_cmp(&off(**b)))
    {
        return Some(hz);
    }
    (10.0..=2000.0)
        .contains(&measured)
        .then(|| measured.round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_shift_gives_half_to_one_second_ticks() {
        for hz in [24, 32, 48, 64, 100, 128, 250, 256, 300, 1000, 1024] {
            let s = tick_shift(hz);
            let tick_s = f64::from(1u32 << s) / f64::from(hz);
            assert!(
                (0.5..=1.0).contains(&tick_s),
                "HZ {hz}: shift {s}, tick {tick_s} s"
            );
        }
        assert_eq!(tick_shift(250), 7);
        assert_eq!(tick_shift(1000), 9);
        assert_eq!(tick_shift(100), 6);
        assert_eq!(tick_shift(300), 8);
    }

    #[test]
    fn ticks_round_up_and_never_shorten_a_lifetime() {
        // 60 s at HZ 250 = 15000 jiffies = 117.19 ticks of 128 → 118.
        assert_eq!(ticks(60, 250, 7), 118);
        assert_eq!(ticks(0, 250, 7), 0);
        // 1 s at HZ 1000 = 1000 jiffies = 1.95 ticks of 512 → 2.
        assert_eq!(ticks(1, 1000, 9), 2);
        for hz in [100, 250, 300, 1000] {
            let s = tick_shift(hz);
            for secs in [1, 10, 60, 21_600] {
                let t = ticks(secs, hz, s);
                let lasts = f64::from(t) * f64::from(1u32 << s) / f64::from(hz);
                assert!(
                    lasts >= secs as f64 && lasts < secs as f64 + 1.0,
                    "HZ {hz}, {secs} s → {t} ticks = {lasts} s"
                );
            }
        }
    }

    #[test]
    fn snap_hz_tolerates_measurement_noise_only() {
        assert_eq!(snap_hz(249.2), Some(250));
        assert_eq!(snap_hz(254.0), Some(256));
        assert_eq!(snap_hz(297.0), Some(300));
        assert_eq!(snap_hz(990.0), Some(1000));
        assert_eq!(snap_hz(1021.0), Some(1024));
        assert_eq!(snap_hz(100.9), Some(100));
        assert_eq!(snap_hz(500.0), Some(500));
        assert_eq!(snap_hz(3.0), None);
        assert_eq!(snap_hz(1e6), None);
    }
}
