//! The systems under test. Each module has a `serve` (the server side, run in a
//! process of its own) and a `drive` (the client side, which runs a [`Load`] over one
//! connection).

pub(crate) mod ours;
mod raw_echo;
mod tarpc_echo;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::load::{Load, Measurement};

/// The address every benchmark server listens on; the port is chosen by the system.
const LISTEN_ADDR: &str = "127.0.0.1:0";

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum System {
    /// This framework: `#[rpc_core::service]` echo, future mode, one connection.
    Ours,
    /// The same over TLS (rustls, TLS 1.3; certificates from [`BenchTls`](crate::BenchTls)),
    /// to report what TLS costs as a ratio to `ours` (`rpc-bench --tls`).
    #[value(name = "ours-tls")]
    OursTls,
    /// tarpc with its bincode serde transport over TCP.
    Tarpc,
    /// A length-prefixed echo with no serialization: the physical floor.
    Raw,
    /// Ours with a filter chain of one do-nothing layer on both sides: what the
    /// chain's machinery costs.
    OursNoop,
    /// Ours with the recommended production chain on both sides: metrics, tracing,
    /// per-method limits and token auth on the server; metrics and tracing on the
    /// client, which sends a token.
    OursProd,
}

impl System {
    /// Every system, in the order each cell runs them.
    pub const ALL: [System; 3] = [System::Ours, System::Tarpc, System::Raw];

    /// The system's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::OursTls => "ours-tls",
            System::Tarpc => "tarpc",
            System::Raw => "raw",
            System::OursNoop => "ours-noop",
            System::OursProd => "ours-prod",
        }
    }

    /// Runs this system's echo server on `127.0.0.1:0` on a current-thread runtime,
    /// calling `ready` with the bound address once it accepts connections. Returns only
    /// on failure.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start or the socket cannot be bound or accepted on.
    pub fn serve(self, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            match self {
                System::Ours => ours::serve(ready).await,
                System::OursNoop => ours::serve_chain(ours::Chain::Noop, ready).await,
                System::OursProd => ours::serve_chain(ours::Chain::Production, ready).await,
                System::OursTls => ours::serve_tls(ready).await,
                System::Tarpc => tarpc_echo::serve(ready).await,
                System::Raw => raw_echo::serve(ready).await,
            }
        })
    }

    /// Runs `load` against this system's server at `addr` over one connection, on a
    /// fresh current-thread runtime, and returns what was measured.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start, connecting fails, or the run takes 30 s longer than
    /// planned (a stuck server).
    pub fn measure(self, addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
        let runtime = match load.client_threads {
            0 | 1 => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            threads => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?,
        };
        let limit = load.warmup + load.duration + Duration::from_secs(30);
        runtime.block_on(async {
            let run = async {
                match self {
                    System::Ours => ours::drive(addr, load, false).await,
                    System::OursNoop => ours::drive_chain(addr, load, ours::Chain::Noop).await,
                    System::OursProd => {
                        ours::drive_chain(addr, load, ours::Chain::Production).await
                    }
                    System::OursTls => ours::drive(addr, load, true).await,
                    System::Tarpc => tarpc_echo::drive(addr, load).await,
                    System::Raw => raw_echo::drive(addr, load).await,
                }
            };
            tokio::time::timeout(limit, run).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{self} run did not finish within {limit:?}"),
                )
            })?
        })
    }
}

impl System {
    /// Runs this system's echo server the way a user's binary would: on the
    /// multi-threaded runtime `#[tokio::main]` builds (one worker thread per CPU), with
    /// the system's default settings (ours: `Server::builder()` defaults, so one worker
    /// reactor per CPU). Calls `ready` with the bound address; returns only on failure.
    ///
    /// # Errors
    ///
    /// If the runtime cannot start, the socket cannot be bound or accepted on, or the
    /// system is a filter-chain or TLS variant (those run only in the pinned setup).
    pub fn serve_as_users_do(self, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            match self {
                System::Ours => ours::serve_defaults(ready).await,
                System::Tarpc => tarpc_echo::serve(ready).await,
                System::Raw => raw_echo::serve(ready).await,
                System::OursNoop | System::OursProd | System::OursTls => {
                    Err(Self::pinned_only(self))
                }
            }
        })
    }

    /// Runs `load` against this system's server at `addr` over one connection the way
    /// a user's binary would: on the multi-threaded runtime `#[tokio::main]` builds,
    /// with default client settings (ours: `Client::connect`). The raw echo keeps its
    /// one-task client, the strongest floor.
    ///
    /// # Errors
    ///
    /// As [`System::measure`], and for the filter-chain variants.
    pub fn measure_as_users_do(self, addr: SocketAddr, load: &Load) -> io::Result<Measurement> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let limit = load.warmup + load.duration + Duration::from_secs(30);
        runtime.block_on(async {
            let run = async {
                match self {
                    System::Ours => ours::drive_defaults(addr, load).await,
                    System::Tarpc => tarpc_echo::drive(addr, load).await,
                    System::Raw => raw_echo::drive(addr, load).await,
                    System::OursNoop | System::OursProd | System::OursTls => {
                        Err(Self::pinned_only(self))
                    }
                }
            };
            tokio::time::timeout(limit, run).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{self} run did not finish within {limit:?}"),
                )
            })?
        })
    }

    /// The error for a system that has no default-configuration mode.
    fn pinned_only(self) -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{self} runs only with --config pinned"),
        )
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
