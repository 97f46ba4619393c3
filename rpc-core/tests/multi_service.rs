//! One server hosts several services on one port; one client connection carries calls
//! to all of them; the client's default timeout applies when a call sets none.

mod support;

use std::time::Duration;

use rpc_core::{service, Client, RpcError, Server};
use support::*;

/// A second service on the same port.
#[service(name = "test.Greeter")]
trait Greeter {
    async fn greet(&self, name: String) -> String;
}

struct Polite;

impl Greeter for Polite {
    async fn greet(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_one_port_one_connection() {
    bounded(async {
        let server = Server::builder()
            .workers(2)
            .add_service(CalculatorServer::new(Calc::default()))
            .add_service(GreeterServer::new(Polite))
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let client = Client::builder()
            .timeout(Duration::from_millis(150))
            .connect(server.local_addr())
            .await
            .unwrap();
        let calc = CalculatorClient::new(client.clone());
        let greeter = GreeterClient::new(client.clone());

        let (sum, hello) = tokio::join!(calc.add(1, 2), greeter.greet("Ada".into()));
        assert_eq!(sum.unwrap(), 3);
        assert_eq!(hello.unwrap(), "Hello, Ada!");
        let mut calls = Vec::new();
        for i in 0..50 {
            let (calc, greeter) = (calc.clone(), greeter.clone());
            calls.push(tokio::spawn(async move {
                (
                    calc.add(i, i).await.unwrap(),
                    greeter.greet(i.to_string()).await.unwrap(),
                )
            }));
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), (2 * i as i64, format!("Hello, {i}!")));
        }
        assert_eq!(
            server.open_connections(),
            1,
            "calls to both services share one connection"
        );

        // The client's default timeout, and a per-call override of it.
        let err = calc.sleep(1_000).await.unwrap_err();
        assert!(
            matches!(err, RpcError::Timeout(d) if d == Duration::from_millis(150)),
            "{err:?}"
        );
        assert_eq!(
            calc.sleep(300)
                .timeout(Duration::from_secs(2))
                .await
                .unwrap(),
            300
        );
        server.shutdown().await.unwrap();
    })
    .await;
}
