//! The live provider set: updates, health and draining, warm-up, errors and
//! concurrent use, checked for every strategy where it applies.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rpc_lb::{Config, LbError, LoadBalancer, PickContext, Provider, Strategy};
use support::{addr, assert_near, balancer, providers, sequence, tally};

#[test]
fn weight_zero_unhealthy_and_draining_are_never_picked() {
    for strategy in Strategy::ALL {
        let lb = LoadBalancer::new("test.Service", strategy);
        lb.update([
            Provider::new(addr(0)).weight(0),
            Provider::new(addr(1)).healthy(false),
            Provider::new(addr(2)).draining(true),
            Provider::new(addr(3)),
            Provider::new(addr(4)),
            Provider::new(addr(5)),
        ]);
        lb.set_healthy(addr(4), false);
        lb.set_draining(addr(5), true);
        for i in 0..2_000u64 {
            // Vary the key so ip-hash visits the whole ring.
            let ctx = PickContext::new().hash_key(i);
            assert_eq!(lb.pick(&ctx).unwrap().addr(), addr(3), "{strategy}");
        }
    }
}

#[test]
fn no_provider_names_the_service() {
    let sets: [(&str, Vec<Provider>); 5] = [
        ("empty", vec![]),
        ("all weight 0", providers(&[0, 0, 0])),
        ("all unhealthy", vec![Provider::new(addr(0)).healthy(false)]),
        ("all draining", vec![Provider::new(addr(0)).draining(true)]),
        (
            "mixed",
            vec![
                Provider::new(addr(0)).weight(0),
                Provider::new(addr(1)).healthy(false),
            ],
        ),
    ];
    for strategy in Strategy::ALL {
        for (what, set) in &sets {
            let lb = LoadBalancer::new("demo.Greeter", strategy);
            lb.update(set.clone());
            for ctx in [PickContext::new(), PickContext::new().hash_key(7)] {
                let err = lb.pick(&ctx).unwrap_err();
                assert_eq!(
                    err,
                    LbError::NoProvider {
                        service: "demo.Greeter".into()
                    },
                    "{strategy}, {what}"
                );
                assert!(err.to_string().contains("demo.Greeter"));
            }
        }
    }
}

#[test]
fn client_marks_take_the_last_provider_out_and_back() {
    for strategy in Strategy::ALL {
        let lb = balancer(strategy, &[100]);
        let ctx = PickContext::new();
        assert!(lb.set_healthy(addr(0), false));
        assert!(lb.pick(&ctx).is_err(), "{strategy}");
        lb.set_healthy(addr(0), true);
        assert!(lb.set_draining(addr(0), true));
        assert!(lb.pick(&ctx).is_err(), "{strategy}");
        lb.set_draining(addr(0), false);
        assert_eq!(lb.pick(&ctx).unwrap().addr(), addr(0), "{strategy}");
        assert!(!lb.set_healthy(addr(9), false), "unknown address");
    }
}

#[test]
fn unhealthy_for_a_period_comes_back_by_itself() {
    for strategy in Strategy::ALL {
        let lb = balancer(strategy, &[100, 100]);
        let now = Instant::now();
        assert!(lb.mark_unhealthy_until(addr(0), now + Duration::from_secs(5)));
        let during = PickContext::new().at(now + Duration::from_secs(4));
        for key in 0..200 {
            assert_eq!(
                lb.pick(&during.hash_key(key)).unwrap().addr(),
                addr(1),
                "{strategy}"
            );
        }
        let after = PickContext::new().at(now + Duration::from_secs(5));
        let seen: HashSet<_> = (0..200)
            .map(|key| lb.pick(&after.hash_key(key)).unwrap().addr())
            .collect();
        assert!(seen.contains(&addr(0)), "{strategy}: back after the period");
    }
}

#[test]
fn mark_unhealthy_for_uses_the_clock() {
    let lb = balancer(Strategy::RoundRobin, &[100]);
    lb.mark_unhealthy_for(addr(0), Duration::from_secs(60));
    assert!(lb.pick(&PickContext::new()).is_err());
    let later = PickContext::new().at(Instant::now() + Duration::from_secs(61));
    assert!(lb.pick(&later).is_ok());
}

#[test]
fn client_marks_survive_discovery_updates_but_not_leaving() {
    let lb = balancer(Strategy::RoundRobin, &[100, 100]);
    lb.set_healthy(addr(0), false);
    lb.update(providers(&[100, 100, 100]));
    let counts = tally(&lb, &PickContext::new(), 100);
    assert!(
        !counts.contains_key(&addr(0)),
        "the mark outlives the update"
    );
    lb.update(providers(&[0, 100, 100])[1..].to_vec());
    lb.update(providers(&[100, 100, 100]));
    let counts = tally(&lb, &PickContext::new(), 99);
    assert_eq!(counts[&addr(0)], 33, "after leaving, it comes back fresh");
}

#[test]
fn update_keeps_smooth_weighted_position_of_staying_providers() {
    let (a, b, c) = (addr(0), addr(1), addr(2));
    let lb = balancer(Strategy::WeightedRoundRobin, &[5, 1, 1]);
    let ctx = PickContext::new();
    let mut seen = sequence(&lb, &ctx, 3);
    // Same providers in another order, plus a parked newcomer.
    lb.update([
        Provider::new(c).weight(1),
        Provider::new(addr(3)).weight(0),
        Provider::new(a).weight(5),
        Provider::new(b).weight(1),
    ]);
    seen.extend(sequence(&lb, &ctx, 4));
    assert_eq!(
        seen,
        [a, a, b, a, c, a, a],
        "the sequence continues across the update"
    );
}

#[test]
fn update_keeps_stats_and_in_flight_calls() {
    let lb = balancer(Strategy::LeastConnection, &[100, 100]);
    let held = lb.pick(&PickContext::new()).unwrap();
    let stats = lb.stats(held.addr()).unwrap();
    held.record_success(Duration::from_millis(3));
    lb.update(providers(&[100, 100, 100]));
    let after = lb.stats(held.addr()).unwrap();
    assert!(Arc::ptr_eq(&stats, &after));
    assert_eq!(after.in_flight(), 1);
    assert_eq!(after.successes(), 1);
    drop(held);
    assert_eq!(after.in_flight(), 0);
}

#[test]
fn outcomes_recorded_since_a_start_count_and_measure_from_it() {
    let lb = balancer(Strategy::Adaptive, &[100]);
    let picked = lb.pick(&PickContext::new()).unwrap();
    let started = Instant::now() - Duration::from_millis(40);
    let latency = picked
        .record_success_since(started)
        .expect("adaptive times calls");
    assert!(latency >= Duration::from_millis(40), "{latency:?}");
    let failed = picked.record_failure_since(Instant::now());
    assert!(failed < Duration::from_millis(40), "{failed:?}");
    let stats = picked.stats().expect("adaptive keeps stats");
    assert_eq!((stats.successes(), stats.failures()), (1, 1));
    let estimate = stats.latency().expect("a latency estimate");
    assert!(estimate >= Duration::from_millis(40), "{estimate:?}");
}

#[test]
fn stats_are_kept_only_where_they_are_read() {
    let started = Instant::now() - Duration::from_millis(40);
    // Round-robin reads nothing: its calls touch no counter and read no clock.
    let lb = balancer(Strategy::RoundRobin, &[100]);
    let picked = lb.pick(&PickContext::new()).unwrap();
    assert!(picked.stats().is_none(), "nothing to share");
    let stats = lb.stats(picked.addr()).unwrap();
    assert!(!stats.tracks_latency() && !stats.tracks_load());
    assert_eq!(stats.in_flight(), 0);
    assert_eq!(picked.record_success_since(started), None);
    picked.record_failure(Duration::from_millis(5));
    assert_eq!(
        (stats.successes(), stats.failures(), stats.latency()),
        (0, 0, None)
    );
    // Least-connection counts calls in flight (and outcomes), but times nothing.
    let lb = balancer(Strategy::LeastConnection, &[100]);
    let picked = lb.pick(&PickContext::new()).unwrap();
    let stats = Arc::clone(picked.stats().unwrap());
    assert!(stats.tracks_load() && !stats.tracks_latency());
    assert_eq!(stats.in_flight(), 1);
    assert_eq!(picked.record_success_since(started), None);
    drop(picked);
    assert_eq!((stats.in_flight(), stats.successes()), (0, 1));
    assert_eq!(stats.latency(), None);
    // Asked for, everything is kept whatever the strategy.
    let lb = LoadBalancer::with_config(
        "test.Service",
        Strategy::RoundRobin,
        Config::default().track_stats(true),
    );
    lb.update(providers(&[100]));
    let picked = lb.pick(&PickContext::new()).unwrap();
    let stats = Arc::clone(picked.stats().unwrap());
    assert_eq!(stats.in_flight(), 1);
    assert!(picked.record_success_since(started).is_some());
    assert_eq!(stats.successes(), 1);
    assert!(stats.latency().unwrap() >= Duration::from_millis(40));
}

#[test]
fn update_applies_weight_changes() {
    let lb = balancer(Strategy::WeightedRoundRobin, &[1, 1]);
    lb.update(providers(&[3, 1]));
    let counts = tally(&lb, &PickContext::new(), 400);
    assert_eq!(counts[&addr(0)], 300);
    assert_eq!(counts[&addr(1)], 100);
}

#[test]
fn update_with_a_duplicate_address_keeps_the_later_spec() {
    let lb = LoadBalancer::new("test.Service", Strategy::WeightedRoundRobin);
    lb.update([
        Provider::new(addr(0)).weight(1),
        Provider::new(addr(1)).weight(1),
        Provider::new(addr(0)).weight(3),
    ]);
    assert_eq!(
        lb.providers(),
        [
            Provider::new(addr(0)).weight(3),
            Provider::new(addr(1)).weight(1)
        ]
    );
    let counts = tally(&lb, &PickContext::new(), 4);
    assert_eq!(counts[&addr(0)], 3);
}

/// Two providers of weight 100, `fresh` started at `start`; warm-up 100 s.
fn warming(strategy: Strategy, start: Instant) -> LoadBalancer {
    let config = Config::default().warm_up(Duration::from_secs(100));
    let lb = LoadBalancer::with_config("test.Service", strategy, config);
    lb.update([
        Provider::new(addr(0)),
        Provider::new(addr(1)).started_at(start),
    ]);
    lb
}

#[test]
fn warm_up_ramps_smooth_weighted_linearly() {
    let start = Instant::now();
    let lb = warming(Strategy::WeightedRoundRobin, start);
    for (secs, fresh_weight) in [(0, 1), (25, 25), (50, 50), (100, 100), (500, 100)] {
        let ctx = PickContext::new().at(start + Duration::from_secs(secs));
        // One full cycle of the current weights.
        let counts = tally(&lb, &ctx, 100 + fresh_weight);
        assert_eq!(counts[&addr(0)], 100, "at {secs} s");
        assert_eq!(counts[&addr(1)], fresh_weight, "at {secs} s");
    }
}

#[test]
fn warm_up_ramps_weighted_random() {
    let start = Instant::now();
    let lb = warming(Strategy::WeightedRandom, start);
    let ctx = PickContext::new().at(start + Duration::from_secs(25));
    let counts = tally(&lb, &ctx, 100_000);
    // Weights 100 and 25: the newcomer gets a fifth.
    assert_near(counts[&addr(1)], 20_000.0, 0.05);
    let ctx = PickContext::new().at(start + Duration::from_secs(100));
    let counts = tally(&lb, &ctx, 100_000);
    assert_near(counts[&addr(1)], 50_000.0, 0.05);
}

#[test]
fn warm_up_ramps_weighted_least_connection() {
    let start = Instant::now();
    let lb = warming(Strategy::WeightedLeastConnection, start);
    let ctx = PickContext::new().at(start + Duration::from_secs(20));
    // Weights 100 and 20: held calls split 5 to 1.
    let held: Vec<_> = (0..60).map(|_| lb.pick(&ctx).unwrap()).collect();
    assert_eq!(lb.stats(addr(0)).unwrap().in_flight(), 50);
    assert_eq!(lb.stats(addr(1)).unwrap().in_flight(), 10);
    drop(held);
}

#[test]
fn warm_up_does_not_apply_to_unweighted_strategies() {
    let start = Instant::now();
    let lb = warming(Strategy::RoundRobin, start);
    let counts = tally(&lb, &PickContext::new().at(start), 100);
    assert_eq!(counts[&addr(1)], 50);
}

#[test]
fn balancer_types_are_shareable_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LoadBalancer>();
    send_sync::<rpc_lb::Picked>();
    send_sync::<rpc_lb::ProviderStats>();
}

#[test]
fn concurrent_picks_during_updates() {
    const UNIVERSE: usize = 12;
    const PICKS: u64 = 20_000;
    // Two providers sit in every set but may never take a call.
    let never = [addr(UNIVERSE), addr(UNIVERSE + 1)];
    let with_never = |mut set: Vec<Provider>| {
        set.insert(set.len() / 2, Provider::new(never[0]).weight(0));
        set.push(Provider::new(never[1]).draining(true));
        set
    };
    // Subsets of the universe with various weights and orders; one is empty
    // so picks may fail (they must not panic).
    let sets: Vec<Vec<Provider>> = [
        providers(&[100; UNIVERSE]),
        providers(&[5, 1, 1]),
        providers(&[0, 0, 0, 0, 0, 0, 100, 200, 300, 0, 0, 50]),
        vec![],
        providers(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            .into_iter()
            .rev()
            .collect(),
    ]
    .into_iter()
    .map(with_never)
    .collect();
    let universe: HashSet<_> = (0..UNIVERSE).map(addr).collect();
    for strategy in Strategy::ALL {
        let lb = Arc::new(LoadBalancer::new("test.Service", strategy));
        lb.update(sets[0].clone());
        let stop = Arc::new(AtomicBool::new(false));
        let updater = {
            let (lb, stop, sets) = (Arc::clone(&lb), Arc::clone(&stop), sets.clone());
            thread::spawn(move || {
                let mut n = 0;
                loop {
                    lb.update(sets[n % sets.len()].clone());
                    lb.set_healthy(addr(n % UNIVERSE), n % 3 != 0);
                    lb.set_draining(addr((n + 5) % UNIVERSE), n % 4 == 0);
                    n += 1;
                    if stop.load(Ordering::Relaxed) {
                        return n;
                    }
                }
            })
        };
        let pickers: Vec<_> = (0..3u64)
            .map(|t| {
                let (lb, universe) = (Arc::clone(&lb), universe.clone());
                thread::spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..PICKS {
                        let ctx = PickContext::new().hash_key(i * 3 + t);
                        // An error is expected while the empty set is in
                        // place; the scheduler decides how often that is.
                        if let Ok(p) = lb.pick(&ctx) {
                            assert!(
                                universe.contains(&p.addr()),
                                "{strategy} picked {}",
                                p.addr()
                            );
                            p.record_success(Duration::from_micros(i % 1000));
                            // Keep a few calls in flight, as a real client does.
                            held.push(p);
                            if held.len() > 8 {
                                drop(held.remove(0));
                            }
                        }
                    }
                })
            })
            .collect();
        for picker in pickers {
            picker.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let updates = updater.join().unwrap();
        assert!(updates > 0);
        // Every guard was released, into whichever stats it came from.
        lb.update(sets[0].clone());
        for i in 0..UNIVERSE {
            assert_eq!(lb.stats(addr(i)).unwrap().in_flight(), 0, "{strategy}");
        }
    }
}

/// What a provider carries comes with its pick, from the same snapshot, for every
/// strategy, and follows updates: a provider that stays keeps its state, carries
/// the value of the latest update, and one listed twice carries its later value.
#[test]
fn picks_hand_over_what_the_picked_provider_carries() {
    for strategy in Strategy::ALL {
        let lb = LoadBalancer::carrying("test.Service", strategy, Config::default());
        lb.update_carrying((0..4).map(|i| (Provider::new(addr(i)), i * 10)));
        for key in 0..200u64 {
            let ctx = PickContext::new().hash_key(key);
            let (picked, carried) = lb.pick_with(&ctx, |value| *value).unwrap();
            let index = (0..4).find(|&i| addr(i) == picked.addr()).unwrap();
            assert_eq!(carried, index * 10, "{strategy}");
        }
        assert_eq!(lb.carried(addr(2)), Some(20));
        assert_eq!(lb.carried(addr(9)), None);

        // In flight across an update: the staying provider keeps its count.
        let lb_stats = LoadBalancer::carrying(
            "test.Service",
            strategy,
            Config::default().track_stats(true),
        );
        lb_stats.update_carrying([(Provider::new(addr(0)), "old")]);
        let (held, _) = lb_stats.pick_with(&PickContext::new(), |v| *v).unwrap();
        lb_stats.update_carrying([
            (Provider::new(addr(0)), "new"),
            (Provider::new(addr(1)), "first"),
            (Provider::new(addr(1)), "later"),
        ]);
        assert_eq!(
            lb_stats.stats(addr(0)).unwrap().in_flight(),
            1,
            "{strategy}"
        );
        drop(held);
        assert_eq!(
            lb_stats.stats(addr(0)).unwrap().in_flight(),
            0,
            "{strategy}"
        );
        assert_eq!(
            lb_stats.carried_all(),
            vec![(addr(0), "new"), (addr(1), "later")],
            "{strategy}"
        );

        // No provider: no value is made.
        let empty: LoadBalancer<u32> =
            LoadBalancer::carrying("test.Empty", strategy, Config::default());
        let mut made = false;
        let err = empty
            .pick_with(&PickContext::new(), |_| made = true)
            .unwrap_err();
        assert!(matches!(err, LbError::NoProvider { .. }));
        assert!(!made);
    }
}

/// A provider marked down is not picked, and so its value is not handed over:
/// `pick_with` pairs a value only with the provider actually picked.
#[test]
fn pick_with_skips_what_unavailable_providers_carry() {
    let lb = LoadBalancer::carrying("test.Service", Strategy::RoundRobin, Config::default());
    lb.update_carrying([(Provider::new(addr(0)), 'a'), (Provider::new(addr(1)), 'b')]);
    lb.set_healthy(addr(0), false);
    for _ in 0..10 {
        let (picked, carried) = lb.pick_with(&PickContext::new(), |v| *v).unwrap();
        assert_eq!((picked.addr(), carried), (addr(1), 'b'));
    }
}
