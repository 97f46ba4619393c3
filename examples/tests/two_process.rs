//! Runs the example provider and consumer as two real processes over TCP.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{start_provider, wait_with_deadline, Reaper};

#[test]
fn provider_and_consumer_processes() {
    let (mut provider, addr) = start_provider(2);
    let addr = addr.to_string();

    for prefix in ["first", "second"] {
        let consumer = Command::new(env!("CARGO_BIN_EXE_inventory-consumer"))
            .args(["--server", &addr, "--prefix", prefix])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start consumer");
        let mut consumer = Reaper(consumer);
        let status = wait_with_deadline(&mut consumer.0, Duration::from_secs(30));
        let mut out = String::new();
        std::io::Read::read_to_string(consumer.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(status.success(), "consumer failed: {out}");
        for expected in [
            "sync: added",
            "refused, only 7 available",
            "callback: Widget has 7 units",
            "oneway: sent 3 audit events",
            "future: first-missing not found",
            "consumer done",
        ] {
            let expected = expected.replace("first", prefix);
            assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
        }
    }

    // SIGTERM: the provider shuts down gracefully and exits 0.
    let pid = provider.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = wait_with_deadline(&mut provider.0, Duration::from_secs(15));
    assert!(status.success(), "provider exited with {status}");
}

#[test]
fn quickstart_runs() {
    let mut child = Reaper(
        Command::new(env!("CARGO_BIN_EXE_quickstart"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start quickstart"),
    );
    let status = wait_with_deadline(&mut child.0, Duration::from_secs(30));
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    for mode in [
        "future:",
        "sync:",
        "callback:",
        "oneway:",
        "shut down gracefully",
    ] {
        assert!(out.contains(mode), "missing {mode:?} in:\n{out}");
    }
}

#[test]
fn filters_example_authenticates_sheds_and_counts() {
    let mut child = Reaper(
        Command::new(env!("CARGO_BIN_EXE_filters"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start filters"),
    );
    let status = wait_with_deadline(&mut child.0, Duration::from_secs(60));
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    // A burst of five goes through; a slow machine may refill a token or two.
    let shed: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("list: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no shed count in:\n{out}"));
    assert!((12..=15).contains(&shed), "{shed} shed:\n{out}");
    assert!(out.contains("anonymous call refused"), "{out}");
    assert!(
        out.contains("consumer example.Inventory.reserve: 10 calls, 0 errors"),
        "{out}"
    );
    assert!(
        out.contains(r#"rpc_server_calls_total{service="example.Inventory",method="list",outcome="unauthenticated"} 1"#),
        "{out}"
    );
}

#[test]
fn balancers_example_runs_every_strategy() {
    let mut child = Reaper(
        Command::new(env!("CARGO_BIN_EXE_balancers"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start balancers"),
    );
    let status = wait_with_deadline(&mut child.0, Duration::from_secs(60));
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    for name in [
        "round-robin",
        "weighted-round-robin",
        "least-connection",
        "ip-hash",
        "random",
        "adaptive",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "missing {name} in:\n{out}"
        );
    }
}
