//! Properties of the frame codec and the metadata parser, over random input: frames
//! round-trip however the bytes are split, hostile bytes never panic or make the
//! decoder allocate in proportion to a declared length (only up to a bound derived
//! from its frame cap), and request metadata survives encoding.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rpc_core::protocol::metadata::{tag, MetadataWriter, RequestMeta, TraceContext};
use rpc_core::protocol::{
    encode_request, CodecError, Flags, Frame, FrameCodec, ProtocolError, RequestTarget, HEADER_LEN,
    MAGIC, VERSION,
};
use tokio_util::codec::{Decoder, Encoder};

/// A small frame cap, so that the allocation bound below is a tight check.
const SMALL_MAX: usize = 4096;
/// What the decoder may add to the cap: a header's worth of slack.
const SLACK: usize = 64;
/// The bound the decoder keeps today: `BytesMut::reserve` may double a buffer, so a
/// partial frame of more than half the cap can leave up to twice the cap allocated.
/// Tighten to `SMALL_MAX + SLACK` once `FrameCodec::decode` reserves exactly; see
/// `decoder_allocates_at_most_the_cap`.
const GROWTH_BOUND: usize = SMALL_MAX + SLACK;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; nothing is written to disk.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any frame: flags among the defined bits, any other header field, metadata and body
/// of up to a few KiB.
fn any_frame() -> impl Strategy<Value = Frame> {
    (
        0u8..=0x0f,
        any::<u8>(),
        any::<u8>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(any::<u8>(), 0..3072),
    )
        .prop_map(|(flags, serialization, status, id, metadata, body)| {
            let flags = Flags::from_bits(flags).expect("defined bits only");
            let mut frame = Frame::new(flags, status, id, Bytes::from(metadata), Bytes::from(body));
            frame.header.serialization = serialization;
            frame
        })
}

/// Sizes to cut a byte stream into, used cyclically.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![1usize..4, 1usize..64, 1usize..2048, 2048usize..9000],
        1..16,
    )
}

/// `wire` cut into pieces of the given sizes, used cyclically.
fn chunks<'a>(wire: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = wire;
    let mut sizes = sizes.iter().cycle();
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (*sizes.next()?).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// A header with the given fields, written the way `Header::write_to` would, but with
/// any bytes the caller likes (including invalid flags and reserved bytes).
fn raw_header(flags: u8, reserved: [u8; 2], id: u64, metadata_len: u32, body_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.push(VERSION);
    h.push(flags);
    h.push(1);
    h.push(0);
    h.extend_from_slice(&reserved);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&metadata_len.to_be_bytes());
    h.extend_from_slice(&body_len.to_be_bytes());
    h
}

/// Hostile input: pieces of garbage, of plausible headers with any lengths (most of
/// them close to the cap) and of whole valid frames, back to back.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        0u32..64,
        (SMALL_MAX as u32 - 64)..(SMALL_MAX as u32 + 64),
        any::<u32>(),
    ];
    let header = (
        prop_oneof![4 => 0u8..=0x0f, 1 => any::<u8>()],
        prop_oneof![8 => Just([0u8, 0]), 1 => any::<[u8; 2]>()],
        any::<u64>(),
        length.clone(),
        length,
    )
        .prop_map(|(flags, reserved, id, m, b)| raw_header(flags, reserved, id, m, b));
    let valid = (
        0u8..=0x0f,
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(any::<u8>(), 0..(SMALL_MAX - HEADER_LEN - 256)),
    )
        .prop_map(|(flags, id, metadata, body)| {
            let frame = Frame::new(
                Flags::from_bits(flags).unwrap(),
                0,
                id,
                Bytes::from(metadata),
                Bytes::from(body),
            );
            let mut wire = BytesMut::new();
            frame.encode(&mut wire, SMALL_MAX).unwrap();
            wire.to_vec()
        });
    let magic_then_garbage = prop::collection::vec(any::<u8>(), 0..64).prop_map(|tail| {
        let mut v = vec![MAGIC[0], MAGIC[1], VERSION];
        v.extend(tail);
        v
    });
    let garbage = prop::collection::vec(any::<u8>(), 0..256);
    let piece = prop_oneof![
        3 => valid,
        3 => header.clone(),
        2 => (header, prop::collection::vec(any::<u8>(), 0..5000)).prop_map(|(mut h, tail)| {
            h.extend(tail);
            h
        }),
        1 => magic_then_garbage,
        1 => garbage,
    ];
    prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

/// Random metadata-like bytes: entries with small tags and lengths that may lie,
/// possibly cut short.
fn metadata_like() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        0u8..10,
        prop_oneof![0u16..40, any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(tag, len, value)| {
            let mut e = vec![tag];
            e.extend_from_slice(&len.to_be_bytes());
            e.extend(value);
            e
        });
    (prop::collection::vec(entry, 0..8), any::<usize>()).prop_map(|(entries, cut)| {
        let mut all = entries.concat();
        if !all.is_empty() {
            all.truncate(cut % (all.len() + 1));
        }
        all
    })
}

/// How `feed` manages the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffer {
    /// Append to one buffer, as a connection does; capacity is reused and grows.
    Reused,
    /// Before every `decode`, copy what is buffered into a buffer of exactly that
    /// capacity, so any capacity beyond the buffered bytes after the call was
    /// allocated by the decoder itself.
    Exact,
}

/// `frames` encoded back to back.
fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut wire = BytesMut::new();
    for frame in frames {
        FrameCodec::default().encode(frame, &mut wire).unwrap();
    }
    wire
}

/// Feeds `wire` to `codec` in the given chunks and returns every decoded frame. With
/// [`Buffer::Exact`], checks after every call that the decoder left the buffer no
/// larger than `max(buffered bytes, growth_bound)`.
fn feed(
    codec: &mut FrameCodec,
    wire: &[u8],
    sizes: &[usize],
    buffer: Buffer,
    growth_bound: usize,
) -> Result<Vec<Frame>, CodecError> {
    let max = codec.max_frame_len();
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    let mut decode = |src: &mut BytesMut, eof: bool| {
        if buffer == Buffer::Exact {
            *src = BytesMut::from(&src[..]);
        }
        let before = src.capacity();
        let decoded = if eof {
            codec.decode_eof(src)
        } else {
            codec.decode(src)
        };
        if buffer == Buffer::Exact {
            let after = src.capacity();
            assert!(
                after <= before.max(growth_bound),
                "decoder grew the buffer from {before} to {after} bytes (cap {max})"
            );
        }
        if let Ok(Some(frame)) = &decoded {
            assert!(frame.header.frame_len() <= max as u64);
        }
        decoded
    };
    for chunk in chunks(wire, sizes) {
        src.extend_from_slice(chunk);
        while let Some(frame) = decode(&mut src, false)? {
            frames.push(frame);
        }
    }
    if let Some(frame) = decode(&mut src, true)? {
        frames.push(frame);
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(config(96))]

    /// (a) Frames back to back round-trip, however the bytes arrive.
    #[test]
    fn frames_round_trip_in_any_chunking(
        frames in prop::collection::vec(any_frame(), 1..5),
        sizes in chunk_sizes(),
    ) {
        let mut codec = FrameCodec::default();
        let wire = encode_all(&frames);
        let expected_len: u64 = frames.iter().map(|f| f.header.frame_len()).sum();
        prop_assert_eq!(wire.len() as u64, expected_len);
        let decoded = feed(&mut codec, &wire, &sizes, Buffer::Reused, usize::MAX).unwrap();
        prop_assert_eq!(decoded, frames);
    }

    /// (a') The same through `split_frames`, the server's way: whole frames come out in
    /// batches, back to back, and a partial frame stays behind until it is whole.
    #[test]
    fn split_frames_round_trip_in_any_chunking(
        frames in prop::collection::vec(any_frame(), 1..5),
        sizes in chunk_sizes(),
    ) {
        let mut codec = FrameCodec::default();
        let wire = encode_all(&frames);
        let mut src = BytesMut::new();
        let mut decoded = Vec::new();
        for chunk in chunks(&wire, &sizes) {
            src.extend_from_slice(chunk);
            let (batch, error) = codec.split_frames(&mut src);
            prop_assert!(error.is_none());
            let Some(mut batch) = batch else { continue };
            while !batch.is_empty() {
                let mut one = BytesMut::from(&batch[..]);
                let frame = FrameCodec::default().decode(&mut one).unwrap().expect("a whole frame");
                let _ = batch.split_to(frame.header.frame_len() as usize);
                decoded.push(frame);
            }
        }
        prop_assert!(src.is_empty(), "nothing left over");
        prop_assert_eq!(decoded, frames);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// (b) Hostile bytes never panic, never make the decoder allocate past the cap,
    /// and fail only with protocol errors.
    #[test]
    fn hostile_bytes_never_panic_or_overallocate(
        wire in hostile_bytes(),
        sizes in chunk_sizes(),
    ) {
        let mut codec = FrameCodec::new(SMALL_MAX);
        match feed(&mut codec, &wire, &sizes, Buffer::Exact, GROWTH_BOUND) {
            Ok(frames) => {
                let total: u64 = frames.iter().map(|f| f.header.frame_len()).sum();
                prop_assert_eq!(total, wire.len() as u64, "every byte is in a frame");
            }
            Err(CodecError::Protocol(e)) => {
                // Only errors that describe the stream, never metadata or state ones.
                let stream_error = matches!(
                    e,
                    ProtocolError::BadMagic(_)
                        | ProtocolError::UnsupportedVersion(_)
                        | ProtocolError::ReservedFlags(_)
                        | ProtocolError::ReservedBytes
                        | ProtocolError::FrameTooLarge { .. }
                        | ProtocolError::Truncated(_)
                );
                prop_assert!(stream_error, "unexpected error {:?}", e);
                if let ProtocolError::FrameTooLarge { declared, max } = e {
                    prop_assert!(declared > max as u64);
                    prop_assert_eq!(max, SMALL_MAX);
                }
            }
            Err(e) => prop_assert!(false, "not a protocol error: {:?}", e),
        }
    }

    /// (b') The same through `split_frames`, the server's way: no panic, no growth past
    /// the cap, only stream errors, and every byte before an error in a whole frame.
    #[test]
    fn hostile_bytes_never_make_split_frames_panic_or_overallocate(
        wire in hostile_bytes(),
        sizes in chunk_sizes(),
    ) {
        let mut codec = FrameCodec::new(SMALL_MAX);
        let mut src = BytesMut::new();
        let mut whole = 0usize;
        for chunk in chunks(&wire, &sizes) {
            src.extend_from_slice(chunk);
            // Exactly what is held, so any growth is the codec's.
            src = BytesMut::from(&src[..]);
            let before = src.capacity();
            let (batch, error) = codec.split_frames(&mut src);
            prop_assert!(
                src.capacity() <= before.max(GROWTH_BOUND),
                "split_frames grew the buffer from {} to {} bytes", before, src.capacity()
            );
            whole += batch.map_or(0, |b| b.len());
            if let Some(error) = error {
                prop_assert!(
                    matches!(error, CodecError::Protocol(_)),
                    "not a protocol error: {:?}", error
                );
                break;
            }
        }
        prop_assert!(whole <= wire.len());
    }

    /// (c) The metadata parser never panics, whatever it is given.
    #[test]
    fn metadata_parse_never_panics(
        section in prop_oneof![prop::collection::vec(any::<u8>(), 0..256), metadata_like()],
    ) {
        if let Ok(meta) = RequestMeta::parse(&section) {
            let _ = meta.attachments().count();
            // Whatever parsed was really in the section.
            prop_assert!(section.windows(meta.service.len()).any(|w| w == meta.service.as_bytes())
                || meta.service.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// (d) A request's metadata and arguments survive encode → decode → parse.
    #[test]
    fn request_metadata_round_trips(
        service in "\\PC{0,40}",
        method in "\\PC{0,40}",
        timeout_ms in prop_oneof![Just(0u64), 1u64..100_000, any::<u64>()],
        trace in prop::option::of((any::<[u8; 16]>(), any::<[u8; 8]>())),
        auth_token in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        attachments in prop::collection::vec(
            ("\\PC{0,30}", prop::collection::vec(any::<u8>(), 0..64)),
            0..5,
        ),
        id in any::<u64>(),
        oneway in any::<bool>(),
        args in (any::<i64>(), "\\PC{0,20}", prop::collection::vec(any::<u8>(), 0..16)),
        sizes in chunk_sizes(),
    ) {
        let trace = trace.map(|(trace_id, span_id)| TraceContext { trace_id, span_id, flags: 1 });
        let target = RequestTarget {
            service: &service,
            method: &method,
            timeout: Some(Duration::from_millis(timeout_ms)),
            trace: trace.as_ref(),
            auth_token: auth_token.as_deref(),
            attachments: &attachments,
        };
        let mut wire = BytesMut::new();
        encode_request(&mut wire, id, oneway, &target, &args, 1 << 20).unwrap();

        let mut codec = FrameCodec::new(1 << 20);
        let frames = feed(&mut codec, &wire, &sizes, Buffer::Reused, usize::MAX).unwrap();
        prop_assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        let expected_flags = if oneway { Flags::ONEWAY } else { Flags::empty() };
        prop_assert_eq!(frame.header.flags, expected_flags);
        prop_assert_eq!(frame.header.request_id, id);
        prop_assert_eq!(frame.header.status, 0);

        let meta = RequestMeta::parse(&frame.metadata).unwrap();
        prop_assert_eq!(meta.service, service.as_str());
        prop_assert_eq!(meta.method, method.as_str());
        // Zero means "no deadline"; longer than u32::MAX ms saturates.
        let expected_timeout = match timeout_ms.min(u64::from(u32::MAX)) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        prop_assert_eq!(meta.timeout, expected_timeout);
        prop_assert_eq!(meta.trace, trace);
        prop_assert_eq!(meta.auth_token, auth_token.as_deref());
        let got: Vec<(&str, &[u8])> = meta.attachments().collect();
        let want: Vec<(&str, &[u8])> =
            attachments.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        prop_assert_eq!(got, want);

        let decoded: (i64, String, Vec<u8>) = rmp_serde::from_slice(&frame.body).unwrap();
        prop_assert_eq!(decoded, args);
    }
}

/// Metadata written entry by entry with a tag from the future is still parsed; the
/// unknown entry is skipped.
#[test]
fn unknown_tags_are_skipped() {
    let mut buf = BytesMut::new();
    let mut w = MetadataWriter::new(&mut buf);
    w.entry(0xee, b"ignored").unwrap();
    w.target("S", "m").unwrap();
    w.entry(0x7f, &[]).unwrap();
    w.entry(tag::ATTACHMENT, b"\x01kv").unwrap();
    let meta = RequestMeta::parse(&buf).unwrap();
    assert_eq!((meta.service, meta.method), ("S", "m"));
    assert_eq!(
        meta.attachments().collect::<Vec<_>>(),
        vec![("k", &b"v"[..])]
    );
}

/// The decoder's reservation for a pending frame should be bounded by the frame cap,
/// not by twice it.
#[test]
fn decoder_allocates_at_most_the_cap() {
    let mut codec = FrameCodec::new(SMALL_MAX);
    let frame = Frame::new(
        Flags::empty(),
        0,
        1,
        Bytes::new(),
        Bytes::from(vec![0u8; SMALL_MAX - HEADER_LEN]),
    );
    let mut wire = BytesMut::new();
    codec.encode(&frame, &mut wire).unwrap();
    // Three quarters of the frame arrived, in a buffer holding exactly that.
    let mut src = BytesMut::from(&wire[..SMALL_MAX * 3 / 4]);
    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert!(
        src.capacity() <= SMALL_MAX + SLACK,
        "{} bytes reserved for a frame of at most {SMALL_MAX}",
        src.capacity()
    );
}
