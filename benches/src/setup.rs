//! The two setups `rpc-bench` measures, and what the default one needs: each client
//! in a child process of its own, and the peak resident memory of both processes.
//!
//! `--config pinned` (the default) is the favourable setup: one busy thread per side,
//! pinned CPUs. `--config default` is what users run (issue 12): both sides on the
//! multi-threaded runtime `#[tokio::main]` builds, `Server::builder()` and
//! `Client::connect` defaults, no pinning. There each measurement runs its client as
//! `rpc-bench client ...` in a fresh child process, so the client's peak RSS
//! (`VmHWM`) belongs to one system and one cell, not to everything the driver ran
//! before; the server's is read from `/proc/<pid>/status` before it is killed.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::load::{Load, Measurement};
use crate::server_process::ServerProcess;
use crate::systems::System;

/// Which setup a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Setup {
    /// Single-threaded runtimes on both sides, one server worker, CPUs as `--cpus`
    /// says: the favourable setup.
    #[default]
    Pinned,
    /// What users run: multi-threaded runtimes as `#[tokio::main]` builds them,
    /// default worker counts and client settings, no pinning (`--cpus` is ignored);
    /// peak RSS of both processes is reported.
    Default,
}

/// One measurement in the default setup, with both processes' peak memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Calls and latencies.
    pub measurement: Measurement,
    /// The server process's peak resident set (`VmHWM`), in KiB.
    pub server_peak_kib: u64,
    /// The client process's peak resident set (`VmHWM`), in KiB.
    pub client_peak_kib: u64,
}

/// The peak resident set (`VmHWM` in `/proc/<pid>/status`, Linux only) of process
/// `pid`, or of this process if `None`, in KiB.
///
/// # Errors
///
/// If the file cannot be read or has no `VmHWM` line.
pub fn peak_rss_kib(pid: Option<u32>) -> io::Result<u64> {
    let path = pid.map_or_else(
        || "/proc/self/status".to_owned(),
        |pid| format!("/proc/{pid}/status"),
    );
    let status = fs::read_to_string(&path)?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmHWM in {path}")))
}

/// Starts `program server --system <system> --config default` and waits for its port.
///
/// # Errors
///
/// As [`ServerProcess::start_command`].
pub(crate) fn start_server_as_users_do(
    program: &Path,
    system: System,
) -> io::Result<ServerProcess> {
    let mut command = Command::new(program);
    command.args(["server", "--system", system.name(), "--config", "default"]);
    ServerProcess::start_command(command, system.name())
}

/// Runs one measurement of the default setup: a fresh server process, and the client
/// as `program client ...` in a child process; then reads both peaks.
///
/// # Errors
///
/// If either process fails, or the client's report cannot be read.
pub fn measure_as_users_do(program: &Path, system: System, load: &Load) -> Result<Sample, String> {
    let server = start_server_as_users_do(program, system).map_err(|e| e.to_string())?;
    let output = Command::new(program)
        .args(["client", "--system", system.name()])
        .args(["--addr", &server.addr().to_string()])
        .args(["--payload", &load.payload.to_string()])
        .args(["--in-flight", &load.in_flight.to_string()])
        .args(["--warmup", &load.warmup.as_secs_f64().to_string()])
        .args(["--duration", &load.duration.as_secs_f64().to_string()])
        .args(["--chain", load.chain.name()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the {system} client: {e}"))?;
    let server_peak_kib = peak_rss_kib(Some(server.pid())).map_err(|e| e.to_string())?;
    drop(server);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the {system} client failed ({}): {}",
            output.status,
            stdout.trim()
        ));
    }
    let (measurement, client_peak_kib) = parse_client_report(&stdout)?;
    Ok(Sample {
        measurement,
        server_peak_kib,
        client_peak_kib,
    })
}

/// The first word of the line a client child prints.
const REPORT_TAG: &str = "rpc-bench-client";

/// The line a client child prints on stdout: its measurement and its own peak RSS.
pub(crate) fn client_report(m: &Measurement, peak_kib: u64) -> String {
    format!(
        "{REPORT_TAG} {} {} {} {} {} {} {peak_kib} {}",
        m.calls,
        m.seconds,
        m.p50.as_nanos(),
        m.p99.as_nanos(),
        m.p999.as_nanos(),
        m.errors,
        m.first_error.as_deref().unwrap_or("").replace('\n', " "),
    )
}

/// Reads the line of [`client_report`] back.
fn parse_client_report(text: &str) -> Result<(Measurement, u64), String> {
    let bad = || format!("unreadable client report: {:?}", text.trim());
    let line = text
        .lines()
        .find(|l| l.starts_with(REPORT_TAG))
        .ok_or_else(bad)?;
    let mut fields = line.splitn(9, ' ').skip(1);
    let mut next = || fields.next().ok_or_else(bad);
    let int = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let calls = int(next()?)?;
    let seconds: f64 = next()?.parse().map_err(|_| bad())?;
    let p50 = Duration::from_nanos(int(next()?)?);
    let p99 = Duration::from_nanos(int(next()?)?);
    let p999 = Duration::from_nanos(int(next()?)?);
    let errors = int(next()?)?;
    let peak_kib = int(next()?)?;
    let first_error = next().ok().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok((
        Measurement {
            calls,
            seconds,
            p50,
            p99,
            p999,
            errors,
            first_error,
        },
        peak_kib,
    ))
}

/// The client child's side: runs `load` against `addr` as a user's binary would and
/// returns the line to print.
///
/// # Errors
///
/// If the run fails, or this process's peak RSS cannot be read.
pub fn run_client_child(system: System, addr: SocketAddr, load: &Load) -> io::Result<String> {
    let measurement = system.measure_as_users_do(addr, load)?;
    let peak = peak_rss_kib(None)?;
    Ok(client_report(&measurement, peak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_report_reads_back() {
        let m = Measurement {
            calls: 1234,
            seconds: 3.0,
            p50: Duration::from_nanos(70_500),
            p99: Duration::from_micros(130),
            p999: Duration::from_micros(400),
            errors: 1,
            first_error: Some("echo of 16 bytes came back with 3".to_owned()),
        };
        let line = client_report(&m, 36_000);
        assert_eq!(
            parse_client_report(&format!("noise\n{line}\n")),
            Ok((m.clone(), 36_000))
        );
        let clean = Measurement {
            errors: 0,
            first_error: None,
            ..m
        };
        assert_eq!(
            parse_client_report(&client_report(&clean, 1)),
            Ok((clean, 1))
        );
        assert!(parse_client_report("rpc-bench-client 1 2").is_err());
    }

    #[test]
    fn reads_own_peak_rss() {
        assert!(peak_rss_kib(None).expect("VmHWM of this process") > 0);
    }
}
