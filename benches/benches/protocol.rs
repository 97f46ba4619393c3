//! Frame encode and decode: what every call costs on the wire path, per payload size.
//!
//! Run with `cargo bench -p rpc-benches --bench protocol`.
//!
//! - `encode_request`: a whole request frame (header, metadata with service, method
//!   and timeout, MessagePack argument tuple) written into a reused buffer, as a
//!   client does per call;
//! - `encode_raw_response`: a response frame around an already-encoded body, as the
//!   server does per reply;
//! - `decode_frame`: `FrameCodec` splitting one frame off a receive buffer;
//! - `parse_request_metadata`: the server reading service, method and deadline.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rpc_core::protocol::metadata::RequestMeta;
use rpc_core::protocol::{
    encode_raw_response, encode_request, FrameCodec, RequestTarget, Status, DEFAULT_MAX_FRAME_LEN,
};
use serde_bytes::ByteBuf;
use tokio_util::codec::Decoder;

const PAYLOADS: [usize; 3] = [16, 1024, 64 * 1024];

fn target() -> RequestTarget<'static> {
    RequestTarget {
        service: "bench.Echo",
        method: "echo",
        timeout: Some(Duration::from_secs(5)),
        trace: None,
        auth_token: None,
        attachments: &[],
    }
}

fn args(size: usize) -> (ByteBuf,) {
    (ByteBuf::from(vec![0xA5; size]),)
}

/// One encoded request frame carrying `size` payload bytes.
fn request_frame(size: usize) -> BytesMut {
    let mut wire = BytesMut::new();
    encode_request(
        &mut wire,
        7,
        false,
        &target(),
        &args(size),
        DEFAULT_MAX_FRAME_LEN,
    )
    .expect("request encodes");
    wire
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_request");
    for size in PAYLOADS {
        group.throughput(Throughput::Bytes(size as u64));
        let args = args(size);
        let target = target();
        let mut buf = BytesMut::with_capacity(size + 256);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                buf.clear();
                encode_request(
                    &mut buf,
                    7,
                    false,
                    &target,
                    black_box(&args),
                    DEFAULT_MAX_FRAME_LEN,
                )
                .expect("request encodes");
                black_box(&buf);
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("encode_raw_response");
    for size in PAYLOADS {
        group.throughput(Throughput::Bytes(size as u64));
        let body = rmp_serde::to_vec(&ByteBuf::from(vec![0xA5; size])).expect("body encodes");
        let mut buf = BytesMut::with_capacity(size + 64);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                buf.clear();
                encode_raw_response(
                    &mut buf,
                    7,
                    Status::Ok.code(),
                    black_box(&body),
                    DEFAULT_MAX_FRAME_LEN,
                )
                .expect("response encodes");
                black_box(&buf);
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_frame");
    for size in PAYLOADS {
        group.throughput(Throughput::Bytes(size as u64));
        let wire = request_frame(size);
        let mut codec = FrameCodec::default();
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter_batched_ref(
                || wire.clone(),
                |src| {
                    codec
                        .decode(src)
                        .expect("valid frame")
                        .expect("whole frame")
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();

    let frame = FrameCodec::default()
        .decode(&mut request_frame(16))
        .expect("valid frame")
        .expect("whole frame");
    c.bench_function("parse_request_metadata", |b| {
        b.iter(|| {
            let meta = RequestMeta::parse(black_box(&frame.metadata)).expect("valid metadata");
            black_box((meta.service, meta.method, meta.timeout));
        });
    });
}

// Spelled out instead of `criterion_group!`/`criterion_main!`, whose
// generated function has no doc comment for the workspace's `missing_docs`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    encode(&mut criterion);
    decode(&mut criterion);
    criterion.final_summary();
}
