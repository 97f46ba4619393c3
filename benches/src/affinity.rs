//! Where the client and the servers run: pinned to fixed CPUs, so a run does not depend
//! on where the scheduler happens to put them.
//!
//! On a small virtual machine this matters more than anything the code does at one
//! call in flight: a wake-up sent to another, idle CPU costs tens of microseconds (the
//! virtual CPU has to be woken by the host), one on the same CPU a few.

use std::io;

/// How the client (driver) and the server processes are placed on CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CpuLayout {
    /// Client on CPU 0, servers on CPU 1: each side has a core of its own, as on two
    /// machines; every call crosses cores.
    #[default]
    Split,
    /// Client and servers both on CPU 0: no parallelism, so calls per second measure
    /// the whole CPU cost of a call, client and server together.
    Shared,
    /// Not pinned: wherever the scheduler puts them (noisy).
    None,
}

impl CpuLayout {
    /// The CPU the client runs on, if pinned.
    pub fn client_cpu(self) -> Option<usize> {
        match self {
            CpuLayout::Split | CpuLayout::Shared => Some(0),
            CpuLayout::None => None,
        }
    }

    /// The CPU the servers run on, if pinned.
    pub fn server_cpu(self) -> Option<usize> {
        match self {
            CpuLayout::Split => Some(1),
            CpuLayout::Shared => Some(0),
            CpuLayout::None => None,
        }
    }
}

/// Pins the calling thread, and so every thread it starts afterwards, to `cpu`.
///
/// # Errors
///
/// If the affinity cannot be set (no such CPU, or not allowed).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // Not looked up in `get_core_ids`: that lists only the CPUs this thread may
    // already use, and a child inherits its parent's pinning.
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot pin this thread to CPU {cpu}"
        )))
    }
}
