//! `rpcctl call SERVICE.METHOD 'JSON args'`: one generic call, its JSON result on
//! stdout.

use std::io::IsTerminal;

use rpc_core::lb::Strategy;
use rpc_core::GenericError;

use crate::target::{self, TargetArgs};
use crate::Failure;

/// The options of `call`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CallArgs {
    /// The method: SERVICE.METHOD (e.g. example.Inventory.reserve).
    method: String,
    /// The arguments as JSON: an array of positional arguments, an object keyed by
    /// argument name, or the one argument of a one-argument method.
    #[arg(default_value = "[]")]
    args: String,
    /// The load-balancing strategy over the registry's providers (round-robin,
    /// weighted-round-robin, least-connection, ip-hash, random, ...).
    #[arg(long)]
    balancer: Option<Strategy>,
    /// Send oneway: no response is awaited; prints `null` once the request is written.
    #[arg(long)]
    oneway: bool,
}

/// Makes the call and prints the result.
pub(crate) async fn run(target: &TargetArgs, args: CallArgs) -> Result<(), Failure> {
    let (service, method) = target::split_target(&args.method)?;
    let json_args = target::parse_args(&args.args)?;
    let (client, consumer) = target.calls(service, args.balancer, 1).await?;
    let mut call = client
        .call_json(service, method, json_args)
        .timeout(target.timeout);
    if args.oneway {
        call = call.oneway();
    }
    let outcome = call.await;
    if let Some(consumer) = consumer {
        consumer.shutdown().await;
    }
    let result = match outcome {
        Ok(result) => result,
        Err(GenericError::Application(error)) => return Err(Failure::Application(error)),
        Err(e @ GenericError::Arguments { .. }) => return Err(Failure::Usage(e.to_string())),
        Err(e) => {
            let hint = target.token_hint(e.kind() == "UNAUTHENTICATED");
            return Err(Failure::Failed(format!(
                "{service}.{method} failed ({}): {e}{hint}",
                e.kind()
            )));
        }
    };
    println!("{}", render(&result, std::io::stdout().is_terminal())?);
    Ok(())
}

/// JSON for people on a terminal (indented), compact for pipes.
fn render(value: &serde_json::Value, terminal: bool) -> Result<String, serde_json::Error> {
    if terminal {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render;

    #[test]
    fn pretty_on_a_terminal_compact_in_a_pipe() {
        let value = json!({"id": 1, "tags": ["a"]});
        assert_eq!(render(&value, false).unwrap(), r#"{"id":1,"tags":["a"]}"#);
        assert_eq!(
            render(&value, true).unwrap(),
            "{\n  \"id\": 1,\n  \"tags\": [\n    \"a\"\n  ]\n}"
        );
    }
}
