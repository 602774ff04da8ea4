//! `BPF_PROG_TEST_RUN` edge: feeds a frame through a loaded program and returns its verdict and the
//! rewritten frame. Used by the datapath tests and the benchmarks on the same packet tables.

use std::io;
use std::os::fd::RawFd;

/// What one test run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return code (XDP_* / TC_ACT_*).
    pub retval: u32,
    /// The frame after the program ran.
    pub data: Vec<u8>,
    /// Average nanoseconds per run as measured by the kernel.
    pub duration_ns: u32,
}

// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog_fd` on `frame` `repeat` times (at least once). `ctx` is an optional context
/// (`struct __sk_buff` / `struct xdp_md`) passed as bytes.
pub fn test_run(
    prog_fd: RawFd,
    frame: &[u8],
    repeat: u32,
    ctx: Option<&[u8]>,
) -> io::Result<TestRunOutput> {
    // Room for encapsulation headers a program may push.
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..Default::default()
    };
    if let Some(c) = ctx {
        attr.ctx_size_in = c.len() as u32;
        attr.ctx_in = c.as_ptr() as u64;
    }
    // SAFETY: attr points at live buffers of the sizes given, for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        retval: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}
