//! `ethtool` feature switches through `SIOCETHTOOL`, for devices the datapath or its tests set up
//! (no `ethtool` binary needed).

/// `ethtool -K <dev> tx off` (`ETHTOOL_STXCSUM`).
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ethtool -K <dev> gro on` (`ETHTOOL_SGRO`).
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns TX checksum offload off on `dev` in the calling thread's namespace. A frame a veth's peer
/// stack sends carries only a partial checksum (CHECKSUM_PARTIAL), which has no XDP metadata:
/// native XDP that sends it on (XDP_TX) would put that partial sum on the wire. Frames from a NIC
/// carry full checksums; veths standing for wires need this.
pub fn tx_csum_off(dev: &str) -> std::io::Result<()> {
    ethtool_set(dev, ETHTOOL_STXCSUM, 0)
}

/// Turns GRO on for `dev` in the calling thread's namespace. A veth delivers frames its peer sends
/// with XDP_TX only when it runs NAPI (GRO on, or an XDP program of its own); otherwise the kernel
/// drops them.
pub fn gro_on(dev: &str) -> std::io::Result<()> {
    ethtool_set(dev, ETHTOOL_SGRO, 1)
}

/// One `ethtool_value` set command.
fn ethtool_set(dev: &str, cmd: u32, data: u32) -> std::io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let err = |what: &str, e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("SIOCETHTOOL {cmd:#x} on {dev:?}: {what}: {e}"),
        )
    };
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(err(
            "not a device name",
            std::io::ErrorKind::InvalidInput.into(),
        ));
    }
    let mut ev = EthtoolValue { cmd, data };
    // SAFETY: a zeroed ifreq holding a NUL-terminated name (length checked above) and a pointer to
    // a live ethtool_value; the socket is closed on every path after it was opened.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(err("socket", std::io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in dev.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = &mut ev as *mut EthtoolValue as *mut libc::c_char;
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut ifr);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err("ioctl", e));
        }
    }
    Ok(())
}
