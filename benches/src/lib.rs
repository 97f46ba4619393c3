//! Benchmarks of the RPC framework side by side with [tarpc] and a raw length-framed
//! echo, the physical floor (`DESIGN.md` section 10).
//!
//! The `rpc-bench` binary runs every cell of the grid (payload × calls in flight) for
//! each system in turn, interleaved (ours, tarpc, raw, then the next cell), and prints
//! one markdown table. Reproduce it with:
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-bench -- --duration 3 --warmup 1 --rounds 3
//! ```
//!
//! It takes about 5½ minutes. `--quick` is the CI smoke run (about 20 s; exits non-zero
//! if any call fails); `--systems`, `--in-flight` and `--payloads` narrow the grid (for
//! profiling one cell); `--cpus shared` runs client and servers on one CPU;
//! `--client-threads N` gives the clients a multi-threaded runtime; `--config default`
//! measures the configuration users run instead (multi-threaded runtimes as
//! `#[tokio::main]` builds them, default workers and client settings, no pinning, each
//! client in a child process, peak RSS of both processes per cell). The machine
//! is shared and noisy: `--rounds 3` reports the median of each figure over the rounds,
//! and a table whose p99s are all in milliseconds was disturbed by something else and
//! should be rerun.
//!
//! # Layout
//!
//! - `systems`: the three systems under test, [`System`]: `ours` (an echo service made
//!   with `#[rpc_core::service]`), `tarpc_echo` and `raw_echo`, each a server and a
//!   load generator;
//! - `affinity`: where client and servers run ([`CpuLayout`]);
//! - `load`: what one measurement runs ([`Load`]), the closed-loop load generator and
//!   its result ([`Measurement`]);
//! - `server_process`: a system's server in a child process of its own
//!   ([`ServerProcess`]);
//! - `report`: the markdown tables ([`CellResult`], [`markdown_table`], and
//!   [`tls_table`] for `--tls`);
//! - `tls_certs`: the certificates of `--tls` ([`BenchTls`]);
//! - `setup`: pinned or default setup ([`Setup`]); in the default one, each client in a
//!   child process ([`measure_as_users_do`]) and peak RSS ([`peak_rss_kib`]);
//! - `default_report`: the default setup's tables, with issue 12's targets marked
//!   ([`DefaultCell`], [`default_table`], [`targets_table`]).
//!
//! The `rpc-mem` binary (`src/bin/rpc-mem.rs`) measures the server's resident memory
//! per idle connection and per call in flight:
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-mem
//! ```
//!
//! The criterion micro-benchmarks in `benches/` (frame encode/decode, dispatch of one
//! call) use the [`Echo`] service defined here.
//!
//! # Method: what is fair
//!
//! - **Separate processes, one connection.** Each measurement starts a fresh server
//!   process (`rpc-bench server --system X`, listening on `127.0.0.1:0` and printing its
//!   port), and the driver process connects one TCP connection to it. `TCP_NODELAY` is
//!   set on both ends for all three systems.
//! - **Pinned CPUs.** By default (`--cpus split`) the client runs on CPU 0 and the
//!   servers on CPU 1; `--cpus shared` puts both on CPU 0, which makes calls per second
//!   at one call in flight the inverse of the whole CPU cost of a call.
//! - **Same core budget: one busy thread per side.** Server: ours runs
//!   `Server::builder().workers(1)` (one worker reactor; the boss, on the process's
//!   current-thread runtime, only accepts the one connection and then sleeps); tarpc
//!   runs on a current-thread runtime, spawning each request as a task as its examples
//!   do; raw runs one task on a current-thread runtime. Client: a fresh current-thread
//!   runtime per measurement for every system.
//! - **Closed loop.** Ours and tarpc: N tokio tasks (N = calls in flight), each making
//!   sequential calls through one shared client, in future mode. Each call sends a fresh
//!   owned `serde_bytes::ByteBuf` copy of the payload, since both APIs take arguments by
//!   value. Raw: one task keeping N length-prefixed requests outstanding on the socket
//!   (the echo answers in order, so each reply is matched to its send time from a FIFO);
//!   there is no per-call task, channel, id or serialization: this is the floor.
//! - **Measured window.** Calls run for the warm-up first; then every call completing
//!   inside the window counts toward calls per second and its latency (send to reply)
//!   goes into an HDR histogram. Latency includes client-side queueing, as a caller
//!   sees it.
//!
//! [tarpc]: https://docs.rs/tarpc

#![forbid(unsafe_code)]

mod affinity;
mod default_report;
mod load;
mod report;
mod server_process;
mod setup;
mod systems;
mod tls_certs;

pub use affinity::{pin_current_thread, CpuLayout};
pub use default_report::{default_table, targets_table, DefaultCell};
pub use load::{ClientChain, Load, Measurement};
pub use report::{
    chain_table, markdown_table, server_chain_table, tls_table, CellResult, ChainCell,
};
pub use server_process::{exit_when_stdin_closes, report_port, ServerProcess};
pub use setup::{measure_as_users_do, peak_rss_kib, run_client_child, Sample, Setup};
pub use systems::ours::{
    drive_spread, serve_with_in_flight_cap, Echo, EchoClient, EchoImpl, EchoServer,
};
pub use systems::System;
pub use tls_certs::BenchTls;
