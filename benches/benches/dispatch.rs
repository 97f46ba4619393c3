//! The generated dispatch of one call: `Service::call` on the `#[service]` skeleton
//! (method match, MessagePack argument decode, handler), the handler polled to
//! completion and its result encoded into a reused buffer, per payload size. No I/O.
//!
//! Run with `cargo bench -p rpc-benches --bench dispatch`.

use std::hint::black_box;
use std::task::{Context, Waker};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput};
use rpc_benches::{EchoImpl, EchoServer};
use rpc_core::server::Service;
use serde_bytes::ByteBuf;

const PAYLOADS: [usize; 3] = [16, 1024, 64 * 1024];

fn dispatch(c: &mut Criterion) {
    let server = EchoServer::new(EchoImpl);
    let mut group = c.benchmark_group("dispatch_echo");
    for size in PAYLOADS {
        group.throughput(Throughput::Bytes(size as u64));
        // The body of a request frame: the argument tuple as MessagePack.
        let args = rmp_serde::to_vec(&(ByteBuf::from(vec![0xA5; size]),)).expect("args encode");
        let mut out = BytesMut::with_capacity(2 * size + 64);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                let mut call =
                    Service::call(&server, "echo", black_box(&args)).expect("echo dispatches");
                let mut cx = Context::from_waker(Waker::noop());
                assert!(
                    call.as_mut().poll_done(&mut cx).is_ready(),
                    "echo finishes on its first poll"
                );
                out.clear();
                let status = call
                    .as_mut()
                    .encode_result(&mut out)
                    .expect("result encodes");
                black_box((status, out.len()))
            });
        });
    }
    group.finish();
}

// Spelled out instead of `criterion_group!`/`criterion_main!`, whose
// generated function has no doc comment for the workspace's `missing_docs`.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    dispatch(&mut criterion);
    criterion.final_summary();
}
