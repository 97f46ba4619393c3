//! `rpcctl`: operate a deployment of the RPC framework from the command line.
//!
//! ```text
//! rpcctl services                                   # what the registry knows
//! rpcctl instances example.Inventory                # its providers: address, weight, methods
//! rpcctl describe example.Inventory                 # methods, argument types, docs (reflection)
//! rpcctl watch example.Inventory                    # providers joining, leaving, changing weight
//! rpcctl call example.Inventory.reserve '["espresso", 2]'
//! rpcctl call example.Inventory.reserve '{"sku": "espresso", "quantity": 2}' --server 127.0.0.1:7001
//! rpcctl bench example.Inventory.list '[]' --concurrency 32 --duration 10s
//! ```
//!
//! Every command talks to a registry (`--registry URL`, default
//! `rpc://127.0.0.1:7000`) or, where that makes sense, straight to one server
//! (`--server ADDR`). Servers with token authentication get `--token TOKEN` (or
//! `RPCCTL_TOKEN`) with every call, reflection's included. Exit status: 0 on success, 1 when the called method returned its
//! own error (printed as JSON on stderr), 2 for bad command-line input, 3 for any other
//! failure (unreachable, timeout, unknown service or method, ...).
//!
//! Layout: `target` (where calls go: a server or a registry's providers), `show`
//! (`services`, `instances`, `describe`, `watch`), `call`, `bench`.

mod bench;
mod call;
mod show;
mod target;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rpc_registry::parse_duration;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "rpcctl",
    about = "Operate a deployment of the RPC framework: list, describe, watch, call, bench",
    long_about = None
)]
struct Cli {
    /// Where to look.
    #[command(flatten)]
    target: target::TargetArgs,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Every service: in the registry (instances, consumers), or on one server
    /// (`--server`, through its reflection service).
    Services,
    /// The providers of a service in the registry: address, weight, group, version,
    /// age, methods.
    Instances {
        /// The service's wire name.
        service: String,
    },
    /// A service's methods with their argument and result types and docs, from the
    /// reflection service of a provider (`--server`, or one the registry names).
    Describe {
        /// The service's wire name.
        service: String,
    },
    /// Prints the providers of a service, then every change as it happens (until
    /// Ctrl-C, or `--for`).
    Watch {
        /// The service's wire name.
        service: String,
        /// Stop after this long (e.g. 30s).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<Duration>,
    },
    /// Calls a method with JSON arguments and prints its JSON result.
    Call(call::CallArgs),
    /// Loads a method with concurrent calls for a while, then prints calls/s, errors
    /// by status, latency percentiles and a latency histogram.
    Bench(bench::BenchArgs),
}

/// Why a command failed, and so how `rpcctl` exits.
#[derive(Debug)]
enum Failure {
    /// The called method returned its own error: exit 1, the error as JSON.
    Application(serde_json::Value),
    /// Bad input on the command line: exit 2.
    Usage(String),
    /// Anything else: exit 3.
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::Failed(error.to_string())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Services => show::services(&cli.target, cli.json).await,
        Command::Instances { service } => show::instances(&cli.target, &service, cli.json).await,
        Command::Describe { service } => show::describe(&cli.target, &service, cli.json).await,
        Command::Watch { service, duration } => {
            show::watch(&cli.target, &service, duration, cli.json).await
        }
        Command::Call(args) => call::run(&cli.target, args).await,
        Command::Bench(args) => bench::run(&cli.target, args, cli.json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Application(error)) => {
            eprintln!("rpcctl: the method returned an error: {error}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("rpcctl: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("rpcctl: {message}");
            ExitCode::from(3)
        }
    }
}
