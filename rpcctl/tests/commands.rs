//! Every `rpcctl` command, run as a real process against a real registry and real
//! providers of the example inventory service over TCP loopback.

use std::process::{Output, Stdio};
use std::time::Duration;

use rpc_core::{Server, ServerHandle};
use rpc_examples::{InMemoryInventory, InventoryServer};
use rpc_registry::{Instance, Publisher, RegistryConfig, RegistryServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// The service the providers serve.
const SERVICE: &str = "example.Inventory";

/// A provider: a server and its registration.
struct Provider {
    server: ServerHandle,
    publisher: Publisher,
}

impl Provider {
    /// Serves the inventory on 127.0.0.1:0 and registers it with its method list.
    async fn start(url: &str, weight: u32) -> Provider {
        let skeleton = InventoryServer::new(InMemoryInventory::default());
        let server = Server::builder()
            .workers(1)
            .add_service(skeleton.clone())
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let publisher = Publisher::builder(rpc_registry::connect(url).unwrap())
            .owner("rpcctl-test")
            .deregister_delay(Duration::from_millis(50))
            .start();
        publisher
            .publish(Instance::of(&skeleton, server.local_addr().to_string()).weight(weight))
            .unwrap();
        publisher
            .wait_registered(Duration::from_secs(5))
            .await
            .unwrap();
        Provider { server, publisher }
    }

    fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    async fn stop(self) {
        self.publisher.shutdown().await;
        self.server.shutdown().await.unwrap();
    }
}

/// A registry on 127.0.0.1:0 and its URL.
async fn registry() -> (RegistryServer, String) {
    let registry = RegistryServer::bind("127.0.0.1:0", RegistryConfig::default())
        .await
        .unwrap();
    let url = format!("rpc://{}", registry.local_addr());
    (registry, url)
}

/// Runs `rpcctl args...` to completion (30 s at most), output captured (so stdout is
/// a pipe, not a terminal).
async fn rpcctl(args: &[&str]) -> Output {
    rpcctl_with_env(args, &[]).await
}

/// [`rpcctl`] with environment variables set (and no `RPCCTL_TOKEN` but a given one).
async fn rpcctl_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_rpcctl"))
        .args(args)
        .env_remove("RPCCTL_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("rpcctl {args:?} ran longer than 30 s"))
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a successful run and returns its stdout.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_instances_come_from_the_registry() {
    let (registry, url) = registry().await;
    let a = Provider::start(&url, 100).await;
    let b = Provider::start(&url, 300).await;

    let listed = ok(&rpcctl(&["services", "--registry", &url]).await);
    let row = listed
        .lines()
        .find(|l| l.starts_with(SERVICE))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [SERVICE, "2", "0"]
    );
    let listed = json_of(&ok(
        &rpcctl(&["--json", "services", "--registry", &url]).await
    ));
    assert_eq!(
        listed,
        json!([{"service": SERVICE, "instances": 2, "consumers": 0}])
    );

    let table = ok(&rpcctl(&["instances", SERVICE, "--registry", &url]).await);
    for (provider, weight) in [(&a, "100"), (&b, "300")] {
        let row = table
            .lines()
            .find(|l| l.starts_with(&provider.addr()))
            .unwrap_or_else(|| panic!("{table}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[1], weight, "{row}");
        assert_eq!(
            fields.last().unwrap(),
            &"add_item,get,reserve,list,audit,audit_count",
            "the registered method list: {row}"
        );
    }
    let listed = json_of(&ok(&rpcctl(&[
        "--json",
        "instances",
        SERVICE,
        "--registry",
        &url,
    ])
    .await));
    assert_eq!(listed.as_array().unwrap().len(), 2);

    // A command that needs a registry says so when given a server.
    let refused = rpcctl(&["instances", SERVICE, "--server", &a.addr()]).await;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--registry"),
        "{}",
        stderr(&refused)
    );
    // An unreachable registry is a clear failure.
    let down = rpcctl(&[
        "services",
        "--registry",
        "rpc://127.0.0.1:1",
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(down.status.code(), Some(3));
    assert!(
        stderr(&down).contains("no registry answered"),
        "{}",
        stderr(&down)
    );

    a.stop().await;
    b.stop().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reads_reflection_from_a_server_or_through_the_registry() {
    let (registry, url) = registry().await;
    let provider = Provider::start(&url, 100).await;
    let addr = provider.addr();

    let services = ok(&rpcctl(&["services", "--server", &addr]).await);
    let names: Vec<&str> = services
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, [SERVICE, "rpc.Reflection"], "{services}");

    for source in [["--server", addr.as_str()], ["--registry", url.as_str()]] {
        let text = ok(&rpcctl(&["describe", SERVICE, source[0], source[1]]).await);
        assert!(
            text.starts_with(&format!("service {SERVICE}  (described by {addr})")),
            "{text}"
        );
        assert!(
            text.contains("  A warehouse inventory, served remotely."),
            "{text}"
        );
        assert!(
            text.contains("  reserve(sku: String, quantity: u32) -> Result<u32, InventoryError>\n      Takes `quantity` units out of stock and returns how many are left."),
            "{text}"
        );
        assert!(text.contains("  audit(event: String)  [oneway]"), "{text}");
        assert!(
            text.contains("  list() -> Vec<Item>  [idempotent]"),
            "{text}"
        );
    }
    let described = json_of(&ok(&rpcctl(&[
        "--json", "describe", SERVICE, "--server", &addr,
    ])
    .await));
    assert_eq!(described["name"], SERVICE);
    assert_eq!(
        described["methods"][0]["args"],
        json!([{"name": "item", "type": "NewItem"}])
    );
    assert_eq!(described["methods"][0]["error"], "InventoryError");

    let missing = rpcctl(&["describe", "example.Nope", "--server", &addr]).await;
    assert_eq!(missing.status.code(), Some(3));
    assert!(
        stderr(&missing).contains("no service `example.Nope`"),
        "{}",
        stderr(&missing)
    );

    // With the provider gone but still registered, the registered method list is shown.
    let addr_only = provider.server.local_addr();
    provider.server.shutdown().await.unwrap();
    let text = ok(&rpcctl(&["describe", SERVICE, "--registry", &url, "--timeout", "1s"]).await);
    assert!(
        text.contains(&format!("(described by registry {url})")),
        "{text}"
    );
    assert!(text.contains("  reserve(...)"), "{text}");
    assert!(
        stderr(&rpcctl(&["describe", SERVICE, "--registry", &url, "--timeout", "1s"]).await)
            .contains(&addr_only.to_string())
    );
    provider.publisher.shutdown().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_json_and_exits_by_outcome() {
    let (registry, url) = registry().await;
    let provider = Provider::start(&url, 100).await;
    let addr = provider.addr();
    let server = ["--server", addr.as_str()];

    // Named arguments (through reflection), then positional; compact JSON in a pipe.
    let item =
        r#"{"item": {"sku": "espresso", "name": "Espresso", "quantity": 10, "price_cents": 250}}"#;
    assert_eq!(
        ok(&rpcctl(&[
            "call",
            "example.Inventory.add_item",
            item,
            server[0],
            server[1]
        ])
        .await),
        "1\n"
    );
    let got = ok(&rpcctl(&[
        "call",
        "example.Inventory.get",
        r#"["espresso"]"#,
        server[0],
        server[1],
    ])
    .await);
    assert_eq!(
        got,
        "{\"id\":1,\"sku\":\"espresso\",\"name\":\"Espresso\",\"quantity\":10,\"price_cents\":250}\n"
    );
    assert_eq!(
        ok(&rpcctl(&[
            "call",
            "example.Inventory.reserve",
            r#"{"sku": "espresso", "quantity": 3}"#,
            server[0],
            server[1]
        ])
        .await),
        "7\n"
    );
    // No arguments given: [].
    let list = json_of(&ok(&rpcctl(&[
        "call",
        "example.Inventory.list",
        server[0],
        server[1],
    ])
    .await));
    assert_eq!(list[0]["quantity"], 7);

    // The method's own error: exit 1, the error as JSON.
    let refused = rpcctl(&[
        "call",
        "example.Inventory.reserve",
        r#"["espresso", 99]"#,
        server[0],
        server[1],
    ])
    .await;
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(r#"{"InsufficientStock":{"sku":"espresso","available":7}}"#),
        "{}",
        stderr(&refused)
    );
    assert_eq!(stdout(&refused), "");
    // Call failures: exit 3, the status named.
    let unknown = rpcctl(&["call", "example.Inventory.nope", "[]", server[0], server[1]]).await;
    assert_eq!(unknown.status.code(), Some(3));
    assert!(
        stderr(&unknown).contains("METHOD_NOT_FOUND"),
        "{}",
        stderr(&unknown)
    );
    let wrong = rpcctl(&[
        "call",
        "example.Inventory.get",
        "[1, 2]",
        server[0],
        server[1],
    ])
    .await;
    assert_eq!(wrong.status.code(), Some(3));
    assert!(stderr(&wrong).contains("BAD_REQUEST"), "{}", stderr(&wrong));
    let down = rpcctl(&[
        "call",
        "example.Inventory.list",
        "--server",
        "127.0.0.1:1",
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(down.status.code(), Some(3));
    assert!(
        stderr(&down).contains("cannot connect to 127.0.0.1:1"),
        "{}",
        stderr(&down)
    );
    // Bad input on the command line: exit 2.
    for bad in [
        vec![
            "call",
            "example.Inventory.get",
            "[not json",
            server[0],
            server[1],
        ],
        vec!["call", "nodot", "[]", server[0], server[1]],
        vec![
            "call",
            "example.Inventory.get",
            r#"{"nope": 1}"#,
            server[0],
            server[1],
        ],
        vec!["call", "example.Inventory.get", "--balancer", "fastest"],
    ] {
        let out = rpcctl(&bad).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }

    // Oneway: `null` once written; the call ran.
    assert_eq!(
        ok(&rpcctl(&[
            "call",
            "example.Inventory.audit",
            r#"["checked"]"#,
            "--oneway",
            server[0],
            server[1]
        ])
        .await),
        "null\n"
    );
    let mut counted = String::new();
    for _ in 0..50 {
        counted = ok(&rpcctl(&[
            "call",
            "example.Inventory.audit_count",
            server[0],
            server[1],
        ])
        .await);
        if counted == "1\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, "1\n");

    // Through the registry, with a balancer.
    let via_registry = ok(&rpcctl(&[
        "call",
        "example.Inventory.get",
        r#""espresso""#,
        "--registry",
        &url,
        "--balancer",
        "round-robin",
    ])
    .await);
    assert_eq!(json_of(&via_registry)["quantity"], 7);
    let none = rpcctl(&[
        "call",
        "example.Missing.get",
        "[]",
        "--registry",
        &url,
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(none.status.code(), Some(3));
    assert!(
        stderr(&none).contains("no provider of example.Missing"),
        "{}",
        stderr(&none)
    );

    provider.stop().await;
    registry.shutdown().await.unwrap();
}

/// The next line `rpcctl watch` prints, within 10 s.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a line within 10 s")
        .unwrap()
        .expect("rpcctl watch still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_as_they_happen() {
    let (registry, url) = registry().await;
    let first = Provider::start(&url, 100).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpcctl"))
        .args(["watch", SERVICE, "--registry", &url, "--for", "60s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = next_line(&mut lines).await;
    assert!(
        header.ends_with(&format!("{SERVICE}: 1 provider(s)")),
        "{header}"
    );
    let listed = next_line(&mut lines).await;
    assert!(
        listed.starts_with(&format!("  {} weight 100 methods add_item,", first.addr())),
        "{listed}"
    );

    let second = Provider::start(&url, 300).await;
    let added = next_line(&mut lines).await;
    assert!(
        added.contains(&format!("+ {} weight 300", second.addr())),
        "{added}"
    );
    let second_addr = second.addr();
    second.stop().await;
    let removed = next_line(&mut lines).await;
    assert!(removed.ends_with(&format!("- {second_addr}")), "{removed}");

    child.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    first.stop().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_rate_errors_by_status_and_latency() {
    let (registry, url) = registry().await;
    let provider = Provider::start(&url, 100).await;
    let addr = provider.addr();
    let item = r#"[{"sku": "tea", "name": "Tea", "quantity": 100, "price_cents": 300}]"#;
    ok(&rpcctl(&[
        "call",
        "example.Inventory.add_item",
        item,
        "--server",
        &addr,
    ])
    .await);

    // 100 reservations succeed, every later one is refused: errors by status.
    let summary = json_of(&ok(&rpcctl(&[
        "--json",
        "bench",
        "example.Inventory.reserve",
        r#"{"sku": "tea", "quantity": 1}"#,
        "--concurrency",
        "4",
        "--duration",
        "1s",
        "--server",
        &addr,
    ])
    .await));
    assert_eq!(summary["ok"], 100, "{summary}");
    let refused = summary["errors"]["APPLICATION_ERROR"].as_u64().unwrap();
    assert!(refused > 0, "{summary}");
    assert_eq!(summary["calls"].as_u64().unwrap(), 100 + refused);
    assert_eq!(summary["concurrency"], 4);
    let latency = &summary["latency_us"];
    for (low, high) in [
        ("p50", "p90"),
        ("p90", "p99"),
        ("p99", "p999"),
        ("p999", "max"),
    ] {
        assert!(
            latency[low].as_u64().unwrap() <= latency[high].as_u64().unwrap(),
            "{summary}"
        );
    }
    assert!(summary["calls_per_second"].as_f64().unwrap() > 0.0);

    // The text summary, through the registry.
    let text = ok(&rpcctl(&[
        "bench",
        "example.Inventory.list",
        "[]",
        "-c",
        "2",
        "-d",
        "500ms",
        "--registry",
        &url,
        "--balancer",
        "least-connection",
    ])
    .await);
    assert!(
        text.starts_with("example.Inventory.list: 2 callers for "),
        "{text}"
    );
    assert!(text.contains(" calls/s\n"), "{text}");
    assert!(text.contains("  errors              0"), "{text}");
    for p in [" p50 ", " p90 ", " p99 ", " p999 ", " max "] {
        assert!(text.contains(p), "{p}: {text}");
    }
    assert!(text.contains("latency of successful calls:"), "{text}");
    assert!(text.contains('█'), "{text}");

    // Nothing succeeds: a clear failure.
    let failing = rpcctl(&[
        "bench",
        "example.Inventory.get",
        r#"["nope"]"#,
        "-c",
        "1",
        "-d",
        "200ms",
        "--server",
        &addr,
    ])
    .await;
    assert_eq!(failing.status.code(), Some(3));
    assert!(
        stdout(&failing).contains("APPLICATION_ERROR"),
        "{}",
        stdout(&failing)
    );
    assert!(
        stderr(&failing).contains("every call failed"),
        "{}",
        stderr(&failing)
    );

    provider.stop().await;
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_with_token_authentication_take_the_token() {
    // A provider whose every service, reflection included, wants a token.
    let server = Server::builder()
        .workers(1)
        .layer(rpc_core::filter::auth::TokenAuthLayer::tokens(["s3cret"]))
        .add_service(InventoryServer::new(InMemoryInventory::default()))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let addr = server.local_addr().to_string();
    let call = |extra: &'static [&'static str]| {
        let mut args = vec!["call", "example.Inventory.list", "[]", "--server", &addr];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, env: &'static [(&'static str, &'static str)]| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rpcctl_with_env(&args, env).await
    };

    // Without a token: refused, exit 3, and the message says what to do.
    let refused = run(call(&[]), &[]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let why = stderr(&refused);
    assert!(
        why.contains("UNAUTHENTICATED") && why.contains("--token"),
        "{why}"
    );
    // A wrong one: refused, and said so.
    let wrong = run(call(&["--token", "guess"]), &[]).await;
    assert_eq!(wrong.status.code(), Some(3));
    assert!(
        stderr(&wrong).contains("refused the --token"),
        "{}",
        stderr(&wrong)
    );
    // The right one, on the command line or from the environment.
    assert_eq!(ok(&run(call(&["--token", "s3cret"]), &[]).await), "[]\n");
    assert_eq!(
        ok(&run(call(&[]), &[("RPCCTL_TOKEN", "s3cret")]).await),
        "[]\n"
    );
    // Reflection sits behind the same check: `describe` and named arguments need it.
    let describe = |token: &'static [&'static str]| {
        let mut args = vec!["describe", SERVICE, "--server", &addr];
        args.extend_from_slice(token);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let refused = run(describe(&[]), &[]).await;
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stderr(&refused).contains("pass --token"),
        "{}",
        stderr(&refused)
    );
    let text = ok(&run(describe(&["--token", "s3cret"]), &[]).await);
    assert!(text.contains("reserve("), "{text}");
    // And every call of a bench.
    let bench = {
        let mut args = vec!["--json", "bench", "example.Inventory.list", "[]"];
        args.extend_from_slice(&["-c", "2", "-d", "300ms", "--server", &addr]);
        args.extend_from_slice(&["--token", "s3cret"]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let summary = json_of(&ok(&run(bench, &[]).await));
    assert!(summary["ok"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["errors"], json!({}), "{summary}");
    server.shutdown().await.unwrap();
}
