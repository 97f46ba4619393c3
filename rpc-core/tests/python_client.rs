//! `examples/python/client.py`, a client written from `docs/PROTOCOL.md` alone, run as
//! a real process against our server: its demo (calls of every kind, errors, oneway,
//! multiplexing, deadline, cancel, heartbeats) and the test vectors. Skipped, loudly,
//! where `python3` is missing.

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: python3 is not installed; the Python client was not run");
    }
    found.then_some("python3")
}

/// Runs `client.py ARGS...` with a time limit (killed past it); returns its stdout,
/// asserting success.
async fn run_client(python: &str, args: &[String]) -> String {
    let mut child = Command::new(python)
        .arg(root().join("examples/python/client.py"))
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Python client ran longer than 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!(
        "client.py {} ({:?}):\n{out}{err}",
        args[0],
        started.elapsed()
    );
    assert!(
        status.success(),
        "client.py {args:?} failed ({status}):\n{out}\n{err}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_written_from_the_spec_works_against_our_server() {
    let Some(python) = python() else { return };
    let (server, recorded) = start().await;
    let addr = server.local_addr().to_string();
    let out = run_client(python, &["demo".to_owned(), addr.clone()]).await;
    assert!(out.contains("demo: 0 failure(s)"), "{out}");
    // record(5) as a plain request, record(7) oneway: both ran.
    assert_eq!(recorded.load(Ordering::SeqCst), 12);
    let vectors = root().join("docs/test-vectors.json");
    let out = run_client(
        python,
        &["vectors".to_owned(), vectors.display().to_string(), addr],
    )
    .await;
    assert!(out.contains("vectors: 0 failure(s)"), "{out}");
    server.shutdown().await.unwrap();
}
