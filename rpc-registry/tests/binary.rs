//! The `rpc-registry` binary: serving, inspecting, and refusing bad flags.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Kills the child by PID when dropped.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn registry_process(flags: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rpc-registry"));
    command.args(flags).stdin(Stdio::null());
    command
}

/// Runs to completion within 20 s; returns (success, stdout, stderr).
fn run(flags: &[&str]) -> (bool, String, String) {
    let child = registry_process(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{flags:?} hung"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.success(), out, err)
}

#[test]
fn bad_flags_are_refused_clearly() {
    for (flags, expected) in [
        (&["--ttl", "0s"][..], "ttl"),
        (
            &["--ttl", "2s", "--heartbeat-interval", "2s"][..],
            "shorter than the ttl",
        ),
        (&["--max-evict-share", "1.5"][..], "max evict share"),
        (&["--ttl", "soon"][..], "not a duration"),
        (&["--listen", "not-an-address"][..], "cannot start"),
    ] {
        let listen: &[&str] = if flags.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let (ok, _, err) = run(&[listen, flags].concat());
        assert!(!ok, "{flags:?} accepted");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_shows_what_it_holds() {
    let mut child = registry_process(&["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _registry = Reaper(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("registry listening on ")
        .unwrap()
        .to_owned();
    let url = format!("rpc://{addr}");

    let server = provider().await;
    let publisher = publisher(&url);
    publish(&publisher, &server, 250);
    publisher
        .wait_registered(Duration::from_secs(5))
        .await
        .unwrap();

    let (u, s) = (url.clone(), SERVICE.to_owned());
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run(&["instances", "--registry", &u, &s]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains(&server.local_addr().to_string()), "{out}");
    assert!(out.contains("weight   250"), "{out}");
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run(&["services", "--registry", &url]))
            .await
            .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains(SERVICE), "{out}");
    publisher.shutdown().await;
}
