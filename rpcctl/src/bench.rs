//! `rpcctl bench SERVICE.METHOD 'JSON args'`: a load generator like brpc's rpc_press.
//! `--concurrency` callers each make one call after another for `--duration`; a
//! progress bar shows calls/s while it runs, and the summary gives calls/s, errors by
//! status, latency percentiles and a histogram drawn in the terminal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rpc_core::lb::Strategy;
use rpc_core::reflection::ReflectionClient;
use rpc_core::{Client, GenericError};
use rpc_registry::parse_duration;
use serde_json::{json, Value};

use crate::target::{self, TargetArgs};
use crate::Failure;

/// The options of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// The method: SERVICE.METHOD.
    method: String,
    /// The arguments as JSON, as for `call`; every call sends the same.
    #[arg(default_value = "[]")]
    args: String,
    /// Calls in flight at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// How long to run (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Connections per provider (each multiplexes any number of calls).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// The load-balancing strategy over the registry's providers.
    #[arg(long)]
    balancer: Option<Strategy>,
}

/// Slowest latency recorded: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// What one caller saw.
struct Tally {
    /// Latency of each successful call, in microseconds.
    latency: Histogram<u64>,
    /// Failed calls by kind (`TIMEOUT`, `APPLICATION_ERROR`, ...).
    errors: BTreeMap<&'static str, u64>,
    /// The first message of each kind of failure, to show what went wrong.
    examples: BTreeMap<&'static str, String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds");
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, message) in other.examples {
            self.examples.entry(kind).or_insert(message);
        }
    }
}

/// Runs the benchmark and prints its summary.
pub(crate) async fn run(
    target: &TargetArgs,
    args: BenchArgs,
    as_json: bool,
) -> Result<(), Failure> {
    if args.concurrency == 0 {
        return Err(Failure::Usage("--concurrency must be at least 1".into()));
    }
    if args.duration.is_zero() {
        return Err(Failure::Usage("--duration must be more than 0".into()));
    }
    let (service, method) = target::split_target(&args.method)?;
    let (service, method) = (service.to_owned(), method.to_owned());
    let json_args = target::parse_args(&args.args)?;
    let (client, consumer) = target
        .calls(&service, args.balancer, args.connections)
        .await?;
    // Named arguments are looked up once, not on every call.
    let json_args = match json_args {
        Value::Object(_) => positional(&client, &service, &method, json_args, target).await?,
        other => other,
    };

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + args.duration;
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, service, method, json_args) = (
                client.clone(),
                service.clone(),
                method.clone(),
                json_args.clone(),
            );
            let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
            let timeout = target.timeout;
            tokio::spawn(async move {
                let mut tally = Tally::new();
                while Instant::now() < end {
                    let call_started = Instant::now();
                    let outcome = client
                        .call_json(service.as_str(), method.as_str(), json_args.clone())
                        .timeout(timeout)
                        .await;
                    match outcome {
                        Ok(_) => {
                            let us = call_started.elapsed().as_micros() as u64;
                            tally.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
                        }
                        Err(e) => {
                            let kind = e.kind();
                            *tally.errors.entry(kind).or_default() += 1;
                            tally.examples.entry(kind).or_insert_with(|| e.to_string());
                            failed.fetch_add(1, Ordering::Relaxed);
                            if matches!(e, GenericError::Arguments { .. }) {
                                // Every call would be refused the same way.
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                tally
            })
        })
        .collect();

    let progress = ProgressBar::new(args.duration.as_millis() as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let ticker = {
        let (progress, done, failed) = (progress.clone(), Arc::clone(&done), Arc::clone(&failed));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let elapsed = started.elapsed();
                let calls = done.load(Ordering::Relaxed);
                progress.set_position(elapsed.as_millis() as u64);
                progress.set_message(format!(
                    "{calls} calls, {:.0}/s, {} errors",
                    calls as f64 / elapsed.as_secs_f64().max(1e-3),
                    failed.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let mut tally = Tally::new();
    for caller in callers {
        tally.merge(
            caller
                .await
                .map_err(|e| Failure::Failed(format!("a caller failed: {e}")))?,
        );
    }
    let elapsed = started.elapsed();
    ticker.abort();
    progress.finish_and_clear();
    if let Some(consumer) = consumer {
        consumer.shutdown().await;
    }

    let summary = Summary {
        target: format!("{service}.{method}"),
        concurrency: args.concurrency,
        elapsed,
        tally,
    };
    if as_json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_text());
    }
    if summary.tally.latency.is_empty() {
        let why: Vec<String> = summary
            .tally
            .examples
            .iter()
            .map(|(kind, message)| format!("{kind}: {message}"))
            .collect();
        return Err(Failure::Failed(format!(
            "every call failed ({})",
            why.join("; ")
        )));
    }
    Ok(())
}

/// Named arguments made positional with the method's description.
async fn positional(
    client: &Client,
    service: &str,
    method: &str,
    args: Value,
    target: &TargetArgs,
) -> Result<Value, Failure> {
    let described = ReflectionClient::new(client.clone())
        .describe(service.to_owned())
        .timeout(target.timeout)
        .await
        .map_err(|e| Failure::Failed(format!("cannot look up the argument names: {e}")))?;
    let method = described
        .method(method)
        .ok_or_else(|| Failure::Failed(format!("service `{service}` has no method `{method}`")))?;
    method
        .arguments_from_json(args)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// The outcome of a run.
struct Summary {
    /// `service.method`.
    target: String,
    /// Callers.
    concurrency: usize,
    /// How long it ran.
    elapsed: Duration,
    /// What the callers saw.
    tally: Tally,
}

/// The percentiles shown.
const PERCENTILES: [(&str, f64); 4] = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)];

impl Summary {
    fn ok(&self) -> u64 {
        self.tally.latency.len()
    }

    fn failed(&self) -> u64 {
        self.tally.errors.values().sum()
    }

    fn rate(&self) -> f64 {
        (self.ok() + self.failed()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn to_json(&self) -> Value {
        let h = &self.tally.latency;
        let mut latency = serde_json::Map::new();
        if !h.is_empty() {
            for (name, q) in PERCENTILES {
                latency.insert(name.to_owned(), json!(h.value_at_percentile(q)));
            }
            latency.insert("max".to_owned(), json!(h.max()));
            latency.insert("mean".to_owned(), json!(h.mean()));
        }
        json!({
            "method": self.target,
            "concurrency": self.concurrency,
            "seconds": self.elapsed.as_secs_f64(),
            "calls": self.ok() + self.failed(),
            "ok": self.ok(),
            "errors": self.tally.errors,
            "calls_per_second": self.rate(),
            "latency_us": latency,
        })
    }

    fn to_text(&self) -> String {
        let mut out = format!(
            "{}: {} callers for {:.2} s\n",
            self.target,
            self.concurrency,
            self.elapsed.as_secs_f64()
        );
        out.push_str(&format!(
            "  calls      {:>10}   {:.1} calls/s\n",
            self.ok() + self.failed(),
            self.rate()
        ));
        out.push_str(&format!("  ok         {:>10}\n", self.ok()));
        let by_kind: Vec<String> = self
            .tally
            .errors
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        out.push_str(&format!(
            "  errors     {:>10}   {}\n",
            self.failed(),
            by_kind.join(", ")
        ));
        for (kind, message) in &self.tally.examples {
            out.push_str(&format!("             {kind}: {message}\n"));
        }
        let h = &self.tally.latency;
        if h.is_empty() {
            out.push_str("  latency    (no successful calls)\n");
            return out;
        }
        let mut line = String::from("  latency   ");
        for (name, q) in PERCENTILES {
            line.push_str(&format!(" {name} {}", micros(h.value_at_percentile(q))));
        }
        line.push_str(&format!(
            " max {}  (mean {})\n",
            micros(h.max()),
            micros(h.mean() as u64)
        ));
        out.push_str(&line);
        out.push_str("\n  latency of successful calls:\n");
        out.push_str(&draw(h, 12, 40));
        out
    }
}

/// A duration in microseconds, in the unit that reads best.
fn micros(us: u64) -> String {
    match us {
        us if us < 1_000 => format!("{us}µs"),
        us if us < 1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        us => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// The histogram as `rows` log-spaced bins from the fastest to the slowest call, each
/// a bar of at most `width` characters.
fn draw(h: &Histogram<u64>, rows: usize, width: usize) -> String {
    let (low, high) = (h.min().max(1) as f64, h.max().max(1) as f64);
    let rows = if high <= low { 1 } else { rows };
    let ratio = (high / low).powf(1.0 / rows as f64);
    let bounds: Vec<f64> = (1..=rows).map(|i| low * ratio.powi(i as i32)).collect();
    let mut counts = vec![0u64; rows];
    for v in h.iter_recorded() {
        let value = h.highest_equivalent(v.value_iterated_to()) as f64;
        let row = bounds.iter().position(|&b| value <= b).unwrap_or(rows - 1);
        counts[row] += v.count_at_value();
    }
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    let total = h.len().max(1);
    let mut out = String::new();
    let mut from = low;
    for (row, &count) in counts.iter().enumerate() {
        let to = if rows == 1 { high } else { bounds[row] };
        let bar = "█".repeat(((count as f64 / most as f64) * width as f64).round() as usize);
        out.push_str(&format!(
            "  {:>9} - {:<9} |{:<width$}| {:>9} {:>5.1}%\n",
            micros(from as u64),
            micros(to as u64),
            bar,
            count,
            100.0 * count as f64 / total as f64,
        ));
        from = to;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_has_every_call_in_some_row() {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap();
        for us in [100, 120, 150, 400, 1_000, 10_000] {
            h.record(us).unwrap();
        }
        let drawn = draw(&h, 6, 20);
        assert_eq!(drawn.lines().count(), 6);
        let counted: u64 = drawn
            .lines()
            .map(|l| {
                l.rsplit('|')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
            })
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        assert_eq!(counted, 6);
        assert!(
            drawn.lines().next().unwrap().starts_with("      100µs"),
            "{drawn}"
        );
        let mut one = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap();
        one.record(250).unwrap();
        assert_eq!(draw(&one, 12, 20).lines().count(), 1);
    }

    #[test]
    fn micros_pick_a_unit() {
        assert_eq!(micros(999), "999µs");
        assert_eq!(micros(1_500), "1.50ms");
        assert_eq!(micros(2_000_000), "2.00s");
    }
}
