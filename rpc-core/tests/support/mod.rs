//! Shared fixtures: a calculator service with every kind of method, servers on
//! ephemeral ports, and misbehaving peers.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::{service, Server, ServerBuilder, ServerHandle};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MathError {
    DivideByZero,
    Overflow { a: i64, b: i64 },
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// The test service.
#[service(name = "test.Calculator")]
pub trait Calculator {
    /// Adds.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides; typed error on zero.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;
    /// Sleeps, then answers with its argument.
    async fn sleep(&self, ms: u64) -> u64;
    /// Takes a struct.
    async fn midpoint(&self, a: Point, b: Point) -> Point;
    /// No arguments.
    async fn hits(&self) -> u64;
    /// Records a number; no response.
    #[oneway]
    async fn record(&self, n: u64);
    /// Panics.
    async fn explode(&self) -> u64;
    /// Echoes bytes.
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;
}

#[derive(Debug, Default)]
pub struct Calc {
    pub recorded: Arc<AtomicU64>,
    pub hits: AtomicU64,
}

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        self.hits.fetch_add(1, Ordering::Relaxed);
        a + b
    }
    async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError> {
        if b == 0 {
            Err(MathError::DivideByZero)
        } else {
            a.checked_div(b).ok_or(MathError::Overflow { a, b })
        }
    }
    async fn sleep(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
    async fn midpoint(&self, a: Point, b: Point) -> Point {
        Point {
            x: (a.x + b.x) / 2.0,
            y: (a.y + b.y) / 2.0,
            label: format!("{}-{}", a.label, b.label),
        }
    }
    async fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    async fn record(&self, n: u64) {
        self.recorded.fetch_add(n, Ordering::SeqCst);
    }
    async fn explode(&self) -> u64 {
        panic!("boom")
    }
    async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
        data
    }
}

/// A method the server does not have, under the calculator's name.
#[service(name = "test.Calculator")]
pub trait CalculatorV2 {
    async fn subtract(&self, a: i64, b: i64) -> i64;
}

/// A service the server does not host.
#[service(name = "test.Missing")]
pub trait Missing {
    async fn anything(&self) -> u64;
}

/// Starts a calculator server on an ephemeral port.
pub async fn start() -> (ServerHandle, Arc<AtomicU64>) {
    start_with(Server::builder().workers(2)).await
}

pub async fn start_with(builder: ServerBuilder) -> (ServerHandle, Arc<AtomicU64>) {
    let calc = Calc::default();
    let recorded = Arc::clone(&calc.recorded);
    let server = builder
        .add_service(CalculatorServer::new(calc))
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    (server.spawn(), recorded)
}

/// A peer that accepts connections, reads whatever comes and never answers; after
/// `close_after` it drops the connection (None: keeps it open, silent).
pub async fn black_hole(close_after: Option<Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let read_forever = async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                match close_after {
                    Some(d) => {
                        let _ = tokio::time::timeout(d, read_forever).await;
                    }
                    None => read_forever.await,
                }
            });
        }
    });
    addr
}

/// Bounds a test's async body.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test took longer than 20 s")
}
