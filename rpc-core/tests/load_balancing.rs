//! A client over several providers: each call goes where the balancer says, over real
//! TCP, and unreachable providers are skipped without failing calls.

use std::collections::HashMap;
use std::time::Duration;

use rpc_core::lb::{Provider, Strategy};
use rpc_core::{service, Client, RpcError, Server, ServerHandle};

/// Says which provider answered.
#[service(name = "test.Whoami")]
trait Whoami {
    async fn who(&self) -> u16;
}

struct Instance {
    port: u16,
    delay: Duration,
}

impl Whoami for Instance {
    async fn who(&self) -> u16 {
        tokio::time::sleep(self.delay).await;
        self.port
    }
}

async fn provider(delay: Duration) -> ServerHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Server::builder()
        .workers(1)
        .add_service(WhoamiServer::new(Instance {
            port: addr.port(),
            delay,
        }))
        .bind(addr)
        .await
        .unwrap()
        .spawn()
}

/// Makes `calls` calls from `concurrency` tasks and counts answers per provider port.
async fn spread(client: &Client, calls: usize, concurrency: usize) -> HashMap<u16, usize> {
    let stub = WhoamiClient::new(client.clone());
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let stub = stub.clone();
        let n = calls / concurrency + usize::from(t < calls % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(n);
            for _ in 0..n {
                seen.push(stub.who().await.expect("call failed"));
            }
            seen
        }));
    }
    let mut counts = HashMap::new();
    for task in tasks {
        for port in task.await.unwrap() {
            *counts.entry(port).or_default() += 1;
        }
    }
    counts
}

fn providers(handles: &[&ServerHandle]) -> Vec<Provider> {
    handles
        .iter()
        .map(|h| Provider::new(h.local_addr()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_over_tcp() {
    let (a, b, c) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let client = Client::builder()
        .balancer(Strategy::RoundRobin)
        .connect_providers("test.Whoami", providers(&[&a, &b, &c]))
        .await
        .unwrap();
    let counts = spread(&client, 300, 1).await;
    for h in [&a, &b, &c] {
        assert_eq!(counts[&h.local_addr().port()], 100, "{counts:?}");
    }
    for h in [a, b, c] {
        h.shutdown().await.unwrap();
    }
}

async fn slow_share(strategy: Strategy) -> f64 {
    let fast1 = provider(Duration::from_millis(1)).await;
    let fast2 = provider(Duration::from_millis(1)).await;
    let fast3 = provider(Duration::from_millis(1)).await;
    let slow = provider(Duration::from_millis(40)).await;
    let client = Client::builder()
        .balancer(strategy)
        .connect_providers("test.Whoami", providers(&[&fast1, &fast2, &fast3, &slow]))
        .await
        .unwrap();
    let counts = spread(&client, 800, 16).await;
    let slow_calls = counts.get(&slow.local_addr().port()).copied().unwrap_or(0);
    for h in [fast1, fast2, fast3, slow] {
        h.shutdown().await.unwrap();
    }
    slow_calls as f64 / 800.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connection_and_adaptive_shed_load_from_a_slow_provider() {
    let round_robin = slow_share(Strategy::RoundRobin).await;
    let least = slow_share(Strategy::LeastConnection).await;
    let adaptive = slow_share(Strategy::Adaptive).await;
    // Round-robin gives the slow provider its quarter; the load-aware ones far less.
    assert!(
        (0.2..=0.3).contains(&round_robin),
        "round-robin share {round_robin}"
    );
    assert!(
        least < round_robin / 2.0,
        "least-connection share {least} vs {round_robin}"
    );
    assert!(
        adaptive < round_robin / 2.0,
        "adaptive share {adaptive} vs {round_robin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_killed_mid_run_is_skipped_without_failed_calls() {
    let (a, b, c) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let dead_port = c.local_addr().port();
    let client = Client::builder()
        .balancer(Strategy::RoundRobin)
        .connect_providers("test.Whoami", providers(&[&a, &b, &c]))
        .await
        .unwrap();
    let before = spread(&client, 30, 1).await;
    assert_eq!(before.len(), 3);
    c.shutdown().await.unwrap();
    // Every call still succeeds (spread panics on a failed call); none reach the dead one.
    let after = spread(&client, 300, 4).await;
    assert_eq!(after.values().sum::<usize>(), 300);
    assert!(
        after.get(&dead_port).copied().unwrap_or(0) == 0,
        "{after:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_join_and_leave_without_restarting_the_consumer() {
    let (a, b) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let client = Client::builder()
        .balancer("round-robin".parse().unwrap())
        .connect_providers("test.Whoami", providers(&[&a]))
        .await
        .unwrap();
    assert_eq!(spread(&client, 10, 1).await.len(), 1);
    client.update_providers(providers(&[&a, &b]));
    let counts = spread(&client, 100, 1).await;
    assert_eq!(counts.len(), 2, "{counts:?}");
    client.update_providers(providers(&[&b]));
    let counts = spread(&client, 20, 1).await;
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        vec![b.local_addr().port()]
    );

    // An empty set is a clear error naming the service.
    client.update_providers(Vec::new());
    let err = WhoamiClient::new(client.clone()).who().await.unwrap_err();
    assert!(
        matches!(&err, RpcError::NoProvider { service } if service == "test.Whoami"),
        "{err:?}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_a_key_on_one_provider() {
    let (a, b, c) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let client = Client::builder()
        .balancer(Strategy::IpHash)
        .connect_providers("test.Whoami", providers(&[&a, &b, &c]))
        .await
        .unwrap();
    let stub = WhoamiClient::new(client);
    let mut owners = std::collections::HashSet::new();
    for key in 0..50u64 {
        let first = stub.who().hash_key(key).await.unwrap();
        for _ in 0..5 {
            assert_eq!(stub.who().hash_key(key).await.unwrap(), first);
        }
        owners.insert(first);
    }
    assert!(owners.len() > 1, "all keys on one provider");
    for h in [a, b, c] {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshly_started_provider_warms_up() {
    let (old, fresh) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let long_ago = std::time::Instant::now() - Duration::from_secs(3600);
    let client = Client::builder()
        .balancer(Strategy::WeightedRoundRobin)
        .balancer_config(rpc_core::lb::Config::default().warm_up(Duration::from_secs(600)))
        .connect_providers(
            "test.Whoami",
            [
                Provider::new(old.local_addr()).started_at(long_ago),
                Provider::new(fresh.local_addr()).started_at(std::time::Instant::now()),
            ],
        )
        .await
        .unwrap();
    let counts = spread(&client, 200, 1).await;
    let fresh_calls = counts.get(&fresh.local_addr().port()).copied().unwrap_or(0);
    // Seconds into a ten-minute warm-up, the new provider gets a sliver of the traffic.
    assert!(fresh_calls <= 4, "{counts:?}");
    old.shutdown().await.unwrap();
    fresh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_survivors_share_a_dead_providers_turns_equally() {
    let (a, b, c) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let (a_port, b_port) = (a.local_addr().port(), b.local_addr().port());
    // A long backoff: once the client has seen the dead provider fail, its health mark
    // holds for the whole test, as it does between a provider's death and its eviction.
    let client = Client::builder()
        .balancer(Strategy::RoundRobin)
        .reconnect_backoff(Duration::from_secs(30), Duration::from_secs(30))
        .connect_providers("test.Whoami", providers(&[&a, &b, &c]))
        .await
        .unwrap();
    assert_eq!(spread(&client, 30, 1).await.len(), 3);
    c.shutdown().await.unwrap();
    // Let the client see it go (its first call there fails over).
    spread(&client, 3, 1).await;
    for window in 0..2 {
        let counts = spread(&client, 30, 1).await;
        assert_eq!(
            (counts.get(&a_port), counts.get(&b_port), counts.len()),
            (Some(&15), Some(&15), 2),
            "window {window}: {counts:?}"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A provider that stays through provider-set updates keeps its connections: the
/// balancer carries the same pool for it, and its server sees one connection, not a
/// new one per update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_that_stay_keep_their_connections_across_updates() {
    let (a, b) = (
        provider(Duration::ZERO).await,
        provider(Duration::ZERO).await,
    );
    let client = Client::builder()
        .connect_providers("test.Whoami", providers(&[&a]))
        .await
        .unwrap();
    spread(&client, 10, 1).await;
    let balancer = client
        .balancer()
        .expect("a client over providers has a balancer");
    let pool = balancer.carried(a.local_addr()).expect("a is in the set");
    assert_eq!(pool.addr(), a.local_addr());
    for set in [
        providers(&[&a, &b]),
        vec![Provider::new(a.local_addr()).weight(5)],
        providers(&[&b, &a]),
    ] {
        client.update_providers(set);
        let counts = spread(&client, 40, 2).await;
        assert!(counts.contains_key(&a.local_addr().port()), "{counts:?}");
        let now = balancer.carried(a.local_addr()).unwrap();
        assert!(std::sync::Arc::ptr_eq(&pool, &now), "a's pool was replaced");
        assert_eq!(a.open_connections(), 1, "a new connection to a was opened");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Makes `calls` sequential calls to a lone adaptive provider that takes 30 ms each,
/// and returns what its balancer recorded: the connection times each call (no clock
/// is read by the caller), on the fast path or through a filter chain.
async fn adaptive_record(client: Client, calls: u64) -> (u64, Duration) {
    let stub = WhoamiClient::new(client.clone());
    for _ in 0..calls {
        stub.who().await.expect("call failed");
    }
    let balancer = client.balancer().expect("a cluster client");
    let addr = balancer.providers()[0].addr;
    let stats = balancer.stats(addr).expect("the provider is in the set");
    let latency = stats.latency().expect("adaptive estimates latency");
    (stats.successes(), latency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_calls_latency_is_timed_by_its_connection_on_both_paths() {
    let slow = provider(Duration::from_millis(30)).await;
    let fast_path = Client::builder()
        .balancer(Strategy::Adaptive)
        .connect_providers("test.Whoami", providers(&[&slow]))
        .await
        .unwrap();
    let chained = Client::builder()
        .balancer(Strategy::Adaptive)
        .layer(tower::layer::util::Identity::new())
        .connect_providers("test.Whoami", providers(&[&slow]))
        .await
        .unwrap();
    for (path, client) in [("fast path", fast_path), ("filter chain", chained)] {
        let (successes, latency) = adaptive_record(client, 5).await;
        assert_eq!(successes, 5, "{path}: every call recorded");
        // From the write that carried the request to the read that brought the reply:
        // at least the handler's 30 ms, and not some unrelated span of time.
        assert!(
            latency >= Duration::from_millis(29) && latency < Duration::from_secs(2),
            "{path}: latency estimate {latency:?}"
        );
    }
    slow.shutdown().await.unwrap();
}
