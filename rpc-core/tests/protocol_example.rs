//! The examples of `docs/PROTOCOL.md`, byte for byte.
//!
//! Each frame is built with the public encoder and compared with a hex literal here
//! and with the matching `wire` block of the document, so the document, this test and
//! the encoder cannot drift apart. The frames are then decoded with `FrameCodec` and
//! `RequestMeta::parse` and every field is checked. The MessagePack table of the
//! document is checked the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use rpc_core::protocol::metadata::RequestMeta;
use rpc_core::protocol::{
    encode_event, encode_heartbeat, encode_request, encode_response, Event, Flags, Frame,
    FrameCodec, RequestTarget, Status, DEFAULT_MAX_FRAME_LEN, SERIALIZATION_MSGPACK,
};
use serde::{Deserialize, Serialize};
use tokio_util::codec::Decoder;

/// The document, read at compile time so that editing it re-runs this check.
const DOC: &str = include_str!("../../docs/PROTOCOL.md");

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

/// `Calculator.add(2, 3)`, request id 1, timeout 5000 ms.
const REQUEST: &str = "
    5250 01 00 01 00 0000
    0000000000000001 0000001a 00000003
    01 000a 43616c63756c61746f72
    02 0003 616464
    03 0004 00001388
    92 02 03";

/// Its response: OK, result 5.
const RESPONSE: &str = "
    5250 01 01 01 00 0000
    0000000000000001 00000000 00000001
    05";

/// Request id 2 asked for a method that does not exist.
const METHOD_NOT_FOUND: &str = "
    5250 01 01 01 03 0000
    0000000000000002 00000000 0000002a
    d9 28 73657276696365206043616c63756c61746f72602068617320
    6e6f206d6574686f6420606d756c60";

const METHOD_NOT_FOUND_MESSAGE: &str = "service `Calculator` has no method `mul`";

/// `Audit.flush()`, oneway, request id 3, timeout 5000 ms, attachment tenant=acme.
const ONEWAY: &str = "
    5250 01 02 01 00 0000
    0000000000000003 00000025 00000001
    01 0005 4175646974
    02 0005 666c757368
    03 0004 00001388
    07 000b 06 74656e616e74 61636d65
    90";

/// Request id 4, `divide(1, 0)` of a method returning `Result<i64, MathError>`: the
/// bare error value, the unit variant `DivideByZero`.
const APPLICATION_ERROR: &str = "
    5250 01 01 01 01 0000
    0000000000000004 00000000 0000000d
    ac 44697669646542795a65726f";

const HEARTBEAT_REQUEST: &str = "5250 01 04 01 00 0000 0000000000000001 00000000 00000000";
const HEARTBEAT_RESPONSE: &str = "5250 01 05 01 00 0000 0000000000000001 00000000 00000000";
const GOAWAY: &str = "5250 01 08 01 01 0000 0000000000000000 00000000 00000000";

/// Bytes from hex digits, ignoring whitespace.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len() % 2 == 0,
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap();
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {pair:?}"))
        })
        .collect()
}

/// Bytes as the document writes them: lowercase hex pairs separated by spaces.
fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The document's ```` ```wire NAME ```` blocks, by name. Each line is
/// `offset | hex bytes | comment`; the decimal offset must equal the number of bytes
/// before the line.
fn doc_blocks() -> BTreeMap<String, Vec<u8>> {
    let mut blocks = BTreeMap::new();
    let mut lines = DOC.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        let Some(name) = line.trim().strip_prefix("```wire ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for (number, line) in lines.by_ref() {
            let line = line.trim();
            if line == "```" {
                break;
            }
            let where_ = format!("docs/PROTOCOL.md line {}", number + 1);
            let mut fields = line.splitn(3, '|');
            let offset: usize = fields
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{where_}: no decimal offset"));
            assert_eq!(offset, bytes.len(), "{where_}: wrong offset");
            let data = fields
                .next()
                .unwrap_or_else(|| panic!("{where_}: no `|` after the offset"));
            for pair in data.split_whitespace() {
                assert_eq!(pair.len(), 2, "{where_}: `{pair}` is not one hex byte");
                bytes.push(
                    u8::from_str_radix(pair, 16)
                        .unwrap_or_else(|_| panic!("{where_}: `{pair}` is not hex")),
                );
            }
        }
        assert!(
            blocks.insert(name.trim().to_owned(), bytes).is_none(),
            "two wire blocks named {name}"
        );
    }
    blocks
}

/// Asserts that `encoded` equals the literal here and the document's block `name`.
fn assert_documented(name: &str, encoded: &[u8], literal: &str) {
    assert_eq!(
        to_hex(encoded),
        to_hex(&hex(literal)),
        "{name}: encoder vs literal"
    );
    let blocks = doc_blocks();
    let documented = blocks
        .get(name)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no ```wire {name} block"));
    assert_eq!(
        to_hex(documented),
        to_hex(encoded),
        "{name}: document vs encoder"
    );
}

fn calculator_add() -> Vec<u8> {
    let mut dst = BytesMut::new();
    let target = RequestTarget {
        service: "Calculator",
        method: "add",
        timeout: Some(Duration::from_millis(5000)),
        trace: None,
        auth_token: None,
        attachments: &[],
    };
    encode_request(&mut dst, 1, false, &target, &(2i64, 3i64), MAX).unwrap();
    dst.to_vec()
}

fn audit_flush() -> Vec<u8> {
    let mut dst = BytesMut::new();
    let attachments = [("tenant".to_owned(), b"acme".to_vec())];
    let target = RequestTarget {
        service: "Audit",
        method: "flush",
        timeout: Some(Duration::from_secs(5)),
        trace: None,
        auth_token: None,
        attachments: &attachments,
    };
    // What a generated stub sends for a method without arguments.
    encode_request(&mut dst, 3, true, &target, &[(); 0], MAX).unwrap();
    dst.to_vec()
}

fn add_response() -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_response(&mut dst, 1, Status::Ok.code(), &5i64, MAX).unwrap();
    dst.to_vec()
}

fn method_not_found() -> Vec<u8> {
    let mut dst = BytesMut::new();
    let code = Status::MethodNotFound.code();
    encode_response(&mut dst, 2, code, METHOD_NOT_FOUND_MESSAGE, MAX).unwrap();
    dst.to_vec()
}

fn divide_by_zero() -> Vec<u8> {
    let mut dst = BytesMut::new();
    let code = Status::ApplicationError.code();
    encode_response(&mut dst, 4, code, "DivideByZero", MAX).unwrap();
    dst.to_vec()
}

fn heartbeat(response: bool) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_heartbeat(&mut dst, 1, response);
    dst.to_vec()
}

fn goaway() -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_event(&mut dst, Event::GoAway);
    dst.to_vec()
}

#[test]
fn request_is_as_documented() {
    assert_documented("request", &calculator_add(), REQUEST);
}

#[test]
fn response_is_as_documented() {
    assert_documented("response", &add_response(), RESPONSE);
}

#[test]
fn error_response_is_as_documented() {
    assert_documented("method-not-found", &method_not_found(), METHOD_NOT_FOUND);
}

#[test]
fn application_error_is_as_documented() {
    assert_documented("application-error", &divide_by_zero(), APPLICATION_ERROR);
}

#[test]
fn oneway_request_is_as_documented() {
    assert_documented("oneway", &audit_flush(), ONEWAY);
}

#[test]
fn heartbeats_and_goaway_are_as_documented() {
    assert_documented("heartbeat-request", &heartbeat(false), HEARTBEAT_REQUEST);
    assert_documented("heartbeat-response", &heartbeat(true), HEARTBEAT_RESPONSE);
    assert_documented("goaway", &goaway(), GOAWAY);
}

#[test]
fn every_wire_block_of_the_document_is_checked() {
    let names: Vec<String> = doc_blocks().into_keys().collect();
    let mut expected = vec![
        "application-error",
        "goaway",
        "heartbeat-request",
        "heartbeat-response",
        "method-not-found",
        "oneway",
        "request",
        "response",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected);
}

/// Decodes the document's blocks, back to back in one buffer, and checks every field.
#[test]
fn documented_frames_decode_field_by_field() {
    let blocks = doc_blocks();
    let order = [
        "request",
        "response",
        "method-not-found",
        "oneway",
        "heartbeat-request",
        "heartbeat-response",
        "goaway",
    ];
    let mut src = BytesMut::new();
    for name in order {
        src.extend_from_slice(&blocks[name]);
    }
    let mut codec = FrameCodec::default();
    let mut next = || -> Frame { codec.decode(&mut src).unwrap().expect("a whole frame") };

    let request = next();
    assert_eq!(request.header.flags, Flags::empty());
    assert_eq!(request.header.serialization, SERIALIZATION_MSGPACK);
    assert_eq!(request.header.status, 0);
    assert_eq!(request.header.request_id, 1);
    assert_eq!(request.header.metadata_len, 26);
    assert_eq!(request.header.body_len, 3);
    let meta = RequestMeta::parse(&request.metadata).unwrap();
    assert_eq!(meta.service, "Calculator");
    assert_eq!(meta.method, "add");
    assert_eq!(meta.timeout, Some(Duration::from_millis(5000)));
    assert_eq!(meta.trace, None);
    assert_eq!(meta.auth_token, None);
    assert_eq!(meta.attachments().count(), 0);
    assert_eq!(&request.body[..], &[0x92, 0x02, 0x03]);
    let args: (i64, i64) = rmp_serde::from_slice(&request.body).unwrap();
    assert_eq!(args, (2, 3));

    let response = next();
    assert_eq!(response.header.flags, Flags::RESPONSE);
    assert_eq!(response.header.serialization, SERIALIZATION_MSGPACK);
    assert_eq!(Status::from_code(response.header.status), Status::Ok);
    assert_eq!(response.header.request_id, 1);
    assert!(response.metadata.is_empty());
    assert_eq!(rmp_serde::from_slice::<i64>(&response.body).unwrap(), 5);

    let error = next();
    assert_eq!(error.header.flags, Flags::RESPONSE);
    assert_eq!(
        Status::from_code(error.header.status),
        Status::MethodNotFound
    );
    assert_eq!(error.header.request_id, 2);
    assert!(error.metadata.is_empty());
    let message: String = rmp_serde::from_slice(&error.body).unwrap();
    assert_eq!(message, METHOD_NOT_FOUND_MESSAGE);

    let oneway = next();
    assert_eq!(oneway.header.flags, Flags::ONEWAY);
    assert_eq!(oneway.header.serialization, SERIALIZATION_MSGPACK);
    assert_eq!(oneway.header.status, 0);
    assert_eq!(oneway.header.request_id, 3);
    assert_eq!(oneway.header.metadata_len, 37);
    let meta = RequestMeta::parse(&oneway.metadata).unwrap();
    assert_eq!(meta.service, "Audit");
    assert_eq!(meta.method, "flush");
    assert_eq!(meta.timeout, Some(Duration::from_secs(5)));
    assert_eq!(meta.trace, None);
    assert_eq!(meta.auth_token, None);
    assert_eq!(
        meta.attachments().collect::<Vec<_>>(),
        vec![("tenant", &b"acme"[..])]
    );
    assert_eq!(&oneway.body[..], &[0x90]);
    let _: [(); 0] = rmp_serde::from_slice(&oneway.body).unwrap();

    for (response, flags) in [
        (false, Flags::HEARTBEAT),
        (true, Flags::HEARTBEAT.with(Flags::RESPONSE)),
    ] {
        let beat = next();
        assert_eq!(beat.header.flags, flags, "heartbeat response: {response}");
        assert_eq!(beat.header.serialization, SERIALIZATION_MSGPACK);
        assert_eq!(beat.header.status, 0);
        assert_eq!(beat.header.request_id, 1);
        assert!(beat.metadata.is_empty() && beat.body.is_empty());
    }

    let event = next();
    assert_eq!(event.header.flags, Flags::EVENT);
    assert_eq!(event.header.serialization, SERIALIZATION_MSGPACK);
    assert_eq!(Event::from_code(event.header.status), Event::GoAway);
    assert_eq!(event.header.request_id, 0);
    assert!(event.metadata.is_empty() && event.body.is_empty());

    assert_eq!(codec.decode(&mut src).unwrap(), None);
    assert!(src.is_empty());
}

#[derive(Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize)]
struct Unit;

#[derive(Serialize, Deserialize)]
struct Newtype(u8);

#[derive(Serialize, Deserialize)]
struct Pair(u8, u8);

#[derive(Serialize, Deserialize)]
enum E {
    A,
    B(u8),
    C(u8, u8),
    D { x: u8 },
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    #[serde(with = "serde_bytes")]
    b: Vec<u8>,
}

/// The body encoder's output for `value`.
fn msgpack<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    rmp_serde::encode::write_named(&mut out, value).unwrap();
    out
}

/// Every row of the document's MessagePack table, as `(Rust value, bytes)`.
fn serde_rows() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("5i64", msgpack(&5i64)),
        ("-1i32", msgpack(&-1i32)),
        ("200u8", msgpack(&200u8)),
        ("300u16", msgpack(&300u16)),
        ("-33i64", msgpack(&-33i64)),
        ("1.5f32", msgpack(&1.5f32)),
        ("1.5f64", msgpack(&1.5f64)),
        ("true", msgpack(&true)),
        ("'a'", msgpack(&'a')),
        ("\"hi\"", msgpack("hi")),
        ("()", msgpack(&())),
        ("[(); 0]", msgpack(&[(); 0])),
        ("(2i64, 3i64)", msgpack(&(2i64, 3i64))),
        ("Point { x: 1, y: 2 }", msgpack(&Point { x: 1, y: 2 })),
        ("Unit", msgpack(&Unit)),
        ("Newtype(7u8)", msgpack(&Newtype(7))),
        ("Pair(1u8, 2u8)", msgpack(&Pair(1, 2))),
        ("E::A", msgpack(&E::A)),
        ("E::B(7u8)", msgpack(&E::B(7))),
        ("E::C(1u8, 2u8)", msgpack(&E::C(1, 2))),
        ("E::D { x: 1u8 }", msgpack(&E::D { x: 1 })),
        ("Ok::<u8, u8>(1)", msgpack(&Ok::<u8, u8>(1))),
        ("Some(5u8)", msgpack(&Some(5u8))),
        ("None::<u8>", msgpack(&None::<u8>)),
        ("Some(None::<u8>)", msgpack(&Some(None::<u8>))),
        ("vec![1u8, 2]", msgpack(&vec![1u8, 2])),
        ("Chunk { b: vec![1, 2] }", msgpack(&Chunk { b: vec![1, 2] })),
        (
            "rpc_core::Blob::from(vec![1, 2])",
            msgpack(&rpc_core::Blob::from(vec![1, 2])),
        ),
        (
            "serde_bytes::Bytes::new(&[1, 2])",
            msgpack(serde_bytes::Bytes::new(&[1, 2])),
        ),
        (
            "BTreeMap::from([(\"k\", 1u8)])",
            msgpack(&BTreeMap::from([("k", 1u8)])),
        ),
    ]
}

/// The rows of the document's table: lines `` | `value` | `hex` | note | ``.
fn doc_serde_rows() -> Vec<(String, Vec<u8>)> {
    DOC.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.splitn(2, "` | `");
            let value = cells.next()?;
            let (bytes, _) = cells.next()?.split_once("` |")?;
            Some((value.to_owned(), hex(bytes)))
        })
        .collect()
}

#[test]
fn messagepack_table_is_as_documented() {
    let documented = doc_serde_rows();
    let encoded = serde_rows();
    let documented_names: Vec<&str> = documented.iter().map(|(n, _)| n.as_str()).collect();
    let encoded_names: Vec<&str> = encoded.iter().map(|(n, _)| *n).collect();
    assert_eq!(documented_names, encoded_names, "rows of the table");
    for ((name, doc), (_, bytes)) in documented.iter().zip(&encoded) {
        assert_eq!(to_hex(doc), to_hex(bytes), "{name}");
    }
}

/// The decoding leniency the document promises to foreign implementations.
#[test]
fn lenient_reading_is_as_documented() {
    // A struct as an array of its fields; unknown keys ignored.
    let p: Point = rmp_serde::from_slice(&[0x92, 1, 2]).unwrap();
    assert_eq!((p.x, p.y), (1, 2));
    let p: Point = rmp_serde::from_slice(&hex("83 a178 01 a179 02 a17a 03")).unwrap();
    assert_eq!((p.x, p.y), (1, 2));
    // A unit variant as {name: nil}.
    assert!(matches!(
        rmp_serde::from_slice::<E>(&hex("81 a141 c0")).unwrap(),
        E::A
    ));
    // bin and arrays both accepted for bytes.
    assert_eq!(
        rmp_serde::from_slice::<Vec<u8>>(&hex("c4 02 01 02")).unwrap(),
        vec![1, 2]
    );
    let chunk: Chunk = rmp_serde::from_slice(&hex("81 a162 92 01 02")).unwrap();
    assert_eq!(chunk.b, vec![1, 2]);
    let blob: rpc_core::Blob = rmp_serde::from_slice(&hex("92 01 02")).unwrap();
    assert_eq!(&blob[..], &[1, 2]);
    // Integers of any width and floats from integers.
    assert_eq!(
        rmp_serde::from_slice::<i32>(&hex("d3 0000000000000005")).unwrap(),
        5
    );
    assert_eq!(rmp_serde::from_slice::<f64>(&[5]).unwrap(), 5.0);
    // But not out of range, nor a wrong argument count.
    assert!(rmp_serde::from_slice::<u8>(&hex("cd 0100")).is_err());
    assert!(rmp_serde::from_slice::<(i64, i64)>(&hex("93 01 02 03")).is_err());
    assert!(rmp_serde::from_slice::<(i64, i64)>(&hex("91 01")).is_err());
    // A zero-argument method wants 0x90, not nil.
    assert!(rmp_serde::from_slice::<[(); 0]>(&[0xc0]).is_err());
    // A String (and a char) accepts bin holding UTF-8, as well as str.
    assert_eq!(
        rmp_serde::from_slice::<String>(&hex("c4 02 68 69")).unwrap(),
        "hi"
    );
    assert!(rmp_serde::from_slice::<String>(&hex("c4 01 ff")).is_err());
    // Bytes (serde_bytes, Blob) accept str too.
    assert_eq!(
        rmp_serde::from_slice::<serde_bytes::ByteBuf>(&hex("a2 68 69")).unwrap(),
        b"hi".to_vec()
    );
    assert_eq!(
        &rmp_serde::from_slice::<rpc_core::Blob>(&hex("a2 68 69")).unwrap()[..],
        b"hi"
    );
    // Signed parameters accept the unsigned encodings of non-negative values, and
    // unsigned ones the signed encodings; the value must fit.
    assert_eq!(rmp_serde::from_slice::<i8>(&hex("cc 7f")).unwrap(), 127);
    assert!(rmp_serde::from_slice::<i8>(&hex("cc 80")).is_err());
    assert_eq!(
        rmp_serde::from_slice::<i64>(&hex("cf 7fffffffffffffff")).unwrap(),
        i64::MAX
    );
    assert!(rmp_serde::from_slice::<i64>(&hex("cf 8000000000000000")).is_err());
    assert_eq!(rmp_serde::from_slice::<u16>(&hex("d1 0100")).unwrap(), 256);
    assert_eq!(
        rmp_serde::from_slice::<u64>(&hex("d3 0000000000000007")).unwrap(),
        7
    );
    assert!(rmp_serde::from_slice::<u64>(&hex("ff")).is_err());
    // Floats: an f32 accepts float 64 (rounded), an f64 float 32; both accept integers.
    assert_eq!(
        rmp_serde::from_slice::<f32>(&hex("cb 3ff8000000000000")).unwrap(),
        1.5
    );
    assert_eq!(
        rmp_serde::from_slice::<f64>(&hex("ca 3fc00000")).unwrap(),
        1.5
    );
    assert_eq!(rmp_serde::from_slice::<f32>(&hex("d0 fe")).unwrap(), -2.0);
    // But not integers for bools, nor floats for integers, nor nil for a value.
    assert!(rmp_serde::from_slice::<bool>(&[1]).is_err());
    assert!(rmp_serde::from_slice::<i64>(&hex("cb 3ff8000000000000")).is_err());
    assert!(rmp_serde::from_slice::<i64>(&[0xc0]).is_err());
    // An Option accepts nil or the bare value.
    assert_eq!(rmp_serde::from_slice::<Option<u8>>(&[0xc0]).unwrap(), None);
    assert_eq!(rmp_serde::from_slice::<Option<u8>>(&[5]).unwrap(), Some(5));
    // Trailing bytes after the value are ignored.
    assert_eq!(
        rmp_serde::from_slice::<(i64, i64)>(&hex("92 02 03 c0")).unwrap(),
        (2, 3)
    );
}
