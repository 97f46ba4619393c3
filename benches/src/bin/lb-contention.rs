//! Picks per second of every balancing strategy under contention: many tasks on a
//! multi-threaded tokio runtime (as `#[tokio::main]` builds it) picking from one
//! shared [`LoadBalancer`] over ten providers, each pick held like a call (its
//! outcome recorded, then released), against one task alone.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin lb-contention -- --tasks 1,64 --duration 2
//! ```
//!
//! Every shared counter a strategy keeps (the in-flight counts of least-connection
//! and adaptive, adaptive's latency estimate, round-robin's turn) is a cache line
//! the runtime's threads pass between them on every pick; strategies that keep none
//! scale with the threads. Numbers are machine-dependent: compare strategies and
//! task counts within one run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rpc_core::lb::{LoadBalancer, PickContext, Provider, Strategy};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Picks per second of every balancing strategy under contention")]
struct Args {
    /// Tasks picking at once, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64])]
    tasks: Vec<usize>,
    /// Seconds measured per strategy and task count.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Providers in the set.
    #[arg(long, default_value_t = 10)]
    providers: usize,
    /// CI smoke run: 0.2 s per measurement.
    #[arg(long)]
    quick: bool,
}

const STRATEGIES: [Strategy; 8] = [
    Strategy::RoundRobin,
    Strategy::WeightedRoundRobin,
    Strategy::Random,
    Strategy::WeightedRandom,
    Strategy::LeastConnection,
    Strategy::WeightedLeastConnection,
    Strategy::IpHash,
    Strategy::Adaptive,
];

/// A balancer over `n` providers of varied weights.
fn balancer(strategy: Strategy, n: usize) -> LoadBalancer {
    let lb = LoadBalancer::new("bench.Service", strategy);
    lb.update((0..n).map(|i| {
        let addr = SocketAddr::from(([10, 0, 0, i as u8], 20880));
        Provider::new(addr).weight(50 + (i as u32 * 37) % 200)
    }));
    lb
}

/// Picks per second with `tasks` tasks picking from `lb` for `duration`.
async fn measure(lb: Arc<LoadBalancer>, tasks: usize, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let picks = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let (lb, stop, picks) = (Arc::clone(&lb), Arc::clone(&stop), Arc::clone(&picks));
            tokio::spawn(async move {
                // ip-hash needs a key: one per task, as affinity keys differ per caller.
                let ctx = PickContext::new().hash_key(task as u64 * 0x9e37_79b9);
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let started = Instant::now();
                        let picked = lb.pick(&ctx).expect("a provider");
                        picked.record_success_since(started);
                        drop(picked);
                    }
                    done += 64;
                    // A task among many: let the others run, as calls would.
                    tokio::task::yield_now().await;
                }
                picks.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect();
    let began = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("a picking task");
    }
    picks.load(Ordering::Relaxed) as f64 / began.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let duration = if args.quick {
        Duration::from_millis(200)
    } else {
        match Duration::try_from_secs_f64(args.duration) {
            Ok(d) => d,
            Err(_) => {
                eprintln!("lb-contention: --duration must be non-negative seconds");
                return ExitCode::FAILURE;
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "lb-contention: {} providers, {:.1} s per cell, a {threads}-thread runtime; \
         each pick's outcome recorded (timed where the strategy reads latency).\n",
        args.providers,
        duration.as_secs_f64()
    );
    let mut header = String::from("| strategy |");
    let mut rule = String::from("|---|");
    for tasks in &args.tasks {
        header.push_str(&format!(" {tasks} task(s) Mpicks/s |"));
        rule.push_str("---:|");
    }
    if args.tasks.len() > 1 {
        header.push_str(&format!(
            " {} vs {} tasks |",
            args.tasks[args.tasks.len() - 1],
            args.tasks[0]
        ));
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    for strategy in STRATEGIES {
        let lb = Arc::new(balancer(strategy, args.providers));
        let mut rates = Vec::new();
        for &tasks in &args.tasks {
            rates.push(measure(Arc::clone(&lb), tasks.max(1), duration).await);
        }
        let mut row = format!("| {strategy} |");
        for rate in &rates {
            row.push_str(&format!(" {:.2} |", rate / 1e6));
        }
        if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
            if rates.len() > 1 {
                row.push_str(&format!(" {:.2} |", last / first));
            }
        }
        println!("{row}");
    }
    ExitCode::SUCCESS
}
