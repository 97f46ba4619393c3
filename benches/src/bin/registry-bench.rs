//! `registry-bench`: the embedded registry at scale, in its own process.
//!
//! The registry runs as a child process of this binary (`registry-bench registry`,
//! killed by PID when done). The driver (this process) then:
//!
//! 1. opens `--leases` provider connections and `--consumers` consumer connections;
//! 2. takes one lease per provider connection and registers `--instances` instances
//!    spread over `--services` services (10 000 / 1 000 / 1 000 by default: ten
//!    instances per lease, ten per service);
//! 3. heartbeats every lease every `--heartbeat` (2 s), spread evenly;
//! 4. has every consumer connection long-poll `watch` one of the first
//!    `--watched-services` services (so each change fans out to
//!    `consumers / watched-services` subscribers);
//! 5. churns `--churn` registrations and deregistrations per second over the watched
//!    services for `--duration` seconds, timing each change from just before the
//!    `register`/`deregister` call to its arrival at each subscriber.
//!
//! It reports the registry's CPU (from `/proc/<pid>/stat`) during the measured window,
//! its resident memory (`VmRSS`) empty, with connections, and with every instance, the
//! memory per instance, and the change-to-subscriber latency p50 / p99 / max. Linux
//! only (it reads `/proc`).
//!
//! ```text
//! cargo run --release -p rpc-benches --bin registry-bench                 # full scale, ~40 s
//! cargo run --release -p rpc-benches --bin registry-bench -- --quick      # CI smoke run
//! ```

use std::io;
use std::process::{Child, Command as ProcessCommand, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rpc_core::Client;
use rpc_registry::{
    Instance, InstanceKey, LeaseId, LeaseRequest, RegistryApiClient, RegistryConfig,
    RegistryServer, Revision,
};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measures the embedded registry at scale")]
struct Args {
    /// Run the registry itself (used by the driver; not for people).
    #[command(subcommand)]
    command: Option<Sub>,
    /// Instances registered in all.
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Services they are spread over.
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Provider leases (one connection each), heartbeating.
    #[arg(long, default_value_t = 1_000)]
    leases: usize,
    /// Subscribed consumer connections.
    #[arg(long, default_value_t = 1_000)]
    consumers: usize,
    /// Services the consumers watch (and the churn changes).
    #[arg(long, default_value_t = 100)]
    watched_services: usize,
    /// Heartbeat interval of every lease, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    heartbeat_ms: u64,
    /// Registrations plus deregistrations per second.
    #[arg(long, default_value_t = 20)]
    churn: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// A small, short run that proves the harness works (numbers not meaningful).
    #[arg(long)]
    quick: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve a registry on 127.0.0.1:0 and print its address.
    Registry,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Sub::Registry) = args.command {
        return match serve_registry() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("registry: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.quick {
        args.instances = 200;
        args.services = 20;
        args.leases = 20;
        args.consumers = 20;
        args.watched_services = 10;
        args.duration = 3;
    }
    match drive(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The child: a registry with default settings until stdin closes.
fn serve_registry() -> io::Result<()> {
    rlimit::increase_nofile_limit(65_536)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let registry = RegistryServer::bind("127.0.0.1:0", RegistryConfig::default()).await?;
        println!("{}", registry.local_addr());
        // Ends when the driver closes our stdin (or is gone).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = io::Read::read_to_end(&mut io::stdin(), &mut sink);
        })
        .await
        .map_err(io::Error::other)?;
        registry.shutdown().await
    })
}

/// Kills the registry child by PID when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) of a process, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc/pid/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here, after pid and comm, 11 and 12.
    let tick = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc/pid/stat"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ): 100 on every Linux
/// architecture this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// Service name of service number `n`.
fn service(n: usize) -> String {
    format!("bench.Service{n:04}")
}

/// Address of instance number `n` (distinct per instance; nothing listens there).
fn addr(n: usize) -> String {
    let n = n as u32;
    format!(
        "10.{}.{}.{}:{}",
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255,
        7000 + n % 1000
    )
}

async fn connect(addr: std::net::SocketAddr) -> io::Result<RegistryApiClient> {
    let client = Client::builder()
        .timeout(Duration::from_secs(10))
        .connect(addr)
        .await
        .map_err(io::Error::other)?;
    Ok(RegistryApiClient::new(client))
}

fn drive(args: &Args) -> io::Result<()> {
    if args.services == 0 || args.leases == 0 || args.watched_services == 0 {
        return Err(io::Error::other(
            "services, leases and watched services must be above 0",
        ));
    }
    let watched = args.watched_services.min(args.services);
    rlimit::increase_nofile_limit((args.leases + args.consumers + 64) as u64)?;
    let mut child = ProcessCommand::new(std::env::current_exe()?)
        .arg("registry")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let registry = Reaper(child);
    let pid = registry.0.id();
    let mut line = String::new();
    io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut line)?;
    let registry_addr: std::net::SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("registry printed {line:?}")))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        std::thread::sleep(Duration::from_millis(200));
        let rss_empty = rss_kib(pid)?;

        // Connections first, so their memory is told apart from the instances'.
        let mut providers = Vec::with_capacity(args.leases);
        for _ in 0..args.leases {
            providers.push(connect(registry_addr).await?);
        }
        let mut consumers = Vec::with_capacity(args.consumers);
        for _ in 0..args.consumers {
            consumers.push(connect(registry_addr).await?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_connected = rss_kib(pid)?;

        // Leases and instances.
        let started = Instant::now();
        let mut leases = Vec::with_capacity(args.leases);
        for api in &providers {
            let lease = api
                .grant(LeaseRequest::new("bench", 0))
                .await
                .map_err(io::Error::other)?;
            leases.push(lease.id);
        }
        let mut registrations = Vec::new();
        for n in 0..args.instances {
            let lease = n % args.leases;
            let api = providers[lease].clone();
            let id = leases[lease];
            let instance = Instance::new(service(n % args.services), addr(n))
                .metadata("zone", format!("zone-{}", n % 3))
                .metadata("build", "2026.12.1");
            registrations.push(async move { api.register(id, instance).await });
            if registrations.len() == 256 {
                for result in futures_util::future::join_all(registrations.drain(..)).await {
                    result.map_err(io::Error::other)?;
                }
            }
        }
        for result in futures_util::future::join_all(registrations).await {
            result.map_err(io::Error::other)?;
        }
        let load_time = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_loaded = rss_kib(pid)?;

        let stop = Arc::new(AtomicBool::new(false));
        // Heartbeats, spread evenly over the interval.
        let heartbeat = Duration::from_millis(args.heartbeat_ms);
        let mut tasks = Vec::new();
        let heartbeat_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for (i, (api, id)) in providers.iter().cloned().zip(leases.iter().copied()).enumerate() {
            let stop = stop.clone();
            let failures = heartbeat_failures.clone();
            let offset = heartbeat.mul_f64(i as f64 / args.leases as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let mut ticks = tokio::time::interval(heartbeat);
                while !stop.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    if api.heartbeat(id).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }

        // When each watched service last changed (set just before the call).
        let changed_at: Arc<Vec<Mutex<Option<Instant>>>> =
            Arc::new((0..watched).map(|_| Mutex::new(None)).collect());
        let latencies = Arc::new(Mutex::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ));
        let mut watchers = Vec::new();
        for (i, api) in consumers.iter().cloned().enumerate() {
            let s = i % watched;
            let name = service(s);
            let (stop, changed_at, latencies) = (stop.clone(), changed_at.clone(), latencies.clone());
            watchers.push(tokio::spawn(async move {
                let mut since = match api.lookup(name.clone()).await {
                    Ok(view) => view.revision,
                    Err(_) => Revision::default(),
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok(view) = api
                        .watch(name.clone(), since, 2_000)
                        .timeout(Duration::from_secs(5))
                        .await
                    else {
                        continue;
                    };
                    if view.revision != since {
                        let at = *changed_at[s].lock().unwrap();
                        if let Some(at) = at {
                            let micros = at.elapsed().as_micros().max(1) as u64;
                            let _ = latencies.lock().unwrap().record(micros);
                        }
                    }
                    since = view.revision;
                }
            }));
        }
        // Let every watcher reach its long poll before measuring.
        tokio::time::sleep(Duration::from_millis(1000)).await;

        // Churn: one change every 1/churn s, round-robin over the watched services, each
        // a registration or a deregistration of one extra instance.
        let churner = providers[0].clone();
        let churn_lease: LeaseId = churner
            .grant(LeaseRequest::new("churn", 0))
            .await
            .map_err(io::Error::other)?
            .id;
        let churn_heart = {
            let (api, stop) = (churner.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = api.heartbeat(churn_lease).await;
                    tokio::time::sleep(heartbeat).await;
                }
            })
        };
        let cpu_before = cpu_ticks(pid)?;
        let measured_from = Instant::now();
        let mut changes = 0u64;
        if args.churn > 0 {
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.churn);
            let mut registered = vec![false; watched];
            let mut n = 0usize;
            while measured_from.elapsed() < Duration::from_secs(args.duration) {
                ticks.tick().await;
                let s = n % watched;
                n += 1;
                let instance = Instance::new(service(s), addr(args.instances + s));
                *changed_at[s].lock().unwrap() = Some(Instant::now());
                let result = if registered[s] {
                    churner
                        .deregister(churn_lease, InstanceKey::clone(&instance.key()))
                        .await
                } else {
                    churner.register(churn_lease, instance).await
                };
                result.map_err(io::Error::other)?;
                registered[s] = !registered[s];
                changes += 1;
            }
        } else {
            tokio::time::sleep(Duration::from_secs(args.duration)).await;
        }
        let wall = measured_from.elapsed();
        let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / TICKS_PER_SECOND;
        let rss_end = rss_kib(pid)?;
        // Let the last change reach its subscribers.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        churn_heart.abort();
        for task in tasks.into_iter().chain(watchers) {
            task.abort();
        }

        let h = latencies.lock().unwrap().clone();
        let per_instance = (rss_loaded.saturating_sub(rss_connected) * 1024) as f64
            / args.instances.max(1) as f64;
        println!("registry-bench: registry in its own process (2 worker reactors, default settings)");
        println!(
            "scale: {} instances, {} services, {} leases heartbeating every {:?}, {} consumer connections watching {} services ({} subscribers per change), churn {}/s, measured {:.1} s",
            args.instances,
            args.services,
            args.leases,
            heartbeat,
            args.consumers,
            watched,
            args.consumers / watched,
            args.churn,
            wall.as_secs_f64()
        );
        println!("registration of all instances: {:.2} s", load_time.as_secs_f64());
        println!(
            "registry CPU while measured: {:.1} % of one core ({:.2} s over {:.1} s); heartbeat failures: {}",
            100.0 * cpu / wall.as_secs_f64(),
            cpu,
            wall.as_secs_f64(),
            heartbeat_failures.load(Ordering::Relaxed)
        );
        println!(
            "registry RSS: empty {} KiB, with {} connections {} KiB, loaded {} KiB, at the end {} KiB",
            rss_empty,
            args.leases + args.consumers,
            rss_connected,
            rss_loaded,
            rss_end
        );
        println!("memory per instance: {per_instance:.0} bytes (loaded minus connected, over instances)");
        println!(
            "change-to-subscriber latency: {} deliveries of {} changes; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            h.len(),
            changes,
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
        drop(registry);
        Ok(())
    })
}
