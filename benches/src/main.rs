//! `rpc-bench`: ours, tarpc and a raw framed echo, side by side, one markdown table.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-bench -- --duration 3 --warmup 1 --rounds 3
//! ```
//!
//! The driver starts each system's server as a child process (`rpc-bench server
//! --system X`) for every measurement and runs the client side itself. See the
//! `rpc_benches` crate docs for the method. `--tls` also runs ours over TLS in every
//! cell, right after ours, and prints TLS over plaintext ratios:
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-bench -- --tls --systems ours --rounds 3
//! ```
//!
//! `scaling` measures ours with 1, 2, 4 and 16 connections to one server and
//! balanced over two servers, in the users' configuration:
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-bench -- scaling --rounds 3
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rpc_benches::{
    chain_table, default_table, exit_when_stdin_closes, markdown_table, measure_as_users_do,
    pin_current_thread, report_port, run_client_child, targets_table, tls_table, BenchTls,
    CellResult, ChainCell, ClientChain, CpuLayout, DefaultCell, Load, Measurement, Sample,
    ServerProcess, Setup, System,
};

#[derive(Debug, Parser)]
#[command(
    name = "rpc-bench",
    about = "Benchmarks ours vs tarpc vs a raw framed echo over one TCP connection"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Defaults to running the benchmark.
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings of the benchmark run.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Calls/s of ours with several connections per server and several servers:
    /// servers as `#[tokio::main]` with `Server::builder()` defaults, each its own
    /// process; the client on this process's multi-threaded runtime, balanced
    /// round-robin over the servers.
    Scaling(ScalingArgs),
    /// Runs one system's echo server on 127.0.0.1:0 and prints its port (the driver
    /// starts these itself). Exits when stdin closes.
    Server {
        /// Which server.
        #[arg(long, value_enum)]
        system: System,
        /// Pin the server to this CPU.
        #[arg(long)]
        cpu: Option<usize>,
        /// Where the driver wrote the TLS certificates (`ours-tls` needs them).
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// `default`: a multi-threaded runtime and `Server::builder()` defaults.
        #[arg(long, value_enum, default_value_t = Setup::Pinned)]
        config: Setup,
    },
    /// Runs one system's client against ADDR in the default setup and prints one line:
    /// its measurement and this process's peak RSS (the driver starts these itself
    /// with `--config default`).
    #[command(hide = true)]
    Client {
        /// Which client.
        #[arg(long, value_enum)]
        system: System,
        /// The server's address.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Payload size in bytes.
        #[arg(long)]
        payload: usize,
        /// Calls in flight.
        #[arg(long)]
        in_flight: usize,
        /// Seconds of warm-up.
        #[arg(long)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long)]
        duration: f64,
        /// The client filter chain (ours only).
        #[arg(long, value_enum, default_value_t = ClientChain::None)]
        chain: ClientChain,
    },
}

/// What `rpc-bench scaling` measures.
#[derive(Debug, Args)]
struct ScalingArgs {
    /// Connections per server, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 16])]
    connections: Vec<usize>,
    /// Server processes, one measurement each (balanced round-robin when more
    /// than one).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
    servers: Vec<usize>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Calls in flight (closed loop).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Seconds measured per cell.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Repeat every cell this many times (interleaved) and report medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Seconds measured per system and cell.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// CI smoke run: 0.2 s per measurement after 0.05 s of warm-up (overrides
    /// --duration and --warmup).
    #[arg(long)]
    quick: bool,
    /// Repeat each cell this many times (still interleaved) and report, for each
    /// system, the median over the rounds of calls per second and of each latency
    /// percentile (each taken on its own: one disturbed round moves none of them).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The setup: `pinned` (single-threaded runtimes, one server worker, CPUs as
    /// `--cpus` says) or `default` (what users run: `#[tokio::main]` multi-threaded
    /// runtimes, default workers and client settings, no pinning; each client in a
    /// child process, peak RSS of both processes reported).
    #[arg(long, value_enum, default_value_t = Setup::Pinned)]
    config: Setup,
    /// Where the client and the servers run (`--config pinned` only).
    #[arg(long, value_enum, default_value_t = CpuLayout::Split)]
    cpus: CpuLayout,
    /// Systems to run, in this order within each cell.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = System::ALL)]
    systems: Vec<System>,
    /// Calls in flight.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32, 256])]
    in_flight: Vec<usize>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 1024, 65536])]
    payloads: Vec<usize>,
    /// Also run ours over TLS (`ours-tls`) right after ours in every cell, and print
    /// TLS/plaintext ratios of calls per second and p99 (certificates are made at
    /// start-up).
    #[arg(long)]
    tls: bool,
    /// Worker threads of the client's runtime: 1 (the default) is a current-thread
    /// runtime; more is a multi-threaded one, as `#[tokio::main]` gives (use with
    /// `--cpus none`, or every client thread shares CPU 0).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Client filter chains to measure `ours` with, each its own measurement in every
    /// round; with more than `none`, a second table gives each chain's calls per second
    /// and p99 as a ratio to `none`. The main table shows `ours` with the first chain.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ClientChain::None])]
    client_chains: Vec<ClientChain>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Scaling(args)) => scaling(&args),
        Some(Command::Server {
            system,
            cpu,
            tls_dir,
            config,
        }) => serve(system, cpu, tls_dir.as_deref(), config),
        Some(Command::Client {
            system,
            addr,
            payload,
            in_flight,
            warmup,
            duration,
            chain,
        }) => client(system, addr, payload, in_flight, warmup, duration, chain),
        None => run(&cli.run),
    }
}

/// The server side: serves until stdin closes or the driver kills it.
fn serve(system: System, cpu: Option<usize>, tls_dir: Option<&Path>, config: Setup) -> ExitCode {
    if let Some(dir) = tls_dir {
        match BenchTls::read_from(dir) {
            Ok(tls) => tls.install(),
            Err(e) => {
                eprintln!(
                    "rpc-bench server: cannot read the certificates in {}: {e}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(cpu) = cpu {
        if let Err(e) = pin_current_thread(cpu) {
            eprintln!("rpc-bench server: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Leave with the driver even if it was killed outright and could not kill us.
    if let Err(e) = exit_when_stdin_closes() {
        eprintln!("rpc-bench server: cannot start the stdin watchdog: {e}");
        return ExitCode::FAILURE;
    }
    let result = match config {
        Setup::Pinned => system.serve(report_port),
        Setup::Default => system.serve_as_users_do(report_port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpc-bench server ({system}): {e}");
            ExitCode::FAILURE
        }
    }
}

/// The driver: every cell, every system, interleaved; then the table.
fn run(args: &RunArgs) -> ExitCode {
    let (warmup, duration) = if args.quick {
        (0.05, 0.2)
    } else {
        (args.warmup, args.duration)
    };
    let (Ok(warmup), Ok(duration)) = (
        Duration::try_from_secs_f64(warmup),
        Duration::try_from_secs_f64(duration),
    ) else {
        eprintln!("rpc-bench: --warmup and --duration must be non-negative numbers of seconds");
        return ExitCode::FAILURE;
    };
    let program = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("rpc-bench: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Counted before pinning narrows what this process sees.
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    if args.config == Setup::Default {
        return run_default(args, &program, warmup, duration, cpus);
    }
    if let Some(cpu) = args.cpus.client_cpu() {
        if let Err(e) = pin_current_thread(cpu) {
            eprintln!("rpc-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut systems = args.systems.clone();
    if args.tls && !systems.contains(&System::OursTls) {
        let at = systems
            .iter()
            .position(|s| *s == System::Ours)
            .map_or(0, |i| i + 1);
        systems.insert(at, System::OursTls);
    }
    let tls_dir = match systems.contains(&System::OursTls).then(make_certificates) {
        Some(Ok(dir)) => Some(dir),
        Some(Err(e)) => {
            eprintln!("rpc-bench: {e}");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    let began = std::time::Instant::now();
    let rounds = args.rounds.max(1);
    let chains: Vec<ClientChain> = if args.client_chains.is_empty() {
        vec![ClientChain::None]
    } else {
        args.client_chains.clone()
    };
    // Every system once per round, ours once per chain.
    let runs_per_round: usize = systems
        .iter()
        .map(|s| if *s == System::Ours { chains.len() } else { 1 })
        .sum();
    let total = args.payloads.len() * args.in_flight.len() * runs_per_round * rounds;
    let mut chain_cells = Vec::new();
    let mut done = 0;
    let mut failed = false;
    let mut cells = Vec::new();
    for &payload in &args.payloads {
        for &in_flight in &args.in_flight {
            let load = Load {
                in_flight,
                payload,
                warmup,
                duration,
                client_threads: args.client_threads.max(1),
                chain: chains[0],
            };
            let mut runs: BTreeMap<(System, ClientChain), Vec<Result<Measurement, String>>> =
                BTreeMap::new();
            for _ in 0..rounds {
                for &system in &systems {
                    let system_chains = if system == System::Ours {
                        &chains[..]
                    } else {
                        &chains[..1]
                    };
                    for &chain in system_chains {
                        let load = Load { chain, ..load };
                        let result =
                            run_one(&program, system, args.cpus, tls_dir.as_deref(), &load);
                        done += 1;
                        progress(done, total, system, &load, &result);
                        failed |= !matches!(&result, Ok(m) if m.errors == 0);
                        runs.entry((system, chain)).or_default().push(result);
                    }
                }
            }
            let mut medians: BTreeMap<(System, ClientChain), Result<Measurement, String>> = runs
                .into_iter()
                .map(|(key, results)| (key, median(results)))
                .collect();
            if args.systems.contains(&System::Ours) && chains.len() > 1 {
                chain_cells.push(ChainCell {
                    payload,
                    in_flight,
                    results: chains
                        .iter()
                        .filter_map(|&c| medians.get(&(System::Ours, c)).map(|r| (c, r.clone())))
                        .collect(),
                });
            }
            cells.push(CellResult {
                payload,
                in_flight,
                results: systems
                    .iter()
                    .filter_map(|s| medians.remove(&(*s, chains[0])).map(|r| (*s, r)))
                    .collect(),
            });
        }
    }
    let client = match args.client_threads {
        0 | 1 => "one busy thread per side per system".to_owned(),
        n => format!("servers on one thread, clients on a {n}-thread runtime"),
    };
    println!(
        "rpc-bench: {:.2} s measured after {:.2} s warm-up per system and cell, {rounds} round(s) \
         (median of each figure), {cpus} CPUs, --cpus {}; one TCP connection on 127.0.0.1; \
         {client}.\n",
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        args.cpus
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned()),
    );
    print!("{}", markdown_table(&cells));
    if let Some(chains) = rpc_benches::server_chain_table(&cells) {
        println!(
            "\nFilter chains on both sides (ours-noop, ours-prod), against ours in the same run:\n"
        );
        print!("{chains}");
    }
    if !chain_cells.is_empty() {
        println!("\nClient filter chains (ours), each against no chain in the same run:\n");
        print!("{}", chain_table(&chain_cells));
    }
    if let Some(table) = tls_table(&cells) {
        println!("\nTLS (ours-tls) against plaintext (ours), same run:\n");
        print!("{table}");
    }
    if let Some(dir) = &tls_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    eprintln!("rpc-bench: took {:.0} s", began.elapsed().as_secs_f64());
    if failed {
        eprintln!("rpc-bench: some runs failed; see above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Makes the certificates of `ours-tls`, installs them in this process (the client
/// side) and writes them where the server processes read them.
fn make_certificates() -> Result<PathBuf, String> {
    let tls = BenchTls::generate().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("rpc-bench-tls-{}", std::process::id()));
    tls.write_to(&dir)
        .map_err(|e| format!("cannot write certificates to {}: {e}", dir.display()))?;
    tls.install();
    Ok(dir)
}

/// The client child of the default setup: measures, prints its one line.
fn client(
    system: System,
    addr: std::net::SocketAddr,
    payload: usize,
    in_flight: usize,
    warmup: f64,
    duration: f64,
    chain: ClientChain,
) -> ExitCode {
    let (Ok(warmup), Ok(duration)) = (
        Duration::try_from_secs_f64(warmup),
        Duration::try_from_secs_f64(duration),
    ) else {
        eprintln!("rpc-bench client: --warmup and --duration must be non-negative seconds");
        return ExitCode::FAILURE;
    };
    let load = Load {
        in_flight,
        payload,
        warmup,
        duration,
        client_threads: std::thread::available_parallelism().map_or(1, usize::from),
        chain,
    };
    match run_client_child(system, addr, &load) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The driver of `--config default`: every cell, every system, interleaved, each
/// measurement a fresh server and a fresh client process; then the tables.
fn run_default(
    args: &RunArgs,
    program: &Path,
    warmup: Duration,
    duration: Duration,
    cpus: usize,
) -> ExitCode {
    let began = std::time::Instant::now();
    let rounds = args.rounds.max(1);
    let chains: Vec<ClientChain> = if args.client_chains.is_empty() {
        vec![ClientChain::None]
    } else {
        args.client_chains.clone()
    };
    // Every system once per round, ours once per chain.
    let runs_per_round: usize = args
        .systems
        .iter()
        .map(|s| if *s == System::Ours { chains.len() } else { 1 })
        .sum();
    let total = args.payloads.len() * args.in_flight.len() * runs_per_round * rounds;
    let mut done = 0;
    let mut failed = false;
    let mut cells = Vec::new();
    let mut chain_cells = Vec::new();
    for &payload in &args.payloads {
        for &in_flight in &args.in_flight {
            let load = Load {
                in_flight,
                payload,
                warmup,
                duration,
                client_threads: cpus.max(1),
                chain: chains[0],
            };
            let mut runs: BTreeMap<(System, ClientChain), Vec<Result<Sample, String>>> =
                BTreeMap::new();
            for _ in 0..rounds {
                for &system in &args.systems {
                    let system_chains = if system == System::Ours {
                        &chains[..]
                    } else {
                        &chains[..1]
                    };
                    for &chain in system_chains {
                        let load = Load { chain, ..load };
                        let result = measure_as_users_do(program, system, &load);
                        done += 1;
                        let measurement = result.as_ref().map(|s| s.measurement.clone());
                        progress(
                            done,
                            total,
                            system,
                            &load,
                            &measurement.map_err(Clone::clone),
                        );
                        if let Ok(s) = &result {
                            eprintln!(
                                "          peak RSS: server {:.1} MiB, client {:.1} MiB",
                                s.server_peak_kib as f64 / 1024.0,
                                s.client_peak_kib as f64 / 1024.0
                            );
                        }
                        failed |= !matches!(&result, Ok(s) if s.measurement.errors == 0);
                        runs.entry((system, chain)).or_default().push(result);
                    }
                }
            }
            let mut medians: BTreeMap<(System, ClientChain), Result<Sample, String>> = runs
                .into_iter()
                .map(|(key, results)| (key, median_sample(results)))
                .collect();
            if args.systems.contains(&System::Ours) && chains.len() > 1 {
                chain_cells.push(ChainCell {
                    payload,
                    in_flight,
                    results: chains
                        .iter()
                        .filter_map(|&c| {
                            let sample = medians.get(&(System::Ours, c))?;
                            Some((c, sample.clone().map(|s| s.measurement)))
                        })
                        .collect(),
                });
            }
            cells.push(DefaultCell {
                payload,
                in_flight,
                results: args
                    .systems
                    .iter()
                    .filter_map(|s| medians.remove(&(*s, chains[0])).map(|r| (*s, r)))
                    .collect(),
            });
        }
    }
    println!(
        "rpc-bench --config default: {:.2} s measured after {:.2} s warm-up per system and \
         cell, {rounds} round(s) (median of each figure, peak RSS included), {cpus} CPUs, no \
         pinning; one TCP connection on 127.0.0.1; both sides on multi-threaded runtimes as \
         `#[tokio::main]` builds them, default workers and client settings; each client in \
         a child process of its own.\n",
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
    );
    print!("{}", default_table(&cells));
    if let Some(targets) = targets_table(&cells) {
        println!();
        print!("{targets}");
    }
    if !chain_cells.is_empty() {
        println!("\nClient filter chains (ours), each against no chain in the same run:\n");
        print!("{}", chain_table(&chain_cells));
    }
    eprintln!("rpc-bench: took {:.0} s", began.elapsed().as_secs_f64());
    if failed {
        eprintln!("rpc-bench: some runs failed; see above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `rpc-bench scaling`: every (servers, connections) cell, interleaved over the
/// rounds, each against fresh server processes; then one table.
fn scaling(args: &ScalingArgs) -> ExitCode {
    let (Ok(warmup), Ok(duration)) = (
        Duration::try_from_secs_f64(args.warmup),
        Duration::try_from_secs_f64(args.duration),
    ) else {
        eprintln!("rpc-bench scaling: --warmup and --duration must be non-negative seconds");
        return ExitCode::FAILURE;
    };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(e) => {
            eprintln!("rpc-bench: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let load = Load {
        in_flight: args.in_flight,
        payload: args.payload,
        warmup,
        duration,
        client_threads: cpus,
        chain: ClientChain::None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rpc-bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cells: Vec<(usize, usize)> = args
        .servers
        .iter()
        .flat_map(|&s| args.connections.iter().map(move |&c| (s.max(1), c.max(1))))
        .collect();
    let mut runs: BTreeMap<(usize, usize), Vec<Result<Measurement, String>>> = BTreeMap::new();
    let mut failed = false;
    for _ in 0..args.rounds.max(1) {
        for &(servers, connections) in &cells {
            let result = (|| {
                let processes = (0..servers)
                    .map(|_| {
                        let mut command = std::process::Command::new(&program);
                        command.args(["server", "--system", "ours", "--config", "default"]);
                        ServerProcess::start_command(command, "ours")
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let addrs: Vec<_> = processes.iter().map(ServerProcess::addr).collect();
                runtime
                    .block_on(rpc_benches::drive_spread(&addrs, connections, &load))
                    .map_err(|e| e.to_string())
            })();
            match &result {
                Ok(m) => eprintln!(
                    "  {servers} server(s) x {connections} connection(s): {:.0} calls/s",
                    m.calls_per_sec()
                ),
                Err(e) => eprintln!("  {servers} server(s) x {connections} connection(s): {e}"),
            }
            failed |= !matches!(&result, Ok(m) if m.errors == 0);
            runs.entry((servers, connections)).or_default().push(result);
        }
    }
    println!(
        "rpc-bench scaling: ours, {} B x {} in flight, {:.2} s after {:.2} s warm-up per \
         cell, {} round(s) (medians), {cpus} CPUs, no pinning; servers as `#[tokio::main]` \
         with `Server::builder()` defaults, each its own process; the client on a \
         multi-threaded runtime, round-robin over the servers.\n",
        args.payload,
        args.in_flight,
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        args.rounds.max(1),
    );
    println!(
        "| servers | connections per server | calls/s | vs 1 server x 1 connection | p50 / p99 / p999 µs |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let medians: BTreeMap<(usize, usize), Result<Measurement, String>> = runs
        .into_iter()
        .map(|(cell, results)| (cell, median(results)))
        .collect();
    let base = medians
        .get(&(1, 1))
        .and_then(|r| r.as_ref().ok())
        .map(Measurement::calls_per_sec);
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    for &(servers, connections) in &cells {
        match &medians[&(servers, connections)] {
            Ok(m) => println!(
                "| {servers} | {connections} | {:.0} | {} | {:.0} / {:.0} / {:.0} |",
                m.calls_per_sec(),
                base.map_or_else(
                    || "–".to_owned(),
                    |b| format!("{:.2}", m.calls_per_sec() / b)
                ),
                micros(m.p50),
                micros(m.p99),
                micros(m.p999),
            ),
            Err(e) => println!("| {servers} | {connections} | failed: {e} | | |"),
        }
    }
    if failed {
        eprintln!("rpc-bench scaling: some runs failed; see above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// [`median`] of the measurements, and the median of each process's peak RSS.
fn median_sample(runs: Vec<Result<Sample, String>>) -> Result<Sample, String> {
    let mut server: Vec<u64> = runs.iter().flatten().map(|s| s.server_peak_kib).collect();
    let mut client: Vec<u64> = runs.iter().flatten().map(|s| s.client_peak_kib).collect();
    server.sort_unstable();
    client.sort_unstable();
    let measurement = median(runs.into_iter().map(|r| r.map(|s| s.measurement)).collect())?;
    Ok(Sample {
        measurement,
        server_peak_kib: server[server.len() / 2],
        client_peak_kib: client[client.len() / 2],
    })
}

/// One measurement against a fresh server process.
fn run_one(
    program: &Path,
    system: System,
    cpus: CpuLayout,
    tls_dir: Option<&Path>,
    load: &Load,
) -> Result<Measurement, String> {
    let server = match (system, tls_dir) {
        (System::OursTls, Some(dir)) => {
            let mut command = std::process::Command::new(program);
            command.args(["server", "--system", system.name()]);
            if let Some(cpu) = cpus.server_cpu() {
                command.args(["--cpu", &cpu.to_string()]);
            }
            command.arg("--tls-dir").arg(dir);
            ServerProcess::start_command(command, system.name())
        }
        _ => ServerProcess::start(program, system, cpus.server_cpu()),
    }
    .map_err(|e| e.to_string())?;
    system
        .measure(server.addr(), load)
        .map_err(|e| e.to_string())
}

/// The median over the runs of calls per second and of each latency percentile, each
/// taken on its own (so one round disturbed by something else on the machine moves
/// none of them); any failed run makes the cell failed.
fn median(mut runs: Vec<Result<Measurement, String>>) -> Result<Measurement, String> {
    if let Some(position) = runs
        .iter()
        .position(|r| !matches!(r, Ok(m) if m.errors == 0))
    {
        return runs.swap_remove(position);
    }
    let mut runs: Vec<Measurement> = runs.into_iter().filter_map(Result::ok).collect();
    fn middle<T: Copy + PartialOrd>(runs: &[Measurement], of: impl Fn(&Measurement) -> T) -> T {
        let mut values: Vec<T> = runs.iter().map(of).collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        values[values.len() / 2]
    }
    let (p50, p99, p999) = (
        middle(&runs, |m| m.p50),
        middle(&runs, |m| m.p99),
        middle(&runs, |m| m.p999),
    );
    runs.sort_by(|a, b| a.calls_per_sec().total_cmp(&b.calls_per_sec()));
    let mid = runs.len() / 2;
    Ok(Measurement {
        p50,
        p99,
        p999,
        ..runs.swap_remove(mid)
    })
}

/// One line per measurement on stderr, so a long run shows it is alive.
fn progress(
    done: usize,
    total: usize,
    system: System,
    load: &Load,
    result: &Result<Measurement, String>,
) {
    let chain = if system == System::Ours && load.chain != ClientChain::None {
        format!(" ({})", load.chain.name())
    } else {
        String::new()
    };
    let what = format!(
        "[{done:>3}/{total}] {:>6} B x {:>3} in flight, {system:>5}{chain}",
        load.payload, load.in_flight
    );
    match result {
        Ok(m) if m.errors == 0 => eprintln!(
            "{what}: {:>9.0} calls/s, p50 {:?}, p99 {:?}, p999 {:?}",
            m.calls_per_sec(),
            m.p50,
            m.p99,
            m.p999
        ),
        Ok(m) => eprintln!(
            "{what}: {} failed calls; first: {}",
            m.errors,
            m.first_error.as_deref().unwrap_or("?")
        ),
        Err(e) => eprintln!("{what}: failed: {e}"),
    }
}
