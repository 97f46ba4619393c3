//! Properties that must hold for any provider set.

mod support;

use std::collections::HashMap;

use proptest::prelude::*;
// proptest's prelude has a `Strategy` of its own.
use rpc_lb::{PickContext, Strategy as LbStrategy};
use support::{addr, balancer, providers, tally};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Over one full cycle of `sum(weights)` picks, smooth weighted
    /// round-robin picks each provider exactly its weight; and the cycle
    /// repeats.
    #[test]
    fn smooth_weighted_cycle_gives_each_provider_its_weight(
        weights in prop::collection::vec(0u32..20, 1..10)
            .prop_filter("some weight", |w| w.iter().any(|&w| w > 0))
    ) {
        let lb = balancer(LbStrategy::WeightedRoundRobin, &weights);
        let total: u32 = weights.iter().sum();
        for _cycle in 0..2 {
            let counts = tally(&lb, &PickContext::new(), total as usize);
            for (i, &w) in weights.iter().enumerate() {
                prop_assert_eq!(counts.get(&addr(i)).copied().unwrap_or(0), w as usize);
            }
        }
    }

    /// No strategy ever picks a provider of weight 0, and every strategy
    /// picks something while one has a weight.
    #[test]
    fn weight_zero_is_never_picked(
        weights in prop::collection::vec(0u32..4, 1..12)
            .prop_filter("some weight", |w| w.iter().any(|&w| w > 0)),
        key in any::<u64>(),
    ) {
        for strategy in LbStrategy::ALL {
            let lb = balancer(strategy, &weights);
            for k in 0..50 {
                let picked = lb.pick(&PickContext::new().hash_key(key.wrapping_add(k))).unwrap();
                let i = (0..weights.len()).find(|&i| addr(i) == picked.addr()).unwrap();
                prop_assert!(weights[i] > 0, "{} picked weight 0", strategy);
            }
        }
    }

    /// On the ip-hash ring, a joining provider only takes keys; nobody else's
    /// keys move.
    #[test]
    fn ip_hash_join_moves_keys_only_to_the_newcomer(
        n in 1usize..16,
        weight in 1u32..300,
        keys in prop::collection::vec(any::<u64>(), 200),
    ) {
        let lb = balancer(LbStrategy::IpHash, &vec![100; n]);
        let owner = |key: u64| lb.pick(&PickContext::new().hash_key(key)).unwrap().addr();
        let before: HashMap<u64, _> = keys.iter().map(|&k| (k, owner(k))).collect();
        let mut joined = providers(&vec![100; n]);
        joined.push(rpc_lb::Provider::new(addr(n)).weight(weight));
        lb.update(joined);
        for &key in &keys {
            let now = owner(key);
            prop_assert!(now == before[&key] || now == addr(n));
        }
    }
}
