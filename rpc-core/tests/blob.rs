//! `Blob` payloads over real TCP: every size round-trips intact under concurrency
//! (frames split across reads, batches of many frames), and blobs a handler keeps stay
//! intact while the connection goes on receiving.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::{service, Blob, Client, Server};
use support::bounded;

#[service(name = "test.Blobs")]
trait Blobs {
    /// Returns `data` unchanged.
    async fn echo(&self, data: Blob) -> Blob;
    /// Keeps `data` and returns how many blobs are kept.
    async fn keep(&self, data: Blob) -> u64;
    /// The kept blobs, concatenated.
    async fn kept(&self) -> Blob;
}

#[derive(Default)]
struct Store {
    kept: Mutex<Vec<Blob>>,
}

impl Blobs for Arc<Store> {
    async fn echo(&self, data: Blob) -> Blob {
        data
    }
    async fn keep(&self, data: Blob) -> u64 {
        let mut kept = self.kept.lock().unwrap();
        kept.push(data);
        kept.len() as u64
    }
    async fn kept(&self) -> Blob {
        Blob::from(self.kept.lock().unwrap().concat())
    }
}

/// `len` bytes that tell their size and position apart.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn start() -> (rpc_core::ServerHandle, BlobsClient, Arc<Store>) {
    let store = Arc::new(Store::default());
    let server = Server::builder()
        .workers(1)
        .add_service(BlobsServer::new(Arc::clone(&store)))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn();
    let client = Client::builder()
        .timeout(Duration::from_secs(20))
        .connect(server.local_addr())
        .await
        .unwrap();
    (server, BlobsClient::new(client), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_size_round_trip_under_concurrency() {
    bounded(async {
        let (server, blobs, _) = start().await;
        let sizes = [0, 1, 15, 1000, 2047, 2048, 2049, 65_000, 70_000, 1 << 20];
        let mut calls = tokio::task::JoinSet::new();
        for round in 0..8u8 {
            for (i, &len) in sizes.iter().enumerate() {
                let blobs = blobs.clone();
                let seed = round.wrapping_mul(17).wrapping_add(i as u8);
                calls.spawn(async move {
                    let sent = pattern(len, seed);
                    let back = blobs.echo(Blob::from(sent.clone())).await.unwrap();
                    assert_eq!(back.len(), len);
                    assert!(
                        back[..] == sent[..],
                        "echo of {len} bytes (seed {seed}) differs"
                    );
                });
            }
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap();
        }
        server.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_a_handler_keeps_stay_intact_while_traffic_goes_on() {
    bounded(async {
        let (server, blobs, store) = start().await;
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let chunk = pattern(3000 + usize::from(i) * 101, i);
            expected.extend_from_slice(&chunk);
            assert_eq!(
                blobs.keep(Blob::from(chunk)).await.unwrap(),
                u64::from(i) + 1
            );
            // Other traffic through the same read buffers in between.
            let noise = pattern(50_000, i.wrapping_add(100));
            assert!(blobs.echo(Blob::from(noise.clone())).await.unwrap()[..] == noise[..]);
        }
        let kept = blobs.kept().await.unwrap();
        assert!(kept[..] == expected[..], "a kept blob changed");
        assert_eq!(store.kept.lock().unwrap().len(), 40);
        server.shutdown().await.unwrap();
    })
    .await;
}
