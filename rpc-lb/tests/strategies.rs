//! What each strategy picks: exact sequences, distributions, affinity,
//! load-awareness.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use rpc_lb::{LoadBalancer, PickContext, Picked, Provider, Strategy};
use support::{addr, assert_near, balancer, providers, sequence, tally};

const PICKS: usize = 100_000;

#[test]
fn smooth_weighted_5_1_1_gives_a_a_b_a_c_a_a() {
    let lb = balancer(Strategy::WeightedRoundRobin, &[5, 1, 1]);
    let (a, b, c) = (addr(0), addr(1), addr(2));
    assert_eq!(sequence(&lb, &PickContext::new(), 7), [a, a, b, a, c, a, a]);
    // And the cycle repeats.
    assert_eq!(sequence(&lb, &PickContext::new(), 7), [a, a, b, a, c, a, a]);
}

#[test]
fn smooth_weighted_1_2_3_gives_s2_s1_s0_s2_s1_s2() {
    let lb = balancer(Strategy::WeightedRoundRobin, &[1, 2, 3]);
    let (s0, s1, s2) = (addr(0), addr(1), addr(2));
    assert_eq!(
        sequence(&lb, &PickContext::new(), 6),
        [s2, s1, s0, s2, s1, s2]
    );
}

#[test]
fn smooth_weighted_distribution_matches_weights() {
    let weights = [500, 300, 150, 50];
    let lb = balancer(Strategy::WeightedRoundRobin, &weights);
    let counts = tally(&lb, &PickContext::new(), PICKS);
    // 100 000 picks are exactly 100 cycles of 1000.
    for (i, &w) in weights.iter().enumerate() {
        assert_eq!(counts[&addr(i)], w as usize * 100);
    }
}

#[test]
fn round_robin_distribution_is_exact() {
    let lb = balancer(Strategy::RoundRobin, &[1, 100, 7, 3, 1000, 5, 5, 5, 5, 5]);
    let counts = tally(&lb, &PickContext::new(), PICKS);
    for i in 0..10 {
        assert_eq!(counts[&addr(i)], PICKS / 10, "weights are ignored");
    }
}

#[test]
fn round_robin_takes_turns_in_order() {
    let lb = balancer(Strategy::RoundRobin, &[1, 1, 1]);
    let seq = sequence(&lb, &PickContext::new(), 6);
    assert_eq!(&seq[..3], &seq[3..]);
    let mut first: Vec<_> = seq[..3].to_vec();
    first.sort();
    assert_eq!(first, [addr(0), addr(1), addr(2)]);
}

#[test]
fn random_distribution_is_uniform() {
    let lb = balancer(Strategy::Random, &[1, 100, 7, 3, 1000, 5, 5, 5, 5, 5]);
    let counts = tally(&lb, &PickContext::new(), PICKS);
    for i in 0..10 {
        // Expected 10 000, standard deviation ~95: 5% is 5 sigma.
        assert_near(counts[&addr(i)], PICKS as f64 / 10.0, 0.05);
    }
}

#[test]
fn weighted_random_distribution_follows_weights() {
    let weights = [100, 200, 300, 400];
    let lb = balancer(Strategy::WeightedRandom, &weights);
    let counts = tally(&lb, &PickContext::new(), PICKS);
    for (i, &w) in weights.iter().enumerate() {
        assert_near(counts[&addr(i)], PICKS as f64 * f64::from(w) / 1000.0, 0.05);
    }
}

#[test]
fn weighted_random_redistributes_an_unavailable_providers_share() {
    let weights = [100, 200, 300, 400];
    let lb = balancer(Strategy::WeightedRandom, &weights);
    lb.set_healthy(addr(3), false);
    let counts = tally(&lb, &PickContext::new(), PICKS);
    assert!(!counts.contains_key(&addr(3)));
    for (i, &w) in weights[..3].iter().enumerate() {
        assert_near(counts[&addr(i)], PICKS as f64 * f64::from(w) / 600.0, 0.05);
    }
}

/// Holds `n` calls on provider `i`, steering picks there by briefly marking
/// every other provider down.
fn hold(lb: &LoadBalancer, i: usize, n: usize) -> Vec<Picked> {
    let others: Vec<_> = lb
        .providers()
        .iter()
        .map(|p| p.addr)
        .filter(|&a| a != addr(i))
        .collect();
    for &other in &others {
        lb.set_healthy(other, false);
    }
    let held = (0..n)
        .map(|_| lb.pick(&PickContext::new()).unwrap())
        .collect();
    for &other in &others {
        lb.set_healthy(other, true);
    }
    held
}

#[test]
fn least_connection_prefers_fewest_in_flight() {
    let lb = balancer(Strategy::LeastConnection, &[100, 100, 100]);
    let ctx = PickContext::new();
    let _held = [hold(&lb, 0, 3), hold(&lb, 1, 1), hold(&lb, 2, 2)];
    for _ in 0..10 {
        assert_eq!(lb.pick(&ctx).unwrap().addr(), addr(1));
    }
    // Holding one more on provider 1 levels it with provider 2; provider 0,
    // the busiest, is still never picked.
    let _one_more = lb.pick(&ctx).unwrap();
    for _ in 0..10 {
        assert_ne!(lb.pick(&ctx).unwrap().addr(), addr(0));
    }
}

#[test]
fn least_connection_spreads_concurrent_calls_evenly() {
    let lb = balancer(Strategy::LeastConnection, &[1, 1, 1, 1]);
    let held: Vec<Picked> = (0..40)
        .map(|_| lb.pick(&PickContext::new()).unwrap())
        .collect();
    for i in 0..4 {
        assert_eq!(lb.stats(addr(i)).unwrap().in_flight(), 10);
    }
    drop(held);
    assert_eq!(lb.stats(addr(0)).unwrap().in_flight(), 0);
}

#[test]
fn least_connection_ties_are_shared_round_robin() {
    let lb = balancer(Strategy::LeastConnection, &[1, 1, 1, 1]);
    let counts = tally(&lb, &PickContext::new(), 4_000);
    for i in 0..4 {
        assert_eq!(counts[&addr(i)], 1_000);
    }
}

#[test]
fn weighted_least_connection_balances_in_flight_per_weight() {
    let lb = balancer(Strategy::WeightedLeastConnection, &[300, 100]);
    let held: Vec<Picked> = (0..40)
        .map(|_| lb.pick(&PickContext::new()).unwrap())
        .collect();
    assert_eq!(lb.stats(addr(0)).unwrap().in_flight(), 30);
    assert_eq!(lb.stats(addr(1)).unwrap().in_flight(), 10);
    drop(held);
}

fn client(i: u32) -> IpAddr {
    IpAddr::from((0xC000_0000u32 + i * 7919).to_be_bytes())
}

/// Where each of `keys` clients goes.
fn owners(lb: &LoadBalancer, keys: u32) -> Vec<std::net::SocketAddr> {
    (0..keys)
        .map(|i| {
            lb.pick(&PickContext::new().client_ip(client(i)))
                .unwrap()
                .addr()
        })
        .collect()
}

#[test]
fn ip_hash_is_sticky() {
    let lb = balancer(Strategy::IpHash, &[100; 10]);
    let first = owners(&lb, 1_000);
    for _ in 0..3 {
        assert_eq!(owners(&lb, 1_000), first);
    }
    // A hash key works the same way and takes precedence over the IP.
    let by_key = |key| {
        let ctx = PickContext::new().client_ip(client(1)).hash_key(key);
        lb.pick(&ctx).unwrap().addr()
    };
    for key in 0..100 {
        assert_eq!(by_key(key), by_key(key));
    }
    let distinct: std::collections::HashSet<_> = (0..100).map(by_key).collect();
    assert!(distinct.len() > 5, "keys spread over providers");
}

#[test]
fn ip_hash_spreads_clients_evenly() {
    let lb = balancer(Strategy::IpHash, &[100; 10]);
    let mut counts: HashMap<_, usize> = HashMap::new();
    for owner in owners(&lb, 20_000) {
        *counts.entry(owner).or_default() += 1;
    }
    for i in 0..10 {
        // 160 virtual nodes each keep the shares within about 25%.
        assert_near(counts[&addr(i)], 2_000.0, 0.3);
    }
}

#[test]
fn ip_hash_moves_about_one_in_eleven_clients_when_one_provider_joins() {
    const KEYS: u32 = 20_000;
    let lb = balancer(Strategy::IpHash, &[100; 10]);
    let before = owners(&lb, KEYS);
    lb.update(providers(&[100; 11]));
    let after = owners(&lb, KEYS);
    let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
    assert!(
        moved.iter().all(|(_, &to)| to == addr(10)),
        "keys move only to the newcomer"
    );
    let fraction = moved.len() as f64 / f64::from(KEYS);
    assert!(fraction <= 1.0 / 11.0 + 0.03, "{fraction} of keys moved");
    assert!(
        fraction >= 1.0 / 11.0 - 0.03,
        "{fraction}: the newcomer takes its share"
    );

    // And when it leaves again, exactly its keys go back where they were.
    lb.update(providers(&[100; 10]));
    assert_eq!(owners(&lb, KEYS), before);
}

#[test]
fn ip_hash_moves_only_the_leavers_clients() {
    const KEYS: u32 = 20_000;
    let lb = balancer(Strategy::IpHash, &[100; 11]);
    let before = owners(&lb, KEYS);
    let mut remaining = providers(&[100; 11]);
    remaining.remove(4);
    lb.update(remaining);
    let after = owners(&lb, KEYS);
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(*b, addr(4), "only the leaver's clients move");
            moved += 1;
        } else {
            assert_ne!(*a, addr(4));
        }
    }
    let fraction = f64::from(moved) / f64::from(KEYS);
    assert!(fraction <= 1.0 / 11.0 + 0.03, "{fraction} of keys moved");
}

#[test]
fn ip_hash_routes_around_an_unavailable_provider_and_back() {
    let lb = balancer(Strategy::IpHash, &[100; 10]);
    let before = owners(&lb, 5_000);
    lb.set_healthy(addr(3), false);
    let during = owners(&lb, 5_000);
    for (b, d) in before.iter().zip(&during) {
        assert_ne!(*d, addr(3));
        if *b != addr(3) {
            assert_eq!(b, d, "clients of other providers stay put");
        }
    }
    lb.set_healthy(addr(3), true);
    assert_eq!(owners(&lb, 5_000), before);
}

#[test]
fn ip_hash_without_key_picks_any_available_provider() {
    let lb = balancer(Strategy::IpHash, &[100; 4]);
    let counts = tally(&lb, &PickContext::new(), 4_000);
    assert_eq!(counts.len(), 4);
}

#[test]
fn adaptive_sheds_load_from_a_provider_that_slows_down() {
    let lb = balancer(Strategy::Adaptive, &[100; 10]);
    let ctx = PickContext::new();
    // Picks `n` times, replying in 1 ms, or in `slow` from provider 7;
    // returns how often provider 7 was picked.
    let run = |n: usize, slow: Duration| {
        let mut picked_7 = 0;
        for _ in 0..n {
            let p = lb.pick(&ctx).unwrap();
            if p.addr() == addr(7) {
                picked_7 += 1;
                p.record_success(slow);
            } else {
                p.record_success(Duration::from_millis(1));
            }
        }
        picked_7
    };
    let fast = run(10_000, Duration::from_millis(1));
    assert!(
        fast > 500,
        "while fast, provider 7 takes its share: {fast} of 10 000"
    );

    // Provider 7 slows down: its first slow reply is enough for peak-EWMA.
    let first_slow = (0..)
        .find(|_| run(1, Duration::from_millis(50)) == 1)
        .unwrap();
    assert!(first_slow < 1_000);
    let slow = run(10_000, Duration::from_millis(50));
    assert!(slow < 50, "slow provider still got {slow} of 10 000 picks");
}

#[test]
fn adaptive_prefers_fewer_calls_in_flight_at_equal_latency() {
    let lb = balancer(Strategy::Adaptive, &[100, 100]);
    let ctx = PickContext::new();
    for _ in 0..100 {
        lb.pick(&ctx)
            .unwrap()
            .record_success(Duration::from_millis(1));
    }
    // With two providers both candidates are always compared, so holding
    // calls levels the in-flight counts exactly.
    let held: Vec<Picked> = (0..20).map(|_| lb.pick(&ctx).unwrap()).collect();
    assert_eq!(lb.stats(addr(0)).unwrap().in_flight(), 10);
    assert_eq!(lb.stats(addr(1)).unwrap().in_flight(), 10);
    drop(held);
}

#[test]
fn adaptive_does_not_pile_onto_a_provider_it_has_not_heard_from() {
    let lb = balancer(Strategy::Adaptive, &[100]);
    let ctx = PickContext::new();
    lb.pick(&ctx)
        .unwrap()
        .record_success(Duration::from_millis(5));
    lb.update([Provider::new(addr(0)), Provider::new(addr(1))]);
    let first = lb.pick(&ctx).unwrap();
    assert_eq!(
        first.addr(),
        addr(1),
        "an idle newcomer scores 0 and is tried"
    );
    // With a call in flight and no reply yet, it is not sent more.
    for _ in 0..10 {
        assert_eq!(lb.pick(&ctx).unwrap().addr(), addr(0));
    }
}
