//! `rpc-mem`: the server's resident memory per idle connection and per call in flight.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-mem             # 10 000 connections, 10 000 calls
//! cargo run --release -p rpc-benches --bin rpc-mem -- --quick  # 500 and 500, the CI smoke run
//! ```
//!
//! The server is the one `rpc-bench` measures (`ours`: `#[rpc_core::service]` echo, one
//! worker reactor), run as a child process of this binary (`rpc-mem server`), and its
//! resident set is read from `VmRSS` in `/proc/<pid>/status` (Linux only). `VmData`
//! (heap and other private writable mappings, touched or not) is shown beside it: the
//! gap between the two is memory allocated but never written.
//!
//! 1. **Idle connections.** A fresh server; one warm-up connection makes one call and
//!    stays open (so one-time costs such as the worker's allocator arena are in the
//!    baseline); then N more connections are opened, each making one real `echo` call
//!    of 16 bytes, and kept open without traffic. By default (`--via raw`) each is a
//!    plain `TcpStream` that sends one request frame built with
//!    `rpc_core::protocol::encode_request` (exactly the bytes `Client` sends) and reads
//!    the whole response: cheap on the client, and the server cannot tell it from a
//!    `Client`. `--via client` opens one `rpc_core::Client` per connection instead.
//!    Once the server's RSS stops changing it is read again; per connection =
//!    difference / N.
//! 2. **Calls in flight.** A fresh server, one `Client` connection, one warm-up call;
//!    then M concurrent `hold(2000)` calls (the handler sleeps 2 s) on that connection.
//!    RSS is read 500 ms after they are sent; per call = difference / M. The server's
//!    per-connection cap on calls in flight (default 4096) is raised to M for this, or
//!    the rest would wait unread. The run checks afterwards that every call was running
//!    on the server when RSS was read (each finished less than 2 s after the read), and
//!    fails if not.
//!
//! Each phase uses a fresh server because memory freed by the first phase stays
//! resident in the allocator and would hide the second phase's growth. The open-file
//! soft limit is raised to what N connections need before the server is started, so
//! the server inherits it.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command as ProcessCommand, ExitCode};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use rpc_benches::{
    exit_when_stdin_closes, report_port, serve_with_in_flight_cap, EchoClient, ServerProcess,
};
use rpc_core::protocol::{
    encode_request, Flags, Header, RequestTarget, Status, DEFAULT_MAX_FRAME_LEN, HEADER_LEN,
};
use rpc_core::{Client, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections opened at once while setting up the idle ones.
const CONNECT_CONCURRENCY: usize = 128;
/// Timeout of the calls the idle connections make.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole run is abandoned past this (a stuck server).
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "rpc-mem",
    about = "Measures the RPC server's resident memory per idle connection and per call in flight"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Defaults to running the measurement.
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of the measurement.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the `ours` echo server on 127.0.0.1:0 and prints its port (the driver
    /// starts it itself). Exits when stdin closes.
    #[command(hide = true)]
    Server {
        /// Calls one connection may have running at once.
        #[arg(long)]
        max_in_flight: usize,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Idle connections to open (phase 1).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Calls to hold in flight on one connection (phase 2).
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// How long each held call sleeps on the server, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    hold_ms: u64,
    /// When the server's RSS is read after the held calls are sent, in milliseconds.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Payload in bytes of the `echo` call each idle connection makes before going
    /// idle. Larger payloads show what a connection keeps after a burst of traffic.
    #[arg(long, default_value_t = 16)]
    idle_payload: usize,
    /// CI smoke run: 500 connections and 500 calls (overrides --connections and
    /// --calls).
    #[arg(long)]
    quick: bool,
    /// How the idle connections are opened.
    #[arg(long, value_enum, default_value_t = Via::Raw)]
    via: Via,
}

/// How an idle connection is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// A plain TCP stream sending one request frame and reading the response.
    Raw,
    /// One `rpc_core::Client` (its own connection task) making one call.
    Client,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Server { max_in_flight }) => serve(max_in_flight),
        None => run(&cli.run),
    }
}

/// The server side: serves until stdin closes or the driver kills it.
fn serve(max_in_flight: usize) -> ExitCode {
    if let Err(e) = exit_when_stdin_closes() {
        eprintln!("rpc-mem server: cannot start the stdin watchdog: {e}");
        return ExitCode::FAILURE;
    }
    match serve_with_in_flight_cap(max_in_flight, report_port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpc-mem server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The driver: both phases, then the table.
fn run(args: &RunArgs) -> ExitCode {
    let (connections, calls) = if args.quick {
        (500, 500)
    } else {
        (args.connections, args.calls)
    };
    let settings = Settings {
        connections,
        calls,
        hold: Duration::from_millis(args.hold_ms),
        settle: Duration::from_millis(args.settle_ms),
        via: args.via,
        idle_payload: args.idle_payload,
    };
    if settings.settle >= settings.hold {
        eprintln!("rpc-mem: --settle-ms must be less than --hold-ms");
        return ExitCode::FAILURE;
    }
    match measure(&settings) {
        Ok(report) => {
            print!("{}", report.markdown(&settings));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rpc-mem: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What one run does.
#[derive(Debug)]
struct Settings {
    /// Idle connections in phase 1.
    connections: usize,
    /// Calls in flight in phase 2.
    calls: usize,
    /// How long each held call sleeps on the server.
    hold: Duration,
    /// When RSS is read after the held calls are sent.
    settle: Duration,
    /// How idle connections are opened.
    via: Via,
    /// Payload of each idle connection's `echo` call.
    idle_payload: usize,
}

/// Both phases' readings.
#[derive(Debug)]
struct Report {
    /// The open-file soft limit the server inherited.
    nofile: u64,
    /// Phase 1: right after start.
    started: Memory,
    /// Phase 1: with the warm-up connection open.
    idle_baseline: Memory,
    /// Phase 1: with all idle connections open.
    idle: Memory,
    /// Phase 1: how long opening the idle connections took.
    connect_time: Duration,
    /// Phase 2: one connection, warm-up call done.
    calls_baseline: Memory,
    /// Phase 2: with every held call running.
    in_flight: Memory,
}

impl Report {
    /// The markdown report.
    fn markdown(&self, settings: &Settings) -> String {
        let n = settings.connections;
        let m = settings.calls;
        let per_conn = self.idle.minus(self.idle_baseline);
        let per_call = self.in_flight.minus(self.calls_baseline);
        let via = match settings.via {
            Via::Raw => "raw TCP streams, one `echo` request frame each",
            Via::Client => "one `rpc_core::Client` each, one `echo` call each",
        };
        let payload = settings.idle_payload;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rpc-mem: server `ours` (one worker reactor) in its own process; VmRSS and VmData \
             from /proc/<pid>/status; open-file soft limit {}. Idle connections: {via}, \
             {payload}-byte payload, opened in {:.0} ms. Calls in flight: `hold({})` on one `Client` connection, RSS \
             read {} ms after sending.\n",
            self.nofile,
            self.connect_time.as_secs_f64() * 1e3,
            settings.hold.as_millis(),
            settings.settle.as_millis(),
        );
        let _ = writeln!(out, "| server | VmRSS | VmData |");
        let _ = writeln!(out, "|---|---:|---:|");
        row(&mut out, "after start", self.started);
        row(&mut out, "1 connection (baseline)", self.idle_baseline);
        row(&mut out, &format!("{n} idle connections"), self.idle);
        let _ = writeln!(
            out,
            "| **per idle connection** | **{:.1} KiB** | {:.1} KiB |",
            per_conn.rss_kib as f64 / n.max(1) as f64,
            per_conn.data_kib as f64 / n.max(1) as f64,
        );
        row(
            &mut out,
            "fresh server, 1 connection (baseline)",
            self.calls_baseline,
        );
        row(&mut out, &format!("{m} calls in flight"), self.in_flight);
        let _ = writeln!(
            out,
            "| **per call in flight** | **{:.0} B** | {:.0} B |",
            per_call.rss_kib as f64 * 1024.0 / m.max(1) as f64,
            per_call.data_kib as f64 * 1024.0 / m.max(1) as f64,
        );
        out
    }
}

/// One table row: what, VmRSS, VmData.
fn row(out: &mut String, what: &str, mem: Memory) {
    let _ = writeln!(
        out,
        "| {what} | {} KiB | {} KiB |",
        mem.rss_kib, mem.data_kib
    );
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    /// Resident set (`VmRSS`).
    rss_kib: i64,
    /// Private writable mappings, resident or not (`VmData`).
    data_kib: i64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    fn of(pid: u32) -> io::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> io::Result<i64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kib| kib.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            data_kib: field("VmData:")?,
        })
    }

    /// Reads until two readings 100 ms apart agree (at most 3 s).
    async fn settled(pid: u32) -> io::Result<Memory> {
        let give_up = Instant::now() + Duration::from_secs(3);
        let mut last = Memory::of(pid)?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = Memory::of(pid)?;
            if now == last || Instant::now() >= give_up {
                return Ok(now);
            }
            last = now;
        }
    }

    /// `self - base`.
    fn minus(self, base: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib - base.rss_kib,
            data_kib: self.data_kib - base.data_kib,
        }
    }
}

/// Raises the open-file limit, starts a server per phase, measures both phases.
fn measure(settings: &Settings) -> io::Result<Report> {
    // The client holds every connection, the server too, plus a few files each.
    let needed = settings.connections as u64 + 64;
    let nofile = rlimit::increase_nofile_limit(needed)?;
    if nofile < needed {
        return Err(io::Error::other(format!(
            "{} connections need {needed} open files, but the hard limit allows {nofile}; \
             raise it (ulimit -Hn) or pass fewer --connections",
            settings.connections
        )));
    }
    let program = std::env::current_exe()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let both = async {
            let (started, idle_baseline, idle, connect_time) =
                idle_connections(&program, settings).await?;
            let (calls_baseline, in_flight) = calls_in_flight(&program, settings).await?;
            Ok(Report {
                nofile,
                started,
                idle_baseline,
                idle,
                connect_time,
                calls_baseline,
                in_flight,
            })
        };
        tokio::time::timeout(RUN_LIMIT, both)
            .await
            .map_err(|_| io::Error::other(format!("the run took longer than {RUN_LIMIT:?}")))?
    })
}

/// Starts `rpc-mem server` with room for `settings.calls` calls in flight per
/// connection.
fn start_server(program: &Path, settings: &Settings) -> io::Result<ServerProcess> {
    let cap = settings
        .calls
        .max(ServerConfig::default().max_in_flight_per_connection);
    let mut command = ProcessCommand::new(program);
    command.args(["server", "--max-in-flight", &cap.to_string()]);
    ServerProcess::start_command(command, "ours")
}

/// An open connection, kept idle.
#[derive(Debug)]
#[expect(dead_code, reason = "held only to keep the connection open")]
enum Idle {
    /// A plain TCP stream.
    Raw(TcpStream),
    /// A client with its one connection.
    Client(Client),
}

/// Phase 1: memory after start, with one connection, and with `settings.connections`
/// more; and how long opening them took.
async fn idle_connections(
    program: &Path,
    settings: &Settings,
) -> io::Result<(Memory, Memory, Memory, Duration)> {
    let server = start_server(program, settings)?;
    let (pid, addr, via) = (server.pid(), server.addr(), settings.via);
    let payload = settings.idle_payload;
    let started = Memory::settled(pid).await?;
    let warm_up = open_idle(addr, via, payload).await?;
    let baseline = Memory::settled(pid).await?;
    let began = Instant::now();
    let idle: Vec<Idle> = futures_util::stream::iter(0..settings.connections)
        .map(|_| open_idle(addr, via, payload))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let connect_time = began.elapsed();
    let loaded = Memory::settled(pid).await?;
    drop(idle);
    drop(warm_up);
    drop(server);
    Ok((started, baseline, loaded, connect_time))
}

/// Opens one connection and makes one `echo` call of `payload` bytes on it.
async fn open_idle(addr: SocketAddr, via: Via, payload: usize) -> io::Result<Idle> {
    match via {
        Via::Raw => raw_echo_once(addr, payload).await.map(Idle::Raw),
        Via::Client => {
            let client = Client::builder()
                .connections(1)
                .timeout(CALL_TIMEOUT)
                .connect(addr)
                .await
                .map_err(io::Error::other)?;
            let echo = EchoClient::new(client.clone());
            let reply = echo
                .echo(rpc_core::Blob::from(vec![7u8; payload]))
                .await
                .map_err(io::Error::other)?;
            if reply.len() != payload {
                return Err(io::Error::other("echo returned the wrong payload"));
            }
            Ok(Idle::Client(client))
        }
    }
}

/// Connects, sends one `echo` request frame of `payload` bytes (encoded as `Client`
/// encodes it) and reads the whole response, which must be a success.
async fn raw_echo_once(addr: SocketAddr, payload: usize) -> io::Result<TcpStream> {
    const REQUEST_ID: u64 = 1;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut request = BytesMut::new();
    let target = RequestTarget {
        service: EchoClient::SERVICE_NAME,
        method: "echo",
        timeout: Some(CALL_TIMEOUT),
        trace: None,
        auth_token: None,
        attachments: &[],
    };
    let args = (rpc_core::Blob::from(vec![7u8; payload]),);
    encode_request(
        &mut request,
        REQUEST_ID,
        false,
        &target,
        &args,
        DEFAULT_MAX_FRAME_LEN,
    )
    .map_err(io::Error::other)?;
    stream.write_all(&request).await?;
    let mut head = [0u8; HEADER_LEN];
    tokio::time::timeout(CALL_TIMEOUT, stream.read_exact(&mut head))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response to echo"))??;
    let header = Header::parse(&head, DEFAULT_MAX_FRAME_LEN)
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other("short header"))?;
    let mut rest = vec![0u8; header.frame_len() as usize - HEADER_LEN];
    tokio::time::timeout(CALL_TIMEOUT, stream.read_exact(&mut rest))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "truncated response to echo"))??;
    if !header.flags.contains(Flags::RESPONSE)
        || header.request_id != REQUEST_ID
        || header.status != Status::Ok.code()
    {
        return Err(io::Error::other(format!(
            "unexpected answer to echo: {header:?}"
        )));
    }
    Ok(stream)
}

/// Phase 2: memory with one connection, and with `settings.calls` calls of `hold`
/// running on it.
async fn calls_in_flight(program: &Path, settings: &Settings) -> io::Result<(Memory, Memory)> {
    let server = start_server(program, settings)?;
    let pid = server.pid();
    let client = Client::builder()
        .connections(1)
        .timeout(settings.hold + Duration::from_secs(10))
        .connect(server.addr())
        .await
        .map_err(io::Error::other)?;
    let stub = EchoClient::new(client);
    // Warm-up: the timer and the call path have been used once.
    stub.hold(1).await.map_err(io::Error::other)?;
    let baseline = Memory::settled(pid).await?;

    let hold_ms = u64::try_from(settings.hold.as_millis()).unwrap_or(u64::MAX);
    let sent = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..settings.calls {
        let stub = stub.clone();
        calls.spawn(async move {
            let result = stub.hold(hold_ms).await;
            (result, Instant::now())
        });
    }
    tokio::time::sleep_until((sent + settings.settle).into()).await;
    let read_at = Instant::now();
    let loaded = Memory::of(pid)?;

    let mut first_done: Option<Instant> = None;
    let mut last_done = read_at;
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(joined) = calls.join_next().await {
        let (result, done) = joined.map_err(io::Error::other)?;
        if let Err(e) = result {
            failed += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
        first_done = Some(first_done.map_or(done, |f| f.min(done)));
        last_done = last_done.max(done);
    }
    drop(server);
    if failed > 0 {
        return Err(io::Error::other(format!(
            "{failed} of {} held calls failed; first: {}",
            settings.calls,
            first_error.unwrap_or_default()
        )));
    }
    // A handler starts at least `hold` before its call completes: a call that completed
    // before `read_at + hold` was running on the server when RSS was read, and one that
    // completed after `read_at` had not finished by then.
    if first_done.is_some_and(|first| first < read_at) || last_done >= read_at + settings.hold {
        return Err(io::Error::other(format!(
            "not every held call was running on the server when RSS was read (the last \
             finished {:.0} ms after the read, hold {} ms); raise --settle-ms or --hold-ms",
            (last_done - read_at).as_secs_f64() * 1e3,
            settings.hold.as_millis()
        )));
    }
    Ok((baseline, loaded))
}
