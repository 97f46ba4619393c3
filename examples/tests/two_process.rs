//! Runs the example provider and consumer as two real processes over TCP.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child by PID when dropped, so a failing test leaves no process behind.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} did not exit in {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn provider_and_consumer_processes() {
    let mut provider = Reaper(
        Command::new(env!("CARGO_BIN_EXE_inventory-provider"))
            .args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start provider"),
    );
    let mut line = String::new();
    BufReader::new(provider.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_owned();

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
