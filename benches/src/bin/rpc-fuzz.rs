//! `rpc-fuzz`: drives the server's frame handling and dispatch with generated inputs
//! over real loopback connections, and checks that nothing panics, memory stays
//! bounded, every well-formed request is answered as the protocol says, and a
//! well-behaved client on its own connection keeps being served.
//!
//! ```text
//! cargo run --release -p rpc-benches --bin rpc-fuzz              # a million inputs
//! cargo run --release -p rpc-benches --bin rpc-fuzz -- --quick   # CI: 20 000
//! ```
//!
//! Inputs are made by proptest strategies (stable Rust; a fixed seed per lane, so a run
//! is reproducible with `--seed`). An *input* is one frame or one chunk of garbage.
//! Inputs come in *cases*, each written in one go on a lane's connection:
//!
//! - *keepers*, which a server must take without closing the connection: requests
//!   with generated service and method names, metadata (known and unknown tags, odd
//!   sizes, attachments), flags (oneway or not), serialization ids and bodies (typed
//!   arguments of the fuzzed service, arbitrary MessagePack trees, random bytes);
//!   heartbeats with junk sections; events with any code;
//! - at most one *breaker* at the end of a case: garbage, a frame with flipped bytes,
//!   a frame cut short, a response frame, a request id reused while in flight.
//!
//! A case of keepers is followed by a heartbeat probe: every request that is not oneway
//! must get exactly one well-formed response (status known, error bodies strings, typed
//! calls answered OK or with their application error), then the probe's answer, and the
//! connection must stay open. A case with a breaker is followed by a FIN: whatever the
//! server sends must be well-formed frames, and it must close the connection. Each lane
//! reconnects after a close. A panic hook counts panics anywhere in the process; the
//! resident memory is sampled every 200 ms.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use hdrhistogram::Histogram;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rpc_core::protocol::metadata::tag;
use rpc_core::protocol::{encode_heartbeat, Flags, Frame, FrameCodec, HEADER_LEN};
use rpc_core::{Blob, Client, Server};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "rpc-fuzz",
    about = "Generated frames against the server over loopback"
)]
struct Args {
    /// Inputs (frames or garbage chunks) to send.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// CI smoke run: 20 000 inputs.
    #[arg(long)]
    quick: bool,
    /// Connections fuzzing at once (one thread each).
    #[arg(long, default_value_t = 6)]
    lanes: u64,
    /// Seed of the generators (lane i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fail if resident memory ends more than this many MiB above its level after the
    /// first tenth of the run.
    #[arg(long, default_value_t = 96)]
    max_rss_growth_mib: u64,
}

/// The service under fuzz: argument types of every shape the protocol carries.
#[rpc_core::service(name = "fuzz.Target")]
pub trait Target {
    /// Wrapping sum.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Application error on zero or overflow.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, String>;
    /// Joins strings.
    async fn concat(&self, parts: Vec<String>) -> String;
    /// Returns its argument.
    async fn shape(&self, shape: Shape) -> Shape;
    /// Returns its argument.
    async fn echo(&self, data: Blob) -> Blob;
    /// Sleeps `min(ms, 20)` milliseconds: calls in flight, deadlines, cancels.
    async fn hold(&self, ms: u64) -> u64;
    /// No arguments, no result.
    async fn nothing(&self);
    /// Oneway.
    #[oneway]
    async fn note(&self, n: u64);
    /// Options, chars and floats.
    async fn maybe(&self, o: Option<Option<u8>>, c: char, f: f32) -> bool;
}

/// An enum with every kind of variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    /// Unit variant.
    Dot,
    /// Newtype variant.
    Circle(f64),
    /// Struct variant.
    Rect {
        /// Width.
        w: u32,
        /// Height.
        h: u32,
    },
    /// Newtype variant holding a sequence of tuples.
    Poly(Vec<(i16, i16)>),
}

/// The fuzzed service's implementation.
#[derive(Debug, Default)]
struct Impl {
    /// Sum of `note` arguments, so the oneway call does something.
    noted: AtomicU64,
}

impl Target for Impl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
    async fn divide(&self, a: i64, b: i64) -> Result<i64, String> {
        a.checked_div(b)
            .ok_or_else(|| format!("cannot divide {a} by {b}"))
    }
    async fn concat(&self, parts: Vec<String>) -> String {
        parts.concat()
    }
    async fn shape(&self, shape: Shape) -> Shape {
        shape
    }
    async fn echo(&self, data: Blob) -> Blob {
        data
    }
    async fn hold(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms.min(20))).await;
        ms
    }
    async fn nothing(&self) {}
    async fn note(&self, n: u64) {
        self.noted.fetch_add(n, Ordering::Relaxed);
    }
    async fn maybe(&self, o: Option<Option<u8>>, c: char, f: f32) -> bool {
        o.is_some() && c.is_alphabetic() && f.is_finite()
    }
}

const SERVICE: &str = "fuzz.Target";
const METHODS: [&str; 9] = [
    "add", "divide", "concat", "shape", "echo", "hold", "nothing", "note", "maybe",
];

/// An arbitrary MessagePack value.
#[derive(Debug, Clone)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
}

impl Serialize for Mp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mp::Nil => s.serialize_unit(),
            Mp::Bool(b) => s.serialize_bool(*b),
            Mp::Int(i) => s.serialize_i64(*i),
            Mp::UInt(u) => s.serialize_u64(*u),
            Mp::F64(f) => s.serialize_f64(*f),
            Mp::Str(t) => s.serialize_str(t),
            Mp::Bin(b) => s.serialize_bytes(b),
            Mp::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Mp::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

fn mp() -> impl Strategy<Value = Mp> {
    let leaf = prop_oneof![
        Just(Mp::Nil),
        any::<bool>().prop_map(Mp::Bool),
        any::<i64>().prop_map(Mp::Int),
        any::<u64>().prop_map(Mp::UInt),
        any::<f64>().prop_map(Mp::F64),
        "\\PC{0,8}".prop_map(Mp::Str),
        vec(any::<u8>(), 0..16).prop_map(Mp::Bin),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Mp::Arr),
            vec((inner.clone(), inner), 0..4).prop_map(Mp::Map),
        ]
    })
}

/// MessagePack of `value`, as our encoder writes it.
fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    rmp_serde::encode::write_named(&mut out, value).expect("encodable");
    out
}

/// A request: the fields of its frame.
#[derive(Debug, Clone)]
struct Request {
    service: String,
    method: String,
    /// TIMEOUT in ms, if sent.
    timeout: Option<u32>,
    /// Metadata entries added after the usual ones (any tag, any bytes).
    extra: Vec<(u8, Vec<u8>)>,
    oneway: bool,
    serialization: u8,
    body: Vec<u8>,
    /// Typed arguments of a real method with plain metadata: must be answered OK or
    /// with the method's application error.
    typed: bool,
}

/// A typed call of the fuzzed service: its method and argument array.
fn typed_call() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let shape = prop_oneof![
        Just(Shape::Dot),
        any::<f64>().prop_map(Shape::Circle),
        (any::<u32>(), any::<u32>()).prop_map(|(w, h)| Shape::Rect { w, h }),
        vec(any::<(i16, i16)>(), 0..8).prop_map(Shape::Poly),
    ];
    prop_oneof![
        any::<(i64, i64)>().prop_map(|a| ("add", encode(&a))),
        (
            any::<i64>(),
            prop_oneof![Just(0i64), Just(-1), any::<i64>()]
        )
            .prop_map(|a| ("divide", encode(&a))),
        vec("\\PC{0,6}", 0..6).prop_map(|p| ("concat", encode(&(p,)))),
        shape.prop_map(|s| ("shape", encode(&(s,)))),
        vec(any::<u8>(), 0..3000).prop_map(|b| ("echo", encode(&(serde_bytes::ByteBuf::from(b),)))),
        (0u64..30).prop_map(|ms| ("hold", encode(&(ms,)))),
        Just(("nothing", encode(&[(); 0]))),
        any::<u64>().prop_map(|n| ("note", encode(&(n,)))),
        (any::<Option<Option<u8>>>(), any::<char>(), any::<f32>())
            .prop_map(|a| ("maybe", encode(&a))),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    let plain = (typed_call(), prop_oneof![Just(None), Just(Some(10_000u32))]).prop_map(
        |((method, body), timeout)| Request {
            service: SERVICE.to_owned(),
            method: method.to_owned(),
            timeout,
            extra: Vec::new(),
            oneway: method == "note",
            serialization: 1,
            body,
            typed: true,
        },
    );
    let name = prop_oneof![
        8 => Just(SERVICE.to_owned()),
        1 => "\\PC{0,12}",
    ];
    let method = prop_oneof![
        8 => proptest::sample::select(METHODS.to_vec()).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
    ];
    let body = prop_oneof![
        4 => typed_call().prop_map(|(_, body)| body),
        3 => mp().prop_map(|v| encode(&v)),
        1 => vec(any::<u8>(), 0..48),
    ];
    let timeout = prop_oneof![
        Just(None),
        Just(Some(0u32)),
        (1u32..40).prop_map(Some),
        Just(Some(10_000)),
    ];
    let extra = vec((any::<u8>(), vec(any::<u8>(), 0..24)), 0..3);
    let serialization = prop_oneof![12 => Just(1u8), 1 => any::<u8>()];
    let mixed = (
        name,
        method,
        timeout,
        extra,
        any::<bool>(),
        serialization,
        body,
    )
        .prop_map(
            |(service, method, timeout, extra, oneway, serialization, body)| Request {
                service,
                method,
                timeout,
                extra,
                oneway,
                serialization,
                body,
                typed: false,
            },
        );
    prop_oneof![2 => plain, 3 => mixed]
}

/// An input the server must take without closing the connection.
#[derive(Debug, Clone)]
enum Keeper {
    Request(Request),
    /// A heartbeat request or response, with junk in its metadata and body.
    Heartbeat {
        response: bool,
        junk: (Vec<u8>, Vec<u8>),
    },
    /// An event with any code, for an id never used for a call.
    Event {
        code: u8,
        id: u64,
    },
}

fn keeper() -> impl Strategy<Value = Keeper> {
    prop_oneof![
        12 => request().prop_map(Keeper::Request),
        1 => (any::<bool>(), (vec(any::<u8>(), 0..8), vec(any::<u8>(), 0..8)))
            .prop_map(|(response, junk)| Keeper::Heartbeat { response, junk }),
        1 => (any::<u8>(), any::<u64>())
            .prop_map(|(code, id)| Keeper::Event { code, id: id | 1 << 63 }),
    ]
}

/// An input after which the stream may be broken.
#[derive(Debug, Clone)]
enum Breaker {
    Garbage(Vec<u8>),
    /// A request with bytes replaced at (position modulo length).
    Flipped(Request, Vec<(usize, u8)>),
    /// A request cut after (position modulo length) bytes.
    Truncated(Request, usize),
    /// A header with any flags, status and lengths.
    Header([u8; HEADER_LEN]),
    /// `hold` and then another request with the same id while it runs.
    DuplicateId(Request),
}

fn breaker() -> impl Strategy<Value = Breaker> {
    prop_oneof![
        vec(any::<u8>(), 1..64).prop_map(Breaker::Garbage),
        (request(), vec((any::<usize>(), any::<u8>()), 1..4))
            .prop_map(|(r, f)| Breaker::Flipped(r, f)),
        (request(), any::<usize>()).prop_map(|(r, n)| Breaker::Truncated(r, n)),
        (any::<[u8; 22]>()).prop_map(|rest| {
            let mut h = [0u8; HEADER_LEN];
            h[0] = 0x52;
            h[1] = 0x50;
            h[2..].copy_from_slice(&rest);
            h[2] = 1;
            Breaker::Header(h)
        }),
        request().prop_map(Breaker::DuplicateId),
    ]
}

/// One case: keepers, then perhaps a breaker.
#[derive(Debug, Clone)]
struct Case {
    keepers: Vec<Keeper>,
    breaker: Option<Breaker>,
}

fn case() -> BoxedStrategy<Case> {
    (
        vec(keeper(), 1..24),
        proptest::option::weighted(0.06, breaker()),
    )
        .prop_map(|(keepers, breaker)| Case { keepers, breaker })
        .boxed()
}

/// Appends the request frame of `r` with id `id`.
fn write_request(out: &mut Vec<u8>, r: &Request, id: u64) {
    let mut meta = Vec::new();
    let mut entry = |tag: u8, value: &[u8]| {
        let len = value.len().min(u16::MAX as usize);
        meta.push(tag);
        meta.extend_from_slice(&(len as u16).to_be_bytes());
        meta.extend_from_slice(&value[..len]);
    };
    entry(tag::SERVICE, r.service.as_bytes());
    entry(tag::METHOD, r.method.as_bytes());
    if let Some(ms) = r.timeout {
        entry(tag::TIMEOUT, &ms.to_be_bytes());
    }
    for (t, v) in &r.extra {
        entry(*t, v);
    }
    let flags = if r.oneway {
        Flags::ONEWAY
    } else {
        Flags::empty()
    };
    write_frame(out, flags.bits(), r.serialization, 0, id, &meta, &r.body);
}

fn write_frame(
    out: &mut Vec<u8>,
    flags: u8,
    ser: u8,
    status: u8,
    id: u64,
    meta: &[u8],
    body: &[u8],
) {
    out.extend_from_slice(&[0x52, 0x50, 1, flags, ser, status, 0, 0]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
}

/// Counts shared by the lanes.
#[derive(Debug, Default)]
struct Totals {
    inputs: AtomicU64,
    cases: AtomicU64,
    connections: AtomicU64,
    closed_by_server: AtomicU64,
    /// Responses by status code.
    statuses: Mutex<HashMap<u8, u64>>,
    /// What went wrong, for the report (the first few).
    failures: Mutex<Vec<String>>,
    failed: AtomicBool,
}

impl Totals {
    fn fail(&self, what: String) {
        self.failed.store(true, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.len() < 20 {
            failures.push(what);
        }
    }
}

/// The heartbeat id that ends a case of keepers.
const PROBE: u64 = u64::MAX - 1;

/// Reads frames off a connection.
struct Reader {
    buf: BytesMut,
    codec: FrameCodec,
}

impl Reader {
    /// The next frame, `Ok(None)` on close, `Err` on a malformed frame or a timeout.
    async fn next(&mut self, stream: &mut TcpStream) -> Result<Option<Frame>, String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(format!("the server sent a malformed frame: {e}")),
            }
            let read =
                tokio::time::timeout(Duration::from_secs(10), stream.read_buf(&mut self.buf))
                    .await
                    .map_err(|_| "nothing from the server for 10 s".to_owned())?;
            match read {
                Ok(0) | Err(_) => {
                    return if self.buf.is_empty() {
                        Ok(None)
                    } else {
                        Err("the server closed in the middle of a frame".to_owned())
                    }
                }
                Ok(_) => {}
            }
        }
    }
}

/// Checks one response frame; returns its status.
fn check_response(frame: &Frame) -> Result<u8, String> {
    if frame.header.flags != Flags::RESPONSE {
        return Err(format!(
            "unexpected frame from the server: {:?}",
            frame.header
        ));
    }
    let status = frame.header.status;
    match status {
        0 | 1 => {
            rmp_serde::from_slice::<serde::de::IgnoredAny>(&frame.body)
                .map_err(|e| format!("status {status} with a body that is not MessagePack: {e}"))?;
        }
        2..=9 => {
            rmp_serde::from_slice::<String>(&frame.body)
                .map_err(|e| format!("status {status} whose body is not a string: {e}"))?;
        }
        other => return Err(format!("unknown status {other}")),
    }
    Ok(status)
}

/// One lane: cases on a connection until `budget` inputs are sent.
async fn lane(addr: SocketAddr, seed: u64, budget: u64, totals: Arc<Totals>) {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = case();
    let mut sent = 0u64;
    let mut next_id = 1u64;
    let mut conn: Option<(TcpStream, Reader)> = None;
    let mut wire = Vec::new();
    while sent < budget && !totals.failed.load(Ordering::SeqCst) {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        if conn.is_none() {
            let stream = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => return totals.fail(format!("connect: {e}")),
            };
            let _ = stream.set_nodelay(true);
            totals.connections.fetch_add(1, Ordering::Relaxed);
            let reader = Reader {
                buf: BytesMut::new(),
                codec: FrameCodec::default(),
            };
            conn = Some((stream, reader));
        }
        let (stream, reader) = conn.as_mut().expect("connected");
        wire.clear();
        // Ids of calls that must be answered, and whether strictly (OK or app error).
        let mut expected: HashMap<u64, bool> = HashMap::new();
        for keeper in &case.keepers {
            match keeper {
                Keeper::Request(r) => {
                    let id = next_id;
                    next_id += 1;
                    write_request(&mut wire, r, id);
                    if !r.oneway {
                        expected.insert(id, r.typed);
                    }
                }
                Keeper::Heartbeat { response, junk } => {
                    let flags = Flags::HEARTBEAT.bits() | u8::from(*response);
                    write_frame(&mut wire, flags, 1, 0, 1 << 62, &junk.0, &junk.1);
                }
                Keeper::Event { code, id } => write_frame(&mut wire, 0x08, 1, *code, *id, &[], &[]),
            }
        }
        let inputs = case.keepers.len() as u64 + u64::from(case.breaker.is_some());
        sent += inputs;
        totals.inputs.fetch_add(inputs, Ordering::Relaxed);
        totals.cases.fetch_add(1, Ordering::Relaxed);
        let outcome = match &case.breaker {
            None => {
                let mut probe = BytesMut::new();
                encode_heartbeat(&mut probe, PROBE, false);
                wire.extend_from_slice(&probe);
                keepers_outcome(stream, reader, &wire, expected, &totals).await
            }
            Some(breaker) => {
                match breaker {
                    Breaker::Garbage(bytes) => wire.extend_from_slice(bytes),
                    Breaker::Flipped(r, flips) => {
                        let start = wire.len();
                        write_request(&mut wire, r, next_id);
                        let len = wire.len() - start;
                        for (at, byte) in flips {
                            wire[start + at % len] = *byte;
                        }
                    }
                    Breaker::Truncated(r, at) => {
                        let start = wire.len();
                        write_request(&mut wire, r, next_id);
                        let len = wire.len() - start;
                        wire.truncate(start + at % len);
                    }
                    Breaker::Header(h) => wire.extend_from_slice(h),
                    Breaker::DuplicateId(r) => {
                        let hold = Request {
                            service: SERVICE.to_owned(),
                            method: "hold".to_owned(),
                            timeout: None,
                            extra: Vec::new(),
                            oneway: false,
                            serialization: 1,
                            body: encode(&(20u64,)),
                            typed: true,
                        };
                        write_request(&mut wire, &hold, next_id);
                        write_request(&mut wire, r, next_id);
                    }
                }
                next_id += 1;
                breaker_outcome(stream, reader, &wire, &totals).await
            }
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => conn = None,
            Err(why) => {
                totals.fail(format!("lane seed {seed}: {why}; case: {case:?}"));
                return;
            }
        }
    }
}

/// Sends a case of keepers and its probe; checks every reply. `Ok(true)`: the
/// connection is still good.
async fn keepers_outcome(
    stream: &mut TcpStream,
    reader: &mut Reader,
    wire: &[u8],
    mut expected: HashMap<u64, bool>,
    totals: &Totals,
) -> Result<bool, String> {
    stream
        .write_all(wire)
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut probe_answered = false;
    let mut statuses = Vec::new();
    while !probe_answered || !expected.is_empty() {
        let frame = reader
            .next(stream)
            .await?
            .ok_or("the server closed a connection that sent only well-formed frames")?;
        let flags = frame.header.flags;
        if flags.contains(Flags::HEARTBEAT) {
            if frame.header.request_id == PROBE {
                probe_answered = true;
            }
            continue;
        }
        let status = check_response(&frame)?;
        let id = frame.header.request_id;
        let strict = expected
            .remove(&id)
            .ok_or_else(|| format!("a response to id {id}, which is not waiting"))?;
        if strict && status > 1 {
            return Err(format!(
                "a well-typed call (id {id}) was answered with status {status}: {:?}",
                rmp_serde::from_slice::<String>(&frame.body)
            ));
        }
        statuses.push(status);
    }
    let mut counts = totals.statuses.lock().unwrap();
    for status in statuses {
        *counts.entry(status).or_default() += 1;
    }
    Ok(true)
}

/// Sends a case that ends in a breaker, then a FIN; the server must send only
/// well-formed frames and then close. `Ok(false)`: the connection is gone.
async fn breaker_outcome(
    stream: &mut TcpStream,
    reader: &mut Reader,
    wire: &[u8],
    totals: &Totals,
) -> Result<bool, String> {
    if stream.write_all(wire).await.is_err() {
        // Closed by the server already, on the malformed part.
        totals.closed_by_server.fetch_add(1, Ordering::Relaxed);
        return Ok(false);
    }
    let _ = stream.shutdown().await;
    loop {
        match reader.next(stream).await {
            Ok(Some(frame)) => {
                if !frame.header.flags.contains(Flags::HEARTBEAT) {
                    check_response(&frame)?;
                }
            }
            Ok(None) => return Ok(false),
            // A flipped byte can make a frame the server answers oddly but validly
            // only if it parses; a malformed reply is always a bug.
            Err(e) if e.starts_with("nothing from the server") => {
                return Err(format!(
                    "the server kept the connection open after EOF: {e}"
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let inputs = if args.quick { 20_000 } else { args.inputs };
    let panics = Arc::new(AtomicU64::new(0));
    {
        let panics = Arc::clone(&panics);
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (server, addr) = runtime.block_on(async {
        let server = Server::builder()
            .workers(1)
            .frame_timeout(Duration::from_secs(2))
            .max_connections(10_000, 10_000)
            .add_service(TargetServer::new(Impl::default()))
            .bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = server.local_addr();
        (server.spawn(), addr)
    });
    let totals = Arc::new(Totals::default());
    let done = Arc::new(AtomicBool::new(false));

    // The well-behaved client: a call every 2 ms on its own connection, all along.
    let good = {
        let done = Arc::clone(&done);
        runtime.spawn(async move {
            let client = TargetClient::new(Client::connect(addr).await.expect("connect"));
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            let mut failed = Vec::new();
            let mut i = 0i64;
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                match client.add(i, 1).timeout(Duration::from_secs(5)).await {
                    Ok(sum) if sum == i + 1 => {
                        let _ = latency.record(t.elapsed().as_micros() as u64);
                    }
                    other => failed.push(format!("{other:?}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (latency, failed)
        })
    };

    let started = Instant::now();
    let lanes: Vec<_> = (0..args.lanes.max(1))
        .map(|i| {
            let totals = Arc::clone(&totals);
            let budget = inputs / args.lanes.max(1) + 1;
            let seed = args.seed.wrapping_add(i);
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(lane(addr, seed, budget, totals));
            })
        })
        .collect();

    // Memory, sampled until the lanes are done.
    let mut rss_start = rss_kib();
    let mut baseline = None;
    let mut rss_max = rss_start;
    let mut last_report = Instant::now();
    while lanes.iter().any(|l| !l.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        let rss = rss_kib();
        rss_max = rss_max.max(rss);
        let sent = totals.inputs.load(Ordering::Relaxed);
        if baseline.is_none() && sent >= inputs / 10 {
            baseline = Some(rss);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "rpc-fuzz: {sent} inputs, {:.0}/s, RSS {} MiB",
                sent as f64 / started.elapsed().as_secs_f64(),
                rss / 1024
            );
        }
    }
    for lane in lanes {
        let _ = lane.join();
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib();
    let baseline = baseline.unwrap_or(rss_start);
    rss_start = rss_start.min(baseline);
    done.store(true, Ordering::SeqCst);
    let (latency, good_failed) = runtime.block_on(good).expect("the good client's task");

    // Every fuzz connection is closed now; the server must be down to the good one.
    runtime.block_on(async {
        let wait = Instant::now();
        while server.open_connections() > 1 && wait.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let open_after = server.open_connections();
    let _ = runtime.block_on(server.shutdown());

    let sent = totals.inputs.load(Ordering::Relaxed);
    let statuses = totals.statuses.lock().unwrap().clone();
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort_unstable();
    println!(
        "rpc-fuzz: {sent} inputs in {} cases over {} connections in {:.1} s ({:.0} inputs/s), \
         {} lanes, seed {}",
        totals.cases.load(Ordering::Relaxed),
        totals.connections.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        args.lanes,
        args.seed
    );
    println!("responses by status: {statuses:?}");
    println!(
        "resident memory (whole process): start {} MiB, after the first tenth {} MiB, \
         max {} MiB, end {} MiB",
        rss_start / 1024,
        baseline / 1024,
        rss_max / 1024,
        rss_end / 1024
    );
    println!(
        "well-behaved client: {} calls, {} failed, latency p50 {} µs, p99 {} µs, max {} µs",
        latency.len(),
        good_failed.len(),
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
    );
    let panics = panics.load(Ordering::SeqCst);
    println!("panics: {panics}; server connections open after the run: {open_after}");

    let mut failures = totals.failures.lock().unwrap().clone();
    if panics > 0 {
        failures.push(format!("{panics} panics"));
    }
    if sent < inputs && failures.is_empty() {
        failures.push(format!("only {sent} of {inputs} inputs were sent"));
    }
    let growth = rss_end.saturating_sub(baseline) / 1024;
    if growth > args.max_rss_growth_mib {
        failures.push(format!(
            "resident memory grew {growth} MiB after the first tenth (limit {})",
            args.max_rss_growth_mib
        ));
    }
    if !good_failed.is_empty() {
        failures.push(format!(
            "the well-behaved client had {} failed calls; first: {}",
            good_failed.len(),
            good_failed[0]
        ));
    }
    if latency.is_empty() {
        failures.push("the well-behaved client made no call".to_owned());
    }
    if open_after > 1 {
        failures.push(format!(
            "{open_after} server connections still open after the run"
        ));
    }
    if failures.is_empty() {
        println!("rpc-fuzz: passed");
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            println!("FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}
