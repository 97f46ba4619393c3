#!/usr/bin/env python3
"""Writes docs/test-vectors.json (run from the repository root).

The frames are built with client.py's encoder, from docs/PROTOCOL.md; the Rust test
rpc-core/tests/test_vectors.rs checks every one against the real server, so a vector
that says something the server does not do fails there.
"""

import json
import struct
import sys

sys.path.insert(0, "examples/python")
import client as c  # noqa: E402

CALC = "test.Calculator"
OK, APP, SNF, MNF, BAD, TIMEOUT, INTERNAL = 0, 1, 2, 3, 4, 6, 7


def req(rid, method, body, flags=0, timeout_ms=5000, service=CALC, meta=None, ser=1):
    if meta is None:
        meta = c.request_metadata(service, method, timeout_ms)
    return c.frame(flags, rid, meta, body, serialization=ser).hex()


def args(*values):
    return c.packb(list(values))


def ok(rid, value=None, body=None):
    body = c.packb(value) if body is None else body
    return {"frame": c.frame(c.F_RESPONSE, rid, b"", body, status=OK).hex()}


def app_error(rid, value):
    return {"frame": c.frame(c.F_RESPONSE, rid, b"", c.packb(value), status=APP).hex()}


def error(rid, status):
    return {"request_id": rid, "flags": c.F_RESPONSE, "status": status,
            "body": "a MessagePack string (a message for people; its text is not specified)"}


def v(name, meaning, send, replies=(), then="open"):
    return {"name": name, "meaning": meaning, "send": list(send), "replies": list(replies),
            "then": then}


def header(flags=0, ser=1, status=0, reserved=0, rid=1, mlen=0, blen=0, magic=b"RP", ver=1):
    return c.HEADER.pack(magic, ver, flags, ser, status, reserved, rid, mlen, blen)


point_a = {"x": 0.0, "y": 2.0, "label": "a"}
point_b = {"x": 4.0, "y": 4.0, "label": "b"}
midpoint = {"x": 2.0, "y": 3.0, "label": "a-b"}

vectors = [
    v("add", "add(2, 3): the arguments are an array; OK carries the bare result",
      [req(1, "add", args(2, 3))], [ok(1, 5)]),
    v("add-wide-integers",
      "add(2, 3) with the 2 as int64 (d3) and the 3 as uint64 (cf): a receiver accepts any "
      "integer encoding whose value fits",
      [req(2, "add", bytes.fromhex("92 d3 0000000000000002 cf 0000000000000003"))],
      [ok(2, 5)]),
    v("add-negative", "add(-1, 300) = 299, written in its shortest form (uint 16)",
      [req(3, "add", args(-1, 300))], [ok(3, 299)]),
    v("add-out-of-range", "add(2^64-1, 1): an integer that does not fit i64 is a BAD_REQUEST",
      [req(4, "add", bytes.fromhex("92 cf ffffffffffffffff 01"))], [error(4, BAD)]),
    v("divide-ok", "divide(7, 2) returns Result<i64, MathError>: OK carries the bare 3, "
      "not {\"Ok\": 3}",
      [req(5, "divide", args(7, 2))], [ok(5, 3)]),
    v("divide-by-zero", "divide(1, 0): APPLICATION_ERROR carries the bare error value; the "
      "unit variant MathError::DivideByZero is its name as a string",
      [req(6, "divide", args(1, 0))], [app_error(6, "DivideByZero")]),
    v("divide-overflow", "divide(-2^63, -1): the struct variant "
      "MathError::Overflow { a, b } is {\"Overflow\": {\"a\": a, \"b\": b}}",
      [req(7, "divide", args(-2 ** 63, -1))],
      [app_error(7, {"Overflow": {"a": -2 ** 63, "b": -1}})]),
    v("midpoint", "structs are maps keyed by field name, in declaration order",
      [req(8, "midpoint", args(point_a, point_b))], [ok(8, midpoint)]),
    v("midpoint-lenient", "a struct may also be sent as an array of its fields; an f64 field "
      "accepts an integer; a String accepts bin",
      [req(9, "midpoint", c.packb([[0, 2, "a"], {"x": 4, "y": 4.0, "label": c.Bin(b"b")}]))],
      [ok(9, midpoint)]),
    v("echo", "echo(bytes): serde_bytes values are bin",
      [req(10, "echo", args(b"\x00\x01\xff"))], [ok(10, b"\x00\x01\xff")]),
    v("echo-array", "a bytes parameter also accepts an array of integers",
      [req(11, "echo", args([0, 1, 255]))], [ok(11, b"\x00\x01\xff")]),
    v("oneway-method-as-request", "record(5) is #[oneway]; sent without the ONEWAY flag it "
      "runs and is answered OK with nil (c0)",
      [req(12, "record", args(5))], [ok(12, None)]),
    v("oneway-flag", "record(5) sent with the ONEWAY flag: it runs, nothing is answered",
      [req(13, "record", args(5), flags=c.F_ONEWAY)]),
    v("oneway-flag-any-method", "any method sent with the ONEWAY flag runs unanswered",
      [req(14, "add", args(1, 2), flags=c.F_ONEWAY)]),
    v("oneway-flag-error", "a oneway request that fails (unknown method) is not answered either",
      [req(15, "nope", args(), flags=c.F_ONEWAY)]),
    v("two-requests", "two requests in one write, both answered (matched by id)",
      [req(16, "add", args(1, 1)), req(17, "add", args(2, 2))], [ok(16, 2), ok(17, 4)]),
    v("unknown-tag", "an unknown metadata tag (0x7f) is skipped",
      [req(18, "add", args(1, 2),
           meta=c.request_metadata(CALC, "add", 5000) + c.entry(0x7F, b"xyz"))],
      [ok(18, 3)]),
    v("attachment", "attachments and a trace context are accepted",
      [req(19, "add", args(1, 2),
           meta=c.request_metadata(CALC, "add", 5000, [("tenant", b"acme")])
           + c.entry(c.T_TRACE_ID, bytes(range(16))) + c.entry(c.T_SPAN_ID, bytes(8)))],
      [ok(19, 3)]),
    v("no-timeout", "a request without a TIMEOUT entry has no deadline and is served",
      [req(20, "add", args(1, 2), timeout_ms=None)], [ok(20, 3)]),
    v("heartbeat", "a heartbeat request is answered with the same id",
      [c.heartbeat(0x0102030405060708).hex()],
      [{"frame": c.heartbeat(0x0102030405060708, response=True).hex()}]),
    v("unknown-service", "SERVICE_NOT_FOUND, with a message string",
      [req(21, "add", args(1, 2), service="nope")], [error(21, SNF)]),
    v("unknown-method", "METHOD_NOT_FOUND, with a message string",
      [req(22, "mul", args(1, 2))], [error(22, MNF)]),
    v("wrong-argument-count", "add given one argument: BAD_REQUEST",
      [req(23, "add", args(1))], [error(23, BAD)]),
    v("no-arguments-as-nil", "a zero-argument method wants 90 (empty array), not c0: "
      "BAD_REQUEST",
      [req(24, "hits", bytes([0xC0]))], [error(24, BAD)]),
    v("negative-into-unsigned", "sleep(-1): a negative value for a u64 is a BAD_REQUEST",
      [req(25, "sleep", args(-1))], [error(25, BAD)]),
    v("serialization-2", "a serialization id other than 1: BAD_REQUEST",
      [req(26, "add", args(1, 2), ser=2)], [error(26, BAD)]),
    v("no-method-entry", "metadata without METHOD: BAD_REQUEST",
      [req(27, "add", args(1, 2), meta=c.entry(c.T_SERVICE, CALC.encode()))],
      [error(27, BAD)]),
    v("entry-past-end", "a metadata entry whose length runs past the section: BAD_REQUEST",
      [req(28, "add", args(1, 2), meta=c.request_metadata(CALC, "add", None) + b"\x06\x00\x09ab")],
      [error(28, BAD)]),
    v("timeout-wrong-size", "a TIMEOUT entry that is not 4 bytes: BAD_REQUEST",
      [req(29, "add", args(1, 2),
           meta=c.request_metadata(CALC, "add", None) + c.entry(c.T_TIMEOUT, b"\x00\x10"))],
      [error(29, BAD)]),
    v("handler-panics", "explode() panics in the handler: INTERNAL_ERROR, the connection lives on",
      [req(30, "explode", args())], [error(30, INTERNAL)]),
    v("deadline", "sleep(2000) with a 100 ms TIMEOUT: the server gives up and answers TIMEOUT",
      [req(31, "sleep", args(2000), timeout_ms=100)], [error(31, TIMEOUT)]),
    v("cancel", "sleep(2000), then a CANCEL event with its id: nothing is answered for it",
      [req(32, "sleep", args(2000)), c.cancel(32).hex()]),
    v("cancel-unknown", "a CANCEL for an id that is not running is ignored",
      [c.cancel(999).hex()]),
    v("unknown-event", "an event a server does not know (code 9) is ignored",
      [c.frame(c.F_EVENT, 0, status=9).hex()]),
    v("heartbeat-response-from-client", "a heartbeat response sent to a server is ignored",
      [c.heartbeat(5, response=True).hex()]),
    v("bad-magic", "the first two bytes are not 52 50: closed, nothing sent",
      [b"GET / HTTP/1.1\r\n\r\n".hex()], then="close"),
    v("bad-version", "version 2: closed", [header(ver=2).hex()], then="close"),
    v("reserved-flags", "a reserved flag bit (0x10): closed", [header(flags=0x10).hex()],
      then="close"),
    v("reserved-bytes", "header bytes 6-7 not zero: closed", [header(reserved=1).hex()],
      then="close"),
    v("too-long", "a declared frame length over 8 MiB: closed from the header alone",
      [header(blen=8 * 1024 * 1024).hex()], then="close"),
    v("response-from-client", "a response frame sent to a server: closed",
      [c.frame(c.F_RESPONSE, 1, b"", b"\xc0").hex()], then="close"),
    v("id-in-flight", "a second request with the id of a call still running: closed, "
      "neither is answered",
      [req(33, "sleep", args(2000)), req(33, "add", args(1, 2))], then="close"),
    v("reply-then-close", "a good request, then garbage in the same write: the good one is "
      "answered, then the connection is closed",
      [req(34, "add", args(20, 22)), "00000000"], [ok(34, 42)], then="close"),
]

doc = {
    "about": "Test vectors of the rpc-core wire protocol, version 1 (docs/PROTOCOL.md). "
             "Each vector is run on a fresh TCP connection to a server hosting the service "
             "below with default settings (8 MiB maximum frame): write the frames of `send` "
             "(hex) back to back in one write; read exactly the frames of `replies`, in any "
             "order (match them by request id); then, if `then` is \"open\", send a heartbeat "
             "request with id 0xabcd and the next frame must be its heartbeat response (so "
             "nothing else was sent: this is how `no reply` is checked); if `then` is "
             "\"close\", the server must close the connection (EOF or reset) without sending "
             "anything more. A reply given as `frame` must equal those bytes exactly; one "
             "given as request_id/flags/status must have those header fields and a "
             "MessagePack string body.",
    "service": {
        "name": CALC,
        "rust": [
            "async fn add(&self, a: i64, b: i64) -> i64;  // a + b",
            "async fn divide(&self, a: i64, b: i64) -> Result<i64, MathError>;"
            "  // DivideByZero if b == 0, Overflow { a, b } if a / b overflows",
            "async fn sleep(&self, ms: u64) -> u64;  // sleeps ms, returns ms",
            "async fn midpoint(&self, a: Point, b: Point) -> Point;"
            "  // x, y averaged, label = a.label + \"-\" + b.label",
            "async fn hits(&self) -> u64;  // how many add calls this server has run",
            "#[oneway] async fn record(&self, n: u64);",
            "async fn explode(&self) -> u64;  // panics",
            "async fn echo(&self, data: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf;",
            "struct Point { x: f64, y: f64, label: String }",
            "enum MathError { DivideByZero, Overflow { a: i64, b: i64 } }",
        ],
    },
    "vectors": vectors,
}

with open("docs/test-vectors.json", "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")
print("wrote %d vectors" % len(vectors))
