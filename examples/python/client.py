#!/usr/bin/env python3
"""A client of the rpc-core wire protocol, written from docs/PROTOCOL.md alone.

Standard library only: the MessagePack it needs (docs/PROTOCOL.md section 9) is
hand-written below. It multiplexes calls on one TCP connection (a reader thread
routes responses by request id), sends heartbeats while the server is quiet,
follows GOAWAY, and can cancel a call.

Usage:

    python3 client.py demo HOST:PORT              # calls test.Calculator, checks answers
    python3 client.py vectors FILE HOST:PORT      # runs docs/test-vectors.json

`demo` talks to the `test.Calculator` service of rpc-core's tests (its methods are
listed in docs/test-vectors.json); each exits 0 when every check passed.
"""

import json
import socket
import struct
import sys
import threading
import time

# ---------------------------------------------------------------------------
# MessagePack (the subset the protocol uses: nil, bool, int, float, str, bin,
# array, map). Integers are written in their shortest form; any width is read.
# ---------------------------------------------------------------------------


class Bin(bytes):
    """Bytes to be written as MessagePack bin (plain `bytes` are written as bin too)."""


def packb(value):
    """Encodes one value."""
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(v, out):
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        _pack_int(v, out)
    elif isinstance(v, float):
        out.append(0xCB)
        out += struct.pack(">d", v)
    elif isinstance(v, str):
        data = v.encode("utf-8")
        n = len(data)
        if n < 32:
            out.append(0xA0 | n)
        elif n < 0x100:
            out += bytes([0xD9, n])
        elif n < 0x10000:
            out.append(0xDA)
            out += struct.pack(">H", n)
        else:
            out.append(0xDB)
            out += struct.pack(">I", n)
        out += data
    elif isinstance(v, (bytes, bytearray)):
        n = len(v)
        if n < 0x100:
            out += bytes([0xC4, n])
        elif n < 0x10000:
            out.append(0xC5)
            out += struct.pack(">H", n)
        else:
            out.append(0xC6)
            out += struct.pack(">I", n)
        out += v
    elif isinstance(v, (list, tuple)):
        n = len(v)
        if n < 16:
            out.append(0x90 | n)
        elif n < 0x10000:
            out.append(0xDC)
            out += struct.pack(">H", n)
        else:
            out.append(0xDD)
            out += struct.pack(">I", n)
        for item in v:
            _pack(item, out)
    elif isinstance(v, dict):
        n = len(v)
        if n < 16:
            out.append(0x80 | n)
        elif n < 0x10000:
            out.append(0xDE)
            out += struct.pack(">H", n)
        else:
            out.append(0xDF)
            out += struct.pack(">I", n)
        for key, item in v.items():
            _pack(key, out)
            _pack(item, out)
    else:
        raise TypeError("cannot encode %r as MessagePack" % (v,))


def _pack_int(v, out):
    if 0 <= v < 0x80:
        out.append(v)
    elif -32 <= v < 0:
        out.append(v & 0xFF)
    elif 0 <= v < 0x100:
        out += bytes([0xCC, v])
    elif 0 <= v < 0x10000:
        out.append(0xCD)
        out += struct.pack(">H", v)
    elif 0 <= v < 0x100000000:
        out.append(0xCE)
        out += struct.pack(">I", v)
    elif 0 <= v < 0x10000000000000000:
        out.append(0xCF)
        out += struct.pack(">Q", v)
    elif -0x80 <= v < 0:
        out.append(0xD0)
        out += struct.pack(">b", v)
    elif -0x8000 <= v < 0:
        out.append(0xD1)
        out += struct.pack(">h", v)
    elif -0x80000000 <= v < 0:
        out.append(0xD2)
        out += struct.pack(">i", v)
    elif -0x8000000000000000 <= v < 0:
        out.append(0xD3)
        out += struct.pack(">q", v)
    else:
        raise OverflowError("integer %d does not fit in 64 bits" % v)


class MsgpackError(ValueError):
    """A body that is not (the supported subset of) MessagePack."""


def unpackb(data):
    """Decodes the first value of `data` (the protocol ignores anything after it)."""
    value, _ = _unpack(memoryview(bytes(data)), 0)
    return value


def _take(buf, pos, n):
    if pos + n > len(buf):
        raise MsgpackError("truncated MessagePack value")
    return bytes(buf[pos:pos + n]), pos + n


def _unpack(buf, pos):
    if pos >= len(buf):
        raise MsgpackError("truncated MessagePack value")
    b = buf[pos]
    pos += 1
    if b <= 0x7F:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0x80 <= b <= 0x8F:
        return _unpack_map(buf, pos, b & 0x0F)
    if 0x90 <= b <= 0x9F:
        return _unpack_array(buf, pos, b & 0x0F)
    if 0xA0 <= b <= 0xBF:
        raw, pos = _take(buf, pos, b & 0x1F)
        return raw.decode("utf-8"), pos
    fixed = {
        0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
        0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
        0xCA: ">f", 0xCB: ">d",
    }
    if b in fixed:
        fmt = fixed[b]
        raw, pos = _take(buf, pos, struct.calcsize(fmt))
        return struct.unpack(fmt, raw)[0], pos
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    lengths = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I",
               0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
    if b in lengths:
        fmt = lengths[b]
        raw, pos = _take(buf, pos, struct.calcsize(fmt))
        n = struct.unpack(fmt, raw)[0]
        if b in (0xD9, 0xDA, 0xDB):
            raw, pos = _take(buf, pos, n)
            return raw.decode("utf-8"), pos
        if b in (0xC4, 0xC5, 0xC6):
            raw, pos = _take(buf, pos, n)
            return Bin(raw), pos
        if b in (0xDC, 0xDD):
            return _unpack_array(buf, pos, n)
        return _unpack_map(buf, pos, n)
    raise MsgpackError("unsupported MessagePack type byte 0x%02x" % b)


def _unpack_array(buf, pos, n):
    items = []
    for _ in range(n):
        item, pos = _unpack(buf, pos)
        items.append(item)
    return items, pos


def _unpack_map(buf, pos, n):
    result = {}
    for _ in range(n):
        key, pos = _unpack(buf, pos)
        value, pos = _unpack(buf, pos)
        if isinstance(key, list):
            key = tuple(key)
        result[key] = value
    return result, pos


# ---------------------------------------------------------------------------
# Frames (docs/PROTOCOL.md sections 2, 3 and 8)
# ---------------------------------------------------------------------------

MAGIC = b"RP"
VERSION = 1
MSGPACK = 1
HEADER = struct.Struct(">2sBBBBHQII")
HEADER_LEN = HEADER.size  # 24
MAX_FRAME_LEN = 8 * 1024 * 1024

F_RESPONSE, F_ONEWAY, F_HEARTBEAT, F_EVENT = 0x01, 0x02, 0x04, 0x08
EVENT_GOAWAY, EVENT_CANCEL = 1, 2

T_SERVICE, T_METHOD, T_TIMEOUT, T_TRACE_ID, T_SPAN_ID, T_AUTH, T_ATTACHMENT = 1, 2, 3, 4, 5, 6, 7

STATUS_NAMES = {
    0: "OK", 1: "APPLICATION_ERROR", 2: "SERVICE_NOT_FOUND", 3: "METHOD_NOT_FOUND",
    4: "BAD_REQUEST", 5: "OVERLOADED", 6: "TIMEOUT", 7: "INTERNAL_ERROR",
    8: "UNAUTHENTICATED", 9: "SHUTTING_DOWN",
}


def frame(flags, request_id, metadata=b"", body=b"", status=0, serialization=MSGPACK):
    """One whole frame."""
    head = HEADER.pack(MAGIC, VERSION, flags, serialization, status, 0, request_id,
                       len(metadata), len(body))
    return head + metadata + body


def entry(tag, value):
    """One metadata entry: tag u8, length u16, value."""
    if len(value) > 0xFFFF:
        raise ValueError("metadata value over 65 535 bytes")
    return struct.pack(">BH", tag, len(value)) + value


def request_metadata(service, method, timeout_ms=None, attachments=()):
    """SERVICE, METHOD, TIMEOUT (if given) and the attachments."""
    meta = entry(T_SERVICE, service.encode()) + entry(T_METHOD, method.encode())
    if timeout_ms is not None:
        meta += entry(T_TIMEOUT, struct.pack(">I", min(timeout_ms, 0xFFFFFFFF)))
    for key, value in attachments:
        key = key.encode()
        meta += entry(T_ATTACHMENT, bytes([len(key)]) + key + value)
    return meta


def request(request_id, service, method, args, timeout_ms=5000, oneway=False, attachments=()):
    """A request frame: the arguments are a MessagePack array, [] for none."""
    meta = request_metadata(service, method, timeout_ms, attachments)
    return frame(F_ONEWAY if oneway else 0, request_id, meta, packb(list(args)))


def heartbeat(request_id, response=False):
    return frame(F_HEARTBEAT | (F_RESPONSE if response else 0), request_id)


def cancel(request_id):
    return frame(F_EVENT, request_id, status=EVENT_CANCEL)


class ProtocolError(Exception):
    """The stream is broken: the connection must be closed."""


class Frame(object):
    """A decoded frame."""

    def __init__(self, flags, serialization, status, request_id, metadata, body):
        self.flags = flags
        self.serialization = serialization
        self.status = status
        self.request_id = request_id
        self.metadata = metadata
        self.body = body

    def __repr__(self):
        return "Frame(flags=0x%02x, status=%d, id=%d, body=%s)" % (
            self.flags, self.status, self.request_id, self.body.hex())


def recv_exact(sock, n):
    """Exactly `n` bytes, or None if the stream ends first (b"" ends before any byte)."""
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None if chunks else b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(sock, max_frame_len=MAX_FRAME_LEN):
    """The next frame, None at a clean end of stream. Checks the header first."""
    head = recv_exact(sock, HEADER_LEN)
    if head == b"":
        return None
    if head is None:
        raise ProtocolError("stream ended in the middle of a header")
    magic, version, flags, ser, status, reserved, rid, mlen, blen = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError("bad magic %r" % magic)
    if version != VERSION:
        raise ProtocolError("unsupported version %d" % version)
    if flags & 0xF0:
        raise ProtocolError("reserved flag bits in 0x%02x" % flags)
    if reserved:
        raise ProtocolError("reserved header bytes are not zero")
    if HEADER_LEN + mlen + blen > max_frame_len:
        raise ProtocolError("declared frame length %d over %d" % (HEADER_LEN + mlen + blen,
                                                                  max_frame_len))
    rest = recv_exact(sock, mlen + blen) if mlen + blen else b""
    if rest is None or len(rest) != mlen + blen:
        raise ProtocolError("stream ended in the middle of a frame")
    return Frame(flags, ser, status, rid, rest[:mlen], rest[mlen:])


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------


class RpcError(Exception):
    """A call failed; `status` is the response status, None for a local failure."""

    def __init__(self, status, message):
        Exception.__init__(self, "%s: %s" % (STATUS_NAMES.get(status, status), message))
        self.status = status
        self.message = message


class ApplicationError(RpcError):
    """The method returned its own error (status 1); `value` is the decoded E."""

    def __init__(self, value):
        RpcError.__init__(self, 1, repr(value))
        self.value = value


class ConnectionLost(RpcError):
    def __init__(self, message):
        RpcError.__init__(self, None, message)


class Timeout(RpcError):
    def __init__(self, message):
        RpcError.__init__(self, None, message)


class Pending(object):
    """A call sent and not yet answered."""

    def __init__(self, client, request_id, timeout):
        self.client = client
        self.request_id = request_id
        self.deadline = time.monotonic() + timeout
        self.done = threading.Event()
        self.frame = None
        self.error = None

    def result(self):
        """The decoded result; raises RpcError for any other status."""
        left = self.deadline - time.monotonic()
        if not self.done.wait(max(left, 0)):
            self.client._forget(self.request_id)
            raise Timeout("no response to call %d in time" % self.request_id)
        if self.error is not None:
            raise self.error
        f = self.frame
        if f.status == 0:
            return unpackb(f.body)
        if f.status == 1:
            raise ApplicationError(unpackb(f.body))
        try:
            message = unpackb(f.body)
        except (MsgpackError, UnicodeDecodeError):
            message = "(no readable message)"
        raise RpcError(f.status, message)

    def cancel(self):
        """Gives the call up and tells the server (a CANCEL event)."""
        if self.client._forget(self.request_id):
            self.client._send(cancel(self.request_id))


class Client(object):
    """One connection; calls are multiplexed on it by request id."""

    def __init__(self, host, port, heartbeat_interval=10.0, idle_timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.pending = {}
        self.next_id = 0
        self.closed = None
        self.goaway = False
        self.heartbeats_answered = 0
        self.heartbeat_interval = heartbeat_interval
        self.idle_timeout = idle_timeout
        self.last_read = time.monotonic()
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        self.ticker = threading.Thread(target=self._tick_loop, daemon=True)
        self.ticker.start()

    def _send(self, data):
        with self.write_lock:
            self.sock.sendall(data)

    def _forget(self, request_id):
        with self.lock:
            return self.pending.pop(request_id, None) is not None

    def start(self, service, method, args, timeout=5.0, attachments=()):
        """Sends a call; returns its Pending."""
        with self.lock:
            if self.closed:
                raise ConnectionLost(self.closed)
            if self.goaway:
                raise RpcError(9, "the server announced shutdown (GOAWAY)")
            self.next_id += 1
            rid = self.next_id
            pending = Pending(self, rid, timeout)
            self.pending[rid] = pending
        self._send(request(rid, service, method, args, int(timeout * 1000), False, attachments))
        return pending

    def call(self, service, method, args, timeout=5.0, attachments=()):
        """Sends a call and waits for its result."""
        return self.start(service, method, args, timeout, attachments).result()

    def oneway(self, service, method, args, timeout=5.0):
        """Sends a oneway request: no response will come."""
        with self.lock:
            self.next_id += 1
            rid = self.next_id
        self._send(request(rid, service, method, args, int(timeout * 1000), True))

    def ping(self, request_id=1):
        """Sends a heartbeat request."""
        self._send(heartbeat(request_id))

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _read_loop(self):
        reason = "the server closed the connection"
        try:
            while True:
                f = read_frame(self.sock)
                if f is None:
                    break
                self.last_read = time.monotonic()
                if f.flags & F_HEARTBEAT:
                    self.heartbeats_answered += 1
                    continue
                if f.flags & F_EVENT:
                    if f.status == EVENT_GOAWAY:
                        with self.lock:
                            self.goaway = True
                    continue
                if not f.flags & F_RESPONSE:
                    reason = "the server sent a request frame"
                    break
                with self.lock:
                    pending = self.pending.pop(f.request_id, None)
                if pending is not None:  # else: the caller gave up; discard
                    pending.frame = f
                    pending.done.set()
                with self.lock:
                    drained = self.goaway and not self.pending
                if drained:
                    reason = "the server is shutting down"
                    break
        except (OSError, ProtocolError) as e:
            reason = str(e)
        with self.lock:
            self.closed = reason
            waiting = list(self.pending.values())
            self.pending.clear()
        for pending in waiting:
            pending.error = ConnectionLost(reason)
            pending.done.set()
        self.close()

    def _tick_loop(self):
        beat = 0
        while self.closed is None:
            time.sleep(min(self.heartbeat_interval / 2, 1.0))
            quiet = time.monotonic() - self.last_read
            if quiet >= self.idle_timeout:
                self.close()
                return
            if quiet >= self.heartbeat_interval:
                beat += 1
                try:
                    self.ping(beat)
                except OSError:
                    return


# ---------------------------------------------------------------------------
# demo: checks against test.Calculator
# ---------------------------------------------------------------------------

CALC = "test.Calculator"


def demo(host, port):
    failures = []

    def check(name, got, want):
        ok = got == want
        print("%-4s %-44s %r" % ("ok" if ok else "FAIL", name, got))
        if not ok:
            failures.append("%s: got %r, want %r" % (name, got, want))

    def expect_error(name, kind, fn, status=None):
        try:
            got = fn()
        except kind as e:
            if status is None or e.status == status:
                print("ok   %-44s %s" % (name, e))
                return e
            failures.append("%s: status %r, want %r" % (name, e.status, status))
            print("FAIL %-44s %s" % (name, e))
            return e
        failures.append("%s: no error, got %r" % (name, got))
        print("FAIL %-44s no error: %r" % (name, got))
        return None

    c = Client(host, port, heartbeat_interval=0.2, idle_timeout=5.0)
    check("add(2, 3)", c.call(CALC, "add", [2, 3]), 5)
    check("add(-40, 2)", c.call(CALC, "add", [-40, 2]), -38)
    check("add(2**40, 1)", c.call(CALC, "add", [2 ** 40, 1]), 2 ** 40 + 1)
    # Result<T, E>: OK carries the bare T, APPLICATION_ERROR the bare E.
    check("divide(7, 2)", c.call(CALC, "divide", [7, 2]), 3)
    e = expect_error("divide(1, 0)", ApplicationError, lambda: c.call(CALC, "divide", [1, 0]))
    check("divide(1, 0) error value", e and e.value, "DivideByZero")
    e = expect_error("divide(-2**63, -1)", ApplicationError,
                     lambda: c.call(CALC, "divide", [-2 ** 63, -1]))
    check("overflow error value", e and e.value, {"Overflow": {"a": -2 ** 63, "b": -1}})
    # Structs are maps keyed by field name; an f64 field accepts an integer; a String
    # accepts bin.
    mid = c.call(CALC, "midpoint", [{"x": 0.0, "y": 2, "label": "a"},
                                    {"x": 4.0, "y": 4.0, "label": Bin(b"b")}])
    check("midpoint", mid, {"x": 2.0, "y": 3.0, "label": "a-b"})
    check("echo(bin)", c.call(CALC, "echo", [b"\x00\x01\xff"]), b"\x00\x01\xff")
    check("echo(64 KiB)", len(c.call(CALC, "echo", [bytes(65536)])), 65536)
    # A #[oneway] method sent as a plain request runs and is answered OK with nil.
    check("record(5) without ONEWAY", c.call(CALC, "record", [5]), None)
    c.oneway(CALC, "record", [7])
    c.oneway(CALC, "add", [1, 1])  # any method can be sent oneway
    # Multiplexing: a slow call and a fast one; the fast one is answered first.
    slow = c.start(CALC, "sleep", [300])
    fast = c.start(CALC, "add", [1, 2])
    check("fast call answered while slow runs", fast.result(), 3)
    check("slow call not done yet", slow.done.is_set(), False)
    check("sleep(300)", slow.result(), 300)
    # Deadline: the server gives up when the TIMEOUT passes.
    expect_error("sleep(2000) with a 200 ms timeout", RpcError,
                 lambda: c.start(CALC, "sleep", [2000], timeout=0.2).result())
    # Cancel: the server sends nothing for a cancelled call.
    p = c.start(CALC, "sleep", [1000], timeout=5.0)
    p.cancel()
    check("call after a cancel", c.call(CALC, "add", [20, 22]), 42)
    # Errors the server reports with a status and a message string.
    expect_error("unknown method", RpcError, lambda: c.call(CALC, "nope", []), 3)
    expect_error("unknown service", RpcError, lambda: c.call("nope", "add", [1, 2]), 2)
    expect_error("wrong argument count", RpcError, lambda: c.call(CALC, "add", [1]), 4)
    expect_error("zero-argument method given an argument", RpcError,
                 lambda: c.call(CALC, "hits", [1]), 4)
    expect_error("handler panics", RpcError, lambda: c.call(CALC, "explode", []), 7)
    # Heartbeats: the server answers while we are quiet.
    time.sleep(0.6)
    check("heartbeats answered", c.heartbeats_answered > 0, True)
    check("connection still works", c.call(CALC, "add", [0, 0]), 0)
    c.close()
    return failures


# ---------------------------------------------------------------------------
# vectors: docs/test-vectors.json
# ---------------------------------------------------------------------------


def run_vectors(path, host, port):
    with open(path) as f:
        doc = json.load(f)
    failures = []
    for v in doc["vectors"]:
        try:
            problem = run_vector(v, host, port)
        except Exception as e:  # report, go on with the others
            problem = "%s: %s" % (type(e).__name__, e)
        print("%-4s %s" % ("ok" if problem is None else "FAIL", v["name"]))
        if problem is not None:
            failures.append("%s: %s" % (v["name"], problem))
    return failures


def run_vector(v, host, port):
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(b"".join(bytes.fromhex(s) for s in v["send"]))
        got = {}
        for _ in v["replies"]:
            f = read_frame(sock)
            if f is None:
                return "closed before all replies came"
            got[f.request_id] = f
        for want in v["replies"]:
            problem = check_reply(want, got)
            if problem:
                return problem
        if v["then"] == "open":
            sock.sendall(heartbeat(0xABCD))
            f = read_frame(sock)
            if f is None or f.flags != F_HEARTBEAT | F_RESPONSE or f.request_id != 0xABCD:
                return "expected only the heartbeat response, got %r" % (f,)
        else:
            try:
                rest = sock.recv(1)
            except ConnectionResetError:
                rest = b""
            if rest:
                return "expected the connection closed, got more bytes"
    finally:
        sock.close()
    return None


def check_reply(want, got):
    if "frame" in want:
        raw = bytes.fromhex(want["frame"])
        rid = struct.unpack(">Q", raw[8:16])[0]
        f = got.get(rid)
        if f is None:
            return "no reply with id %d" % rid
        whole = frame(f.flags, f.request_id, f.metadata, f.body, f.status, f.serialization)
        if whole != raw:
            return "reply %s, want %s" % (whole.hex(), raw.hex())
        return None
    f = got.get(want["request_id"])
    if f is None:
        return "no reply with id %d" % want["request_id"]
    if (f.flags, f.status) != (want["flags"], want["status"]):
        return "reply flags/status %d/%d, want %d/%d" % (f.flags, f.status, want["flags"],
                                                          want["status"])
    if not isinstance(unpackb(f.body), str):
        return "error body is not a string"
    return None


def main(argv):
    if len(argv) == 3 and argv[1] == "demo":
        host, port = argv[2].rsplit(":", 1)
        failures = demo(host, int(port))
    elif len(argv) == 4 and argv[1] == "vectors":
        host, port = argv[3].rsplit(":", 1)
        failures = run_vectors(argv[2], host, int(port))
    else:
        print(__doc__)
        return 2
    for failure in failures:
        print("FAILED: " + failure)
    print("%s: %d failure(s)" % (argv[1], len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
