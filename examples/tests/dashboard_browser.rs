//! An operator at the dashboard, in a real browser, over a running example: the
//! registry, three inventory providers and a consumer calling them are processes of
//! their own; headless Chromium, driven over the DevTools protocol, loads the
//! registry's dashboard, sees the three providers, types the admin token and clicks
//! "disable" on one of them. The providers' own metrics then show the consumer stop
//! sending that one calls within about a second while the other two go on, and once
//! the browser clicks "enable", calls to it come back.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it when missing), and
//! the dashboard is rpc-registry's `dashboard` feature (on in the workspace build);
//! without either the test says so loudly and passes.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rpc_examples::INVENTORY_SERVICE;
use support::chromium::chromium;
use support::devtools::{Browser, Page};
use support::{served, start_measured_provider, start_registry_with_dashboard, Reaper};

const TOKEN: &str = "operator-token-for-the-browser-test";

/// The method the consumer calls.
const METHOD: &str = "list";

/// Calls to each provider now, by its metrics URL.
async fn counts(metrics: &[String]) -> Vec<u64> {
    let mut counts = Vec::new();
    for url in metrics {
        counts.push(served(url, METHOD).await);
    }
    counts
}

/// Waits until every provider in `growing` served more calls than in `from`;
/// panics after `limit`. Returns the counts then.
async fn until_growing(
    metrics: &[String],
    from: &[u64],
    growing: &[usize],
    limit: Duration,
) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let now = counts(metrics).await;
        if growing.iter().all(|&i| now[i] > from[i]) {
            return now;
        }
        assert!(
            started.elapsed() < limit,
            "providers {growing:?} got no calls within {limit:?}: {from:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dashboard row of the instance at `addr`, as a JavaScript expression.
fn row(addr: SocketAddr) -> String {
    format!("document.querySelector('tr.instance[data-addr=\"{addr}\"]')")
}

/// The row's button labelled `label`, as a JavaScript expression.
fn button(addr: SocketAddr, label: &str) -> String {
    format!(
        "[...{}.querySelectorAll('button')].find(b => b.textContent === '{label}')",
        row(addr)
    )
}

/// Clicks `label` on the row of `addr` once it is enabled, and waits for the page to
/// say the action was done; returns when it clicked.
async fn act(page: &mut Page<'_>, addr: SocketAddr, label: &str) -> Instant {
    page.wait_for(
        &format!("an enabled {label} button for {addr}"),
        &format!(
            "(() => {{ const b = {}; return !!b && !b.disabled; }})()",
            button(addr, label)
        ),
        Duration::from_secs(10),
    )
    .await;
    page.click(&button(addr, label)).await;
    let clicked = Instant::now();
    page.wait_for(
        &format!("that {label} of {addr} was done"),
        &format!("document.getElementById('message').textContent.includes('{addr}: {label} done')"),
        Duration::from_secs(10),
    )
    .await;
    clicked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_disables_a_provider_and_the_consumer_stops_calling_it() {
    const TEST: &str = "dashboard_browser";
    let Some(binary) = chromium() else {
        eprintln!("\n!!!!! SKIPPED {TEST}: no chromium on PATH; the dashboard was NOT driven in a browser. Install Debian's `chromium` (.ci/run does) !!!!!\n");
        return;
    };
    // Short heartbeats, so the providers' load reaches the page quickly.
    let Some((_registry, registry, admin)) = start_registry_with_dashboard(
        TOKEN,
        &["--ttl", "1s", "--heartbeat-interval", "300ms"],
        TEST,
    ) else {
        return;
    };
    let url = format!("rpc://{registry}");
    let mut providers: Vec<(Reaper, SocketAddr, String)> =
        (0..3).map(|_| start_measured_provider(&url, 100)).collect();
    let addrs: Vec<SocketAddr> = providers.iter().map(|p| p.1).collect();
    let metrics: Vec<String> = providers.iter().map(|p| p.2.clone()).collect();

    // The consumer: a steady trickle of calls, round-robin over what it discovers,
    // for longer than the test runs (it is killed at the end).
    let consumer = Command::new(env!("CARGO_BIN_EXE_inventory-consumer"))
        .args(["--registry", &url, "--balancer", "round-robin"])
        .args(["--calls", "1000000", "--pace", "2ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start consumer");
    let _consumer = Reaper(consumer);
    // It finds all three (any it missed at start arrive through its watch).
    let zero = vec![0; 3];
    until_growing(&metrics, &zero, &[0, 1, 2], Duration::from_secs(15)).await;

    let mut browser = Browser::launch(&binary).await;
    let mut page = browser.open(&format!("http://{admin}/")).await;
    // The page lists the three providers, from its own script.
    page.wait_for(
        "three provider rows",
        "document.querySelectorAll('tr.instance').length === 3",
        Duration::from_secs(15),
    )
    .await;
    for addr in &addrs {
        page.wait_for(
            &format!("the row of {addr}"),
            &format!("!!{}", row(*addr)),
            Duration::from_secs(5),
        )
        .await;
    }
    // ... and their load, reported with their heartbeats.
    page.wait_for(
        "calls/s above zero in the totals",
        "!/ 0\\.00 calls\\/s/.test(document.getElementById('totals').textContent)",
        Duration::from_secs(10),
    )
    .await;
    page.type_into("document.getElementById('token')", TOKEN)
        .await;

    let victim = 1;
    let others = [0, 2];
    let disabled_at = act(&mut page, addrs[victim], "disable").await;
    page.wait_for(
        "the disabled badge",
        &format!(
            "{}.getAttribute('data-health') === 'disabled'",
            row(addrs[victim])
        ),
        Duration::from_secs(5),
    )
    .await;

    // The victim's count stops moving: the last call it gets arrives within 1.5 s of
    // the click (the consumer follows the override within a second), then nothing
    // for 1.5 s, while the other two keep serving.
    let mut last = counts(&metrics).await;
    let mut last_change = Instant::now();
    let quiet = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counts(&metrics).await;
        if now[victim] != last[victim] {
            last_change = Instant::now();
        }
        last = now;
        if last_change.elapsed() >= Duration::from_millis(1500) {
            break last;
        }
        assert!(
            disabled_at.elapsed() < Duration::from_secs(10),
            "the disabled provider kept getting calls: {last:?}"
        );
    };
    let followed = last_change.saturating_duration_since(disabled_at);
    assert!(
        followed < Duration::from_millis(1500),
        "the consumer took {followed:?} to stop calling the disabled provider"
    );
    let still = until_growing(&metrics, &quiet, &others, Duration::from_secs(5)).await;
    assert_eq!(
        still[victim], quiet[victim],
        "the disabled provider got calls again"
    );
    eprintln!(
        "calls stopped reaching {} {followed:?} after the click",
        addrs[victim]
    );

    // Enabled again from the page: calls to it resume.
    let _ = act(&mut page, addrs[victim], "enable").await;
    until_growing(&metrics, &still, &[victim], Duration::from_secs(5)).await;

    // The change went through the registry, for everyone: its API says who did what.
    let service = support::http::http(
        admin,
        "GET",
        &format!("/api/services/{INVENTORY_SERVICE}"),
        None,
        None,
    )
    .await
    .json();
    let instances = service["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 3, "{service}");
    assert!(
        instances.iter().all(|i| i["health"] != "disabled"),
        "enabled again: {service}"
    );

    drop(browser);
    for (provider, _, _) in providers.drain(..) {
        drop(provider);
    }
}
