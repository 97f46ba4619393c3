//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::SocketAddr;

use rpc_lb::{LoadBalancer, PickContext, Provider, Strategy};

/// The address of test provider `i`: `10.0.<i / 256>.<i % 256>:20880`.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 20880))
}

/// Providers `0..weights.len()` with the given weights.
pub fn providers(weights: &[u32]) -> Vec<Provider> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Provider::new(addr(i)).weight(w))
        .collect()
}

/// A balancer over providers with the given weights.
pub fn balancer(strategy: Strategy, weights: &[u32]) -> LoadBalancer {
    let lb = LoadBalancer::new("test.Service", strategy);
    lb.update(providers(weights));
    lb
}

/// Picks `n` times (releasing each pick at once) and counts picks per address.
pub fn tally(lb: &LoadBalancer, ctx: &PickContext, n: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(lb.pick(ctx).unwrap().addr()).or_insert(0) += 1;
    }
    counts
}

/// The addresses of `n` consecutive picks.
pub fn sequence(lb: &LoadBalancer, ctx: &PickContext, n: usize) -> Vec<SocketAddr> {
    (0..n).map(|_| lb.pick(ctx).unwrap().addr()).collect()
}

/// Asserts that `count` is within `tolerance` (a fraction) of `expected`.
#[track_caller]
pub fn assert_near(count: usize, expected: f64, tolerance: f64) {
    let error = (count as f64 - expected).abs() / expected;
    assert!(
        error <= tolerance,
        "count {count} is {:.1}% off the expected {expected:.0} (tolerance {:.1}%)",
        error * 100.0,
        tolerance * 100.0
    );
}
