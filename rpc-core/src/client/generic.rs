//! Generic invocation (Dubbo's generic call): any method of any of our servers, with
//! JSON arguments and a JSON result, without the service's Rust types. Feature `json`.
//!
//! [`Client::call_json`] and [`JsonCall`]: JSON arguments are transcoded straight into
//! the MessagePack request (serde-transcode); the MessagePack reply is read
//! schemaless (rmpv) and converted to JSON. The argument forms and the lossy corners of
//! JSON <-> MessagePack are documented on [`Client::call_json`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use super::Client;
use crate::error::RpcError;
use crate::protocol::{
    encode_request, Frame, ProtocolError, RequestTarget, Status, SERIALIZATION_MSGPACK,
};
use crate::reflection::{MethodDescriptor, ReflectionClient, ReflectionError};

/// Why a generic call failed: the method's own error, as JSON, apart from every
/// failure of the call itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenericError {
    /// The method returned its own error (status `APPLICATION_ERROR`): the error
    /// value, as JSON (`{"NotFound": {"sku": "tea"}}` for an enum variant).
    #[error("application error: {0}")]
    Application(Value),
    /// The call failed: timeout, connection, unknown service or method, arguments the
    /// server could not decode (`BAD_REQUEST`), ...
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The JSON arguments could not be made into the method's argument array (an
    /// object naming an argument the method does not have, or named arguments for a
    /// service that does not describe its arguments). Nothing was sent.
    #[error("invalid arguments for {target}: {reason}")]
    Arguments {
        /// `service.method`.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// The reply was not valid MessagePack.
    #[error("cannot read the reply of {target}: {reason}")]
    Reply {
        /// `service.method`.
        target: String,
        /// The decoder's message.
        reason: String,
    },
}

impl GenericError {
    /// A short, stable name for the kind of failure, for counting errors by kind:
    /// the wire status name where the server answered (`APPLICATION_ERROR`,
    /// `TIMEOUT`, `BAD_REQUEST`, `METHOD_NOT_FOUND`, ...), else what happened on the
    /// client (`CONNECT`, `CONNECTION_LOST`, `NO_PROVIDER`, `ARGUMENTS`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            GenericError::Application(_) => "APPLICATION_ERROR",
            GenericError::Arguments { .. } => "ARGUMENTS",
            GenericError::Reply { .. } => "REPLY",
            GenericError::Rpc(e) => match e {
                RpcError::Timeout(_) => "TIMEOUT",
                RpcError::ServiceNotFound(_) => "SERVICE_NOT_FOUND",
                RpcError::MethodNotFound(_) => "METHOD_NOT_FOUND",
                RpcError::BadRequest(_) => "BAD_REQUEST",
                RpcError::Overloaded(_) => "OVERLOADED",
                RpcError::Unauthenticated(_) => "UNAUTHENTICATED",
                RpcError::Internal(_) => "INTERNAL_ERROR",
                RpcError::ShuttingDown => "SHUTTING_DOWN",
                RpcError::NoProvider { .. } => "NO_PROVIDER",
                RpcError::Connect { .. } | RpcError::Resolve { .. } => "CONNECT",
                RpcError::NotSent { .. } => "NOT_SENT",
                RpcError::ConnectionLost { .. } => "CONNECTION_LOST",
                RpcError::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
                RpcError::Serialization { .. } => "SERIALIZATION",
                RpcError::Protocol(_) => "PROTOCOL",
                _ => "CLIENT",
            },
        }
    }
}

impl Client {
    /// A generic call of `service.method` with JSON arguments; await it for the JSON
    /// result. Works against any of our servers; named arguments use its reflection
    /// service.
    ///
    /// The arguments are a JSON value:
    ///
    /// - an **array** is the positional argument list, sent as the request's argument
    ///   array (`[]` for a method without arguments);
    /// - an **object** is keyed by argument name: the client asks the server's reflection
    ///   service (`rpc.Reflection`) for the method's argument names once per call and
    ///   orders the values by them. A name the method does not have is refused
    ///   ([`GenericError::Arguments`]); a missing one is sent as `null` (so `Option`
    ///   arguments may be left out; any other type makes the server answer
    ///   `BAD_REQUEST`). To pass one struct to a one-argument method, wrap it:
    ///   `[{"sku": "tea"}]` or `{"item": {"sku": "tea"}}`;
    /// - anything else (a string, number, boolean or `null`) is the single argument of a
    ///   one-argument method.
    ///
    /// JSON objects become MessagePack maps with string keys, which our structs decode
    /// (PROTOCOL.md section 9), so the server needs nothing special. Maps in a result
    /// keep the order the server wrote them in (a struct's fields in declaration order):
    /// this feature turns on serde_json's `preserve_order`.
    ///
    /// # Lossy corners
    ///
    /// JSON and MessagePack do not carry the same values. What happens at each corner,
    /// each tested in `tests/generic_json.rs`:
    ///
    /// | value | MessagePack → JSON (results, errors) | JSON → MessagePack (arguments) |
    /// |---|---|---|
    /// | integers beyond ±2^53 (`u64`, `i64`) | exact JSON numbers (`18446744073709551615`), never rounded and never turned into strings; a JavaScript reader of the text would round them, a Rust or Python one does not | exact: JSON integers up to `u64::MAX` / down to `i64::MIN` are sent as MessagePack integers; larger ones are floats (serde_json's rule) and the server refuses them for an integer type |
    /// | `bin` (`Blob`, `serde_bytes`) | an array of byte values, `[1, 2, 3]` | an array of numbers; the server accepts it for `Vec<u8>`, `serde_bytes` and `Blob`, so a result passes back as an argument unchanged |
    /// | map keys that are not strings (`HashMap<u32, _>`) | strings: an integer key `7` becomes `"7"`, `true` becomes `"true"`, `nil` becomes `"null"`, a float its decimal text, any other key its compact JSON text; if two keys collide the last wins | always strings, so an argument of a map type with non-string keys cannot be sent (the server answers `BAD_REQUEST`) |
    /// | NaN and ±infinity | `null` (JSON has no such numbers) | cannot be written in JSON |
    /// | a string that is not UTF-8 | an array of its bytes | — |
    /// | extension types | `[type, [bytes...]]` (rmpv's form) | — |
    /// | `f32` | widened to a JSON number with the `f32`'s exact value (`1.100000023841858`) | a float; the server narrows it |
    ///
    /// ```no_run
    /// # async fn run(client: rpc_core::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use rpc_core::GenericError;
    /// use serde_json::json;
    ///
    /// let left = client.call_json("example.Inventory", "reserve", json!(["tea", 2])).await?;
    /// let same = client
    ///     .call_json("example.Inventory", "reserve", json!({"sku": "tea", "quantity": 2}))
    ///     .await;
    /// match same {
    ///     Ok(left) => println!("{left} left"),
    ///     Err(GenericError::Application(error)) => println!("refused: {error}"),
    ///     Err(other) => println!("the call failed: {other}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn call_json(
        &self,
        service: impl Into<String>,
        method: impl Into<String>,
        args: Value,
    ) -> JsonCall {
        JsonCall {
            client: self.clone(),
            service: service.into(),
            method: method.into(),
            args,
            timeout: None,
            oneway: false,
            attachments: Vec::new(),
            hash_key: None,
        }
    }
}

/// A generic call, from [`Client::call_json`]: set options, then `.await` it.
#[must_use = "a call does nothing until it is awaited"]
pub struct JsonCall {
    /// Carries the call.
    client: Client,
    /// Target service.
    service: String,
    /// Target method.
    method: String,
    /// The arguments as given.
    args: Value,
    /// Overrides the client's default timeout.
    timeout: Option<Duration>,
    /// Sent with the oneway flag; the result is `null` once written.
    oneway: bool,
    /// User attachments sent in the metadata.
    attachments: Vec<(String, Vec<u8>)>,
    /// Affinity key for the `ip-hash` balancer.
    hash_key: Option<u64>,
}

impl fmt::Debug for JsonCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonCall")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("oneway", &self.oneway)
            .finish_non_exhaustive()
    }
}

impl JsonCall {
    /// Sets this call's timeout (also sent to the server as the deadline), overriding
    /// the client's default. A lookup of argument names counts against it too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends it oneway: no response; the call completes with `null` once the request
    /// is written.
    pub fn oneway(mut self) -> Self {
        self.oneway = true;
        self
    }

    /// Adds a user attachment (sent in the request metadata).
    pub fn attachment(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.attachments.push((key.into(), value.into()));
        self
    }

    /// Sets the affinity key for the `ip-hash` balancer; see
    /// [`Call::hash_key`](crate::Call::hash_key).
    pub fn hash_key(mut self, key: u64) -> Self {
        self.hash_key = Some(key);
        self
    }

    fn target(&self) -> String {
        format!("{}.{}", self.service, self.method)
    }

    /// The arguments as the positional list, asking the server for the names when
    /// they are given as an object.
    async fn positional(&mut self, timeout: Duration) -> Result<Vec<Value>, GenericError> {
        match std::mem::take(&mut self.args) {
            Value::Array(args) => Ok(args),
            Value::Object(named) => {
                let reflection = ReflectionClient::new(self.client.clone());
                let described = reflection
                    .describe(self.service.clone())
                    .timeout(timeout)
                    .await
                    .map_err(|e| match e {
                        RpcError::ServiceNotFound(m) => GenericError::Arguments {
                            target: self.target(),
                            reason: format!(
                                "named arguments need the server's reflection service, which \
                                 it does not host ({m}); pass the arguments as an array"
                            ),
                        },
                        other => GenericError::Rpc(widen_reflection_error(other)),
                    })?;
                let method = described.method(&self.method).ok_or_else(|| {
                    GenericError::Rpc(RpcError::MethodNotFound(format!(
                        "service `{}` has no method `{}`",
                        self.service, self.method
                    )))
                })?;
                if !described.described {
                    return Err(GenericError::Arguments {
                        target: self.target(),
                        reason: "the service does not describe its arguments; pass them as an \
                                 array"
                            .to_owned(),
                    });
                }
                match method.arguments_from_json(Value::Object(named))? {
                    Value::Array(args) => Ok(args),
                    _ => unreachable!("arguments_from_json returns an array"),
                }
            }
            single => Ok(vec![single]),
        }
    }

    /// Makes the call.
    async fn run(mut self) -> Result<Value, GenericError> {
        let timeout = self.timeout.unwrap_or(self.client.config().timeout);
        let started = std::time::Instant::now();
        let args = self.positional(timeout).await?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let target = self.target();
        let client = self.client.clone();
        let encode = |buf: &mut BytesMut, id: u64| {
            let config = client.config();
            let request = RequestTarget {
                service: &self.service,
                method: &self.method,
                timeout: Some(timeout),
                trace: None,
                auth_token: config.auth_token.as_deref(),
                attachments: &self.attachments,
            };
            encode_request(
                buf,
                id,
                self.oneway,
                &request,
                &JsonArgs(&args),
                config.max_frame_len,
            )
            .map_err(|e| {
                RpcError::from_encode(
                    e,
                    format_args!("cannot encode the JSON arguments of {target}"),
                )
            })
        };
        let frame = client
            .call_frame(encode, self.oneway, timeout, self.hash_key, None)
            .await?;
        match frame {
            None => Ok(Value::Null),
            Some(frame) => decode_reply(&frame, timeout, &target),
        }
    }
}

/// The reflection client's errors other than its own application error, as plain
/// call errors.
fn widen_reflection_error(error: RpcError<ReflectionError>) -> RpcError {
    match error {
        RpcError::Application(e) => RpcError::ServiceNotFound(e.to_string()),
        RpcError::Timeout(d) => RpcError::Timeout(d),
        RpcError::NoProvider { service } => RpcError::NoProvider { service },
        RpcError::Connect { addr, source } => RpcError::Connect { addr, source },
        RpcError::ConnectionLost { reason, source } => RpcError::ConnectionLost { reason, source },
        RpcError::NotSent { addr, reason } => RpcError::NotSent { addr, reason },
        RpcError::ShuttingDown => RpcError::ShuttingDown,
        RpcError::ClientClosed => RpcError::ClientClosed,
        other => RpcError::Internal(format!("looking up the argument names: {other}")),
    }
}

impl IntoFuture for JsonCall {
    type Output = Result<Value, GenericError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Value, GenericError>> + Send>>;

    /// Makes the call when first polled; dropping the future abandons it.
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl MethodDescriptor {
    /// Turns JSON arguments into this method's positional argument array, the way
    /// [`Client::call_json`] does (an array as it is, an object by argument name,
    /// anything else as the single argument), without asking a server: for callers
    /// that make many calls of one method (`rpcctl bench`) and look the method up once.
    ///
    /// ```
    /// # use rpc_core::server::Service;
    /// #[rpc_core::service]
    /// trait Stock {
    ///     async fn reserve(&self, sku: String, quantity: u32) -> u32;
    /// }
    /// # struct S;
    /// # impl Stock for S { async fn reserve(&self, _: String, q: u32) -> u32 { q } }
    /// let described = StockServer::new(S).descriptor();
    /// let reserve = described.method("reserve").unwrap();
    /// let args = reserve.arguments_from_json(serde_json::json!({"quantity": 2, "sku": "tea"}))?;
    /// assert_eq!(args, serde_json::json!(["tea", 2]));
    /// # Ok::<(), rpc_core::GenericError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`GenericError::Arguments`] for an object naming an argument this method does
    /// not have.
    pub fn arguments_from_json(&self, args: Value) -> Result<Value, GenericError> {
        let mut named: Map<String, Value> = match args {
            Value::Object(named) => named,
            Value::Array(args) => return Ok(Value::Array(args)),
            single => return Ok(Value::Array(vec![single])),
        };
        let positional = self
            .args
            .iter()
            .map(|arg| named.remove(&arg.name).unwrap_or(Value::Null))
            .collect();
        if let Some(unknown) = named.keys().next() {
            let known: Vec<&str> = self.args.iter().map(|a| a.name.as_str()).collect();
            return Err(GenericError::Arguments {
                target: self.name.clone(),
                reason: format!(
                    "no argument named `{unknown}` (the arguments are: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
        Ok(Value::Array(positional))
    }
}

/// The positional arguments, serialized as the request's argument array: each JSON
/// value is transcoded into the MessagePack serializer as it is read (serde-transcode),
/// with no intermediate copy.
struct JsonArgs<'a>(&'a [Value]);

impl Serialize for JsonArgs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for value in self.0 {
            seq.serialize_element(&serde_transcode::Transcoder::new(value))?;
        }
        seq.end()
    }
}

/// Turns a response frame into the call's JSON result.
fn decode_reply(frame: &Frame, timeout: Duration, target: &str) -> Result<Value, GenericError> {
    if frame.header.serialization != SERIALIZATION_MSGPACK {
        return Err(GenericError::Rpc(RpcError::Protocol(
            ProtocolError::Unexpected("response body uses an unsupported serialization id"),
        )));
    }
    let as_json = || {
        msgpack_to_json(&frame.body).map_err(|reason| GenericError::Reply {
            target: target.to_owned(),
            reason,
        })
    };
    match Status::from_code(frame.header.status) {
        Status::Ok => as_json(),
        Status::ApplicationError => Err(GenericError::Application(as_json()?)),
        status => {
            let message: String = rmp_serde::from_slice(&frame.body)
                .unwrap_or_else(|_| "(no readable message)".to_owned());
            Err(GenericError::Rpc(RpcError::from_status(
                status, message, timeout,
            )))
        }
    }
}

/// One MessagePack value as JSON: read schemaless by rmpv, map keys made strings (see
/// the module docs), then converted by rmpv's serde support.
///
/// # Errors
///
/// Bytes that are not exactly one MessagePack value.
pub(crate) fn msgpack_to_json(body: &[u8]) -> Result<Value, String> {
    let mut rest = body;
    let value = rmpv::decode::read_value(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the MessagePack value", rest.len()));
    }
    serde_json::to_value(string_keys(value)).map_err(|e| e.to_string())
}

/// `value` with every map key a string, since JSON object keys are.
fn string_keys(value: rmpv::Value) -> rmpv::Value {
    use rmpv::Value as V;
    match value {
        V::Array(items) => V::Array(items.into_iter().map(string_keys).collect()),
        V::Map(entries) => V::Map(
            entries
                .into_iter()
                .map(|(k, v)| (V::String(key_text(k).into()), string_keys(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A map key as JSON object key text.
fn key_text(key: rmpv::Value) -> String {
    use rmpv::Value as V;
    match key {
        V::String(s) if s.is_str() => s.into_str().unwrap_or_default(),
        V::Integer(i) => i.to_string(),
        V::Boolean(b) => b.to_string(),
        V::Nil => "null".to_owned(),
        V::F32(f) => f.to_string(),
        V::F64(f) => f.to_string(),
        other => serde_json::to_string(&string_keys(other)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip_args(args: Vec<Value>) -> Value {
        let bytes = rmp_serde::encode::to_vec_named(&JsonArgs(&args)).unwrap();
        msgpack_to_json(&bytes).unwrap()
    }

    #[test]
    fn integers_stay_exact_both_ways() {
        let args = vec![
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9_007_199_254_740_993u64),
        ];
        let bytes = rmp_serde::encode::to_vec_named(&JsonArgs(&args)).unwrap();
        let decoded: (u64, i64, u64) = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(decoded, (u64::MAX, i64::MIN, 9_007_199_254_740_993));
        assert_eq!(round_trip_args(args.clone()), Value::Array(args));
        assert_eq!(
            serde_json::to_string(&round_trip_args(vec![json!(u64::MAX)])).unwrap(),
            "[18446744073709551615]"
        );
    }

    #[test]
    fn bytes_become_arrays_of_numbers() {
        let blob = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1, 2, 255])).unwrap();
        assert_eq!(blob[0], 0xc4, "bin 8");
        assert_eq!(msgpack_to_json(&blob).unwrap(), json!([1, 2, 255]));
    }

    #[test]
    fn non_string_keys_become_strings() {
        let map = std::collections::BTreeMap::from([(7u32, "a"), (8, "b")]);
        let bytes = rmp_serde::to_vec(&map).unwrap();
        assert_eq!(
            msgpack_to_json(&bytes).unwrap(),
            json!({"7": "a", "8": "b"})
        );
        let bools = std::collections::BTreeMap::from([(true, 1u8)]);
        assert_eq!(
            msgpack_to_json(&rmp_serde::to_vec(&bools).unwrap()).unwrap(),
            json!({"true": 1})
        );
        let pairs = std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
        assert_eq!(
            msgpack_to_json(&rmp_serde::to_vec(&pairs).unwrap()).unwrap(),
            json!({"[1,2]": 3})
        );
    }

    #[test]
    fn odd_values() {
        let nan = rmp_serde::to_vec(&f64::NAN).unwrap();
        assert_eq!(msgpack_to_json(&nan).unwrap(), Value::Null);
        let bad_utf8 = [0xa2, 0xff, 0xfe];
        assert_eq!(msgpack_to_json(&bad_utf8).unwrap(), json!([255, 254]));
        let ext = [0xd4, 0x05, 0x2a];
        assert_eq!(msgpack_to_json(&ext).unwrap(), json!([5, [42]]));
        let f32 = rmp_serde::to_vec(&1.1f32).unwrap();
        assert_eq!(msgpack_to_json(&f32).unwrap(), json!(1.100000023841858));
        assert!(msgpack_to_json(&[0x92, 0x01]).is_err(), "truncated");
        assert!(msgpack_to_json(&[0x01, 0x02]).is_err(), "trailing bytes");
    }

    #[test]
    fn objects_become_maps_our_structs_decode() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Item {
            sku: String,
            quantity: u32,
        }
        let args = vec![json!({"quantity": 3, "sku": "tea", "extra": true})];
        let bytes = rmp_serde::encode::to_vec_named(&JsonArgs(&args)).unwrap();
        let (item,): (Item,) = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            item,
            Item {
                sku: "tea".into(),
                quantity: 3
            }
        );
    }
}
