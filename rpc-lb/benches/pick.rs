//! How long one pick takes, for every strategy, over 10 and 100 providers.
//!
//! Run with `cargo bench -p rpc-lb --bench pick`. Each pick is released at
//! once (the `Picked` is dropped inside the measured loop), so the numbers
//! include the in-flight guard's increment and decrement. The `loaded`
//! variants hold a few calls in flight on every provider first, so
//! least-connection has to scan rather than stop at the first idle provider.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use rpc_lb::{LoadBalancer, PickContext, Picked, Provider, Strategy};

fn providers(n: usize) -> Vec<Provider> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 20880));
            // Varied weights, so the weighted strategies do real work.
            Provider::new(addr).weight(50 + (i as u32 * 37) % 200)
        })
        .collect()
}

fn balancer(strategy: Strategy, n: usize) -> LoadBalancer {
    let lb = LoadBalancer::new("bench.Service", strategy);
    lb.update(providers(n));
    // Give the adaptive strategy latency samples to compare.
    for i in 0..n * 20 {
        let picked = lb.pick(&PickContext::new()).unwrap();
        picked.record_success(Duration::from_micros(200 + (i as u64 * 7919) % 800));
    }
    lb
}

/// Holds 1..=4 calls in flight on every provider.
fn load(lb: &LoadBalancer, n: usize) -> Vec<Picked> {
    let mut held = Vec::new();
    for round in 0..4 {
        for (i, p) in lb.providers().iter().enumerate() {
            if i % 4 >= round {
                // Steer a pick to `p` by taking everyone else out briefly.
                for other in lb.providers() {
                    lb.set_healthy(other.addr, other.addr == p.addr);
                }
                held.push(lb.pick(&PickContext::new()).unwrap());
            }
        }
    }
    for p in lb.providers() {
        lb.set_healthy(p.addr, true);
    }
    assert!(held.len() >= n);
    held
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10, 100] {
        for strategy in Strategy::ALL {
            let lb = balancer(strategy, n);
            let ctx = PickContext::new();
            group.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &lb, |b, lb| {
                b.iter(|| black_box(lb.pick(black_box(&ctx)).unwrap()))
            });
        }
        let lb = balancer(Strategy::IpHash, n);
        let mut key = 0u64;
        group.bench_with_input(BenchmarkId::new("ip-hash/keyed", n), &lb, |b, lb| {
            b.iter(|| {
                key = key.wrapping_add(1);
                black_box(lb.pick(&PickContext::new().hash_key(key)).unwrap())
            })
        });
        for strategy in [Strategy::LeastConnection, Strategy::WeightedLeastConnection] {
            let lb = balancer(strategy, n);
            let _held = load(&lb, n);
            let ctx = PickContext::new();
            let id = BenchmarkId::new(format!("{strategy}/loaded"), n);
            group.bench_with_input(id, &lb, |b, lb| {
                b.iter(|| black_box(lb.pick(black_box(&ctx)).unwrap()))
            });
        }
    }
    group.finish();
}

// Spelled out instead of `criterion_group!`/`criterion_main!`, whose
// generated function has no doc comment for the workspace's `missing_docs`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    pick(&mut criterion);
    criterion.final_summary();
}
