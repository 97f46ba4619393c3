//! `rpc-soak`: minutes of mixed load against our server in a child process, sampling
//! the server's resident memory and open file descriptors from `/proc`, and saying at
//! the end whether both stayed flat.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-soak                  # ten minutes
//! cargo run --release -p rpc-benches --bin rpc-soak -- --duration 180
//! ```
//!
//! The load, all at once: long-lived connections each keeping calls in flight (echoes
//! of 16 B to 64 KiB; short `hold`s; `hold`s past their deadline, which the server
//! cancels; calls the caller drops early, which send CANCEL), a new client connection
//! every 100 ms that makes a few calls and goes away, and every second a raw socket that
//! sends half a header or garbage and leaves. The verdict compares the last third of
//! the samples taken after the warm-up (a fifth of the run, at most a minute) with the
//! first third: memory is flat when its mean grew by at most 5 % + 2 MiB, descriptors
//! when their maximum grew by at most 2.

#![forbid(unsafe_code)]

use std::future::IntoFuture;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rpc_benches::{
    exit_when_stdin_closes, report_port, serve_with_in_flight_cap, EchoClient, ServerProcess,
};
use rpc_core::{Blob, Client, RpcError};
use tokio::io::AsyncWriteExt;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "rpc-soak",
    about = "Long mixed load; is the server's memory flat?"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Defaults to running the soak.
    #[command(subcommand)]
    command: Option<Sub>,
    /// Seconds under load.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Long-lived client connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight on each long-lived connection.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The server under test (the soak starts it itself): prints its port, exits when
    /// stdin closes.
    Server,
}

/// Counts of the load.
#[derive(Debug, Default)]
struct Counts {
    /// Calls that returned what they should.
    ok: AtomicU64,
    /// Calls that failed as intended (deadline passed, dropped by the caller).
    expected_failures: AtomicU64,
    /// Anything else.
    unexpected: AtomicU64,
    /// Client connections opened by the churn.
    churned: AtomicU64,
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the load began.
    at: f64,
    /// Resident memory, KiB.
    rss_kib: u64,
    /// Open file descriptors.
    fds: u64,
}

fn sample(pid: u32, began: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        at: began.elapsed().as_secs_f64(),
        rss_kib,
        fds,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Server) = cli.command {
        if let Err(e) = exit_when_stdin_closes() {
            eprintln!("rpc-soak server: {e}");
            return ExitCode::FAILURE;
        }
        return match serve_with_in_flight_cap(4096, report_port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rpc-soak server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match soak(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rpc-soak: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the soak; `Ok(true)` when memory and descriptors stayed flat and no call
/// failed unexpectedly.
fn soak(cli: &Cli) -> Result<bool, String> {
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(program);
    command.arg("server");
    let server = ServerProcess::start_command(command, "soak").map_err(|e| e.to_string())?;
    let (addr, pid) = (server.addr(), server.pid());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let duration = Duration::from_secs(cli.duration);
    let began = Instant::now();
    runtime.block_on(async {
        for c in 0..cli.connections {
            let client = Client::connect(addr).await.map_err(|e| e.to_string())?;
            let echo = EchoClient::new(client);
            for t in 0..cli.in_flight {
                tokio::spawn(caller(
                    echo.clone(),
                    (c * cli.in_flight + t) as u64,
                    Arc::clone(&counts),
                    Arc::clone(&stop),
                ));
            }
        }
        tokio::spawn(churn(addr, Arc::clone(&counts), Arc::clone(&stop)));
        tokio::spawn(hostile(addr, Arc::clone(&stop)));
        Ok::<_, String>(())
    })?;

    let every = Duration::from_secs(cli.sample_every.max(1));
    let mut samples = Vec::new();
    let mut last_ok = 0;
    println!("| t (s) | RSS (MiB) | fds | calls/s | unexpected failures |");
    println!("|---:|---:|---:|---:|---:|");
    while began.elapsed() < duration {
        std::thread::sleep(
            every
                .min(duration.saturating_sub(began.elapsed()))
                .max(Duration::from_millis(10)),
        );
        let Some(s) = sample(pid, began) else {
            return Err("the server process is gone".to_owned());
        };
        let ok = counts.ok.load(Ordering::Relaxed);
        println!(
            "| {:.0} | {:.1} | {} | {:.0} | {} |",
            s.at,
            s.rss_kib as f64 / 1024.0,
            s.fds,
            (ok - last_ok) as f64 / every.as_secs_f64(),
            counts.unexpected.load(Ordering::Relaxed)
        );
        last_ok = ok;
        samples.push(s);
    }
    stop.store(true, Ordering::SeqCst);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(server);

    let warmup = (cli.duration as f64 / 5.0).min(60.0);
    let steady: Vec<Sample> = samples.iter().copied().filter(|s| s.at >= warmup).collect();
    if steady.len() < 3 {
        return Err(format!(
            "only {} samples after the {warmup:.0} s warm-up: run longer or sample more often",
            steady.len()
        ));
    }
    let third = steady.len() / 3;
    let (first, last) = (&steady[..third], &steady[steady.len() - third..]);
    let mean = |s: &[Sample]| s.iter().map(|s| s.rss_kib as f64).sum::<f64>() / s.len() as f64;
    let max_fds = |s: &[Sample]| s.iter().map(|s| s.fds).max().unwrap_or(0);
    let (rss_first, rss_last) = (mean(first), mean(last));
    let rss_flat = rss_last <= rss_first * 1.05 + 2048.0;
    let fds_flat = max_fds(last) <= max_fds(first) + 2;
    // Least-squares slope of RSS over the steady samples, KiB per minute.
    let n = steady.len() as f64;
    let (mx, my) = (
        steady.iter().map(|s| s.at).sum::<f64>() / n,
        steady.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n,
    );
    let slope = steady
        .iter()
        .map(|s| (s.at - mx) * (s.rss_kib as f64 - my))
        .sum::<f64>()
        / steady
            .iter()
            .map(|s| (s.at - mx).powi(2))
            .sum::<f64>()
            .max(1e-9)
        * 60.0;
    let ok = counts.ok.load(Ordering::Relaxed);
    let unexpected = counts.unexpected.load(Ordering::Relaxed);
    println!();
    println!(
        "rpc-soak: {:.0} s, {} calls ok ({:.0}/s), {} failed as intended (deadline, dropped), \
         {} unexpected failures, {} churned connections",
        began.elapsed().as_secs_f64(),
        ok,
        ok as f64 / began.elapsed().as_secs_f64(),
        counts.expected_failures.load(Ordering::Relaxed),
        unexpected,
        counts.churned.load(Ordering::Relaxed)
    );
    println!(
        "server RSS after the {warmup:.0} s warm-up: first third {:.1} MiB, last third {:.1} \
         MiB (slope {slope:+.0} KiB/min): {}",
        rss_first / 1024.0,
        rss_last / 1024.0,
        if rss_flat { "flat" } else { "NOT flat" }
    );
    println!(
        "server open fds: first third max {}, last third max {}: {}",
        max_fds(first),
        max_fds(last),
        if fds_flat { "flat" } else { "NOT flat" }
    );
    Ok(rss_flat && fds_flat && unexpected == 0)
}

/// One task of a long-lived connection: calls of every kind, one after another.
async fn caller(echo: EchoClient, seed: u64, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    const SIZES: [usize; 4] = [16, 1024, 16 * 1024, 64 * 1024];
    let payloads: Vec<Blob> = SIZES.iter().map(|&n| Blob::from(vec![0x5a; n])).collect();
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = (i >> 33) % 20;
        let outcome = match pick {
            0..=13 => {
                let payload = &payloads[(i >> 40) as usize % payloads.len()];
                match echo.echo(payload.clone()).await {
                    Ok(back) if back.len() == payload.len() => Ok(true),
                    Ok(_) => Err("a wrong echo".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            }
            14..=15 => echo
                .hold(5 + (i >> 45) % 20)
                .await
                .map(|_| true)
                .map_err(|e| e.to_string()),
            // Past its deadline: the server cancels the handler and answers TIMEOUT.
            16..=17 => match echo.hold(300).timeout(Duration::from_millis(40)).await {
                Err(RpcError::Timeout(_)) => Ok(false),
                other => Err(format!("a call past its deadline gave {other:?}")),
            },
            // Given up by the caller: the client sends CANCEL.
            _ => {
                match tokio::time::timeout(Duration::from_millis(10), echo.hold(200).into_future())
                    .await
                {
                    Err(_) => Ok(false),
                    Ok(other) => Err(format!("a call dropped after 10 ms gave {other:?}")),
                }
            }
        };
        match outcome {
            Ok(true) => counts.ok.fetch_add(1, Ordering::Relaxed),
            Ok(false) => counts.expected_failures.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if counts.unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("rpc-soak: unexpected failure: {e}");
                }
                0
            }
        };
    }
}

/// A new client every 100 ms: a few calls, then it goes away.
async fn churn(addr: std::net::SocketAddr, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = match Client::connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                counts.unexpected.fetch_add(1, Ordering::Relaxed);
                eprintln!("rpc-soak: churn connect failed: {e}");
                continue;
            }
        };
        counts.churned.fetch_add(1, Ordering::Relaxed);
        let echo = EchoClient::new(client);
        for _ in 0..5 {
            match echo.echo(Blob::from(vec![1u8; 512])).await {
                Ok(_) => counts.ok.fetch_add(1, Ordering::Relaxed),
                Err(_) => counts.unexpected.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Every second a raw socket that sends half a header or garbage and leaves.
async fn hostile(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        round += 1;
        if let Ok(mut raw) = tokio::net::TcpStream::connect(addr).await {
            let bytes: &[u8] = if round % 2 == 0 {
                &[0x52, 0x50, 0x01, 0x00, 0x01]
            } else {
                b"GET / HTTP/1.1\r\n\r\n"
            };
            let _ = raw.write_all(bytes).await;
        }
    }
}
