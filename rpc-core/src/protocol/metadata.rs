//! The metadata section: a sequence of tag-length-value entries.
//!
//! Each entry is `tag: u8`, `length: u16` (big-endian), then `length` bytes of value.
//! Receivers skip tags they do not know, so new tags can be added without a version
//! bump. Requests must carry [`tag::SERVICE`] and [`tag::METHOD`]; responses and
//! heartbeats usually carry nothing.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// The metadata tags defined by protocol version 1.
pub mod tag {
    /// Service name, UTF-8. Required in requests.
    pub const SERVICE: u8 = 0x01;
    /// Method name, UTF-8. Required in requests.
    pub const METHOD: u8 = 0x02;
    /// How long the caller will wait for the response, `u32` big-endian milliseconds.
    /// The server gives up on the call (status `Timeout`) once it has passed.
    pub const TIMEOUT: u8 = 0x03;
    /// Trace id, 16 bytes.
    pub const TRACE_ID: u8 = 0x04;
    /// Span id of the caller's span, 8 bytes.
    pub const SPAN_ID: u8 = 0x05;
    /// Authentication token, opaque bytes.
    pub const AUTH_TOKEN: u8 = 0x06;
    /// A user attachment: `key_len: u8`, `key` (UTF-8), then the value (the rest).
    pub const ATTACHMENT: u8 = 0x07;
    /// Trace flags, 1 byte (W3C trace context: bit 0 = sampled). Absent means 0.
    pub const TRACE_FLAGS: u8 = 0x08;
}

/// Trace context carried with a call (the Dapper model: one trace id for the whole
/// request tree, one span id per hop), with the fields of a W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// Identifies the whole trace.
    pub trace_id: [u8; 16],
    /// Identifies the caller's span.
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 (`0x01`) means sampled.
    pub flags: u8,
}

impl TraceContext {
    /// The W3C "sampled" flag.
    pub const SAMPLED: u8 = 0x01;

    /// A new trace: random trace and span ids, sampled.
    pub fn new_root() -> TraceContext {
        use rand::RngCore as _;
        with_id_rng(|rng| {
            let mut trace_id = [0u8; 16];
            // All-zero ids are invalid in W3C trace context.
            while trace_id == [0; 16] {
                trace_id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                trace_id[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            TraceContext {
                trace_id,
                span_id: new_span_id(rng),
                flags: TraceContext::SAMPLED,
            }
        })
    }

    /// A span in the same trace with a new random span id (whose parent is this one).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: with_id_rng(new_span_id),
            flags: self.flags,
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The W3C `traceparent` header value: `00-{trace id}-{span id}-{flags}`.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.span_id_hex(),
            self.flags
        )
    }

    /// Parses a W3C `traceparent` (version 00); `None` if it is malformed or has an
    /// all-zero id.
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        unhex(trace, &mut trace_id)?;
        unhex(span, &mut span_id)?;
        let mut flag = [0u8; 1];
        unhex(flags, &mut flag)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: flag[0],
        })
    }
}

thread_local! {
    /// The generator of trace and span ids on this thread: seeded once from the
    /// operating system, then a few nanoseconds per id (`thread_rng` reseeds a
    /// ChaCha generator and costs several times that; ids need to be unpredictable
    /// enough not to collide, not secret).
    static ID_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_entropy());
}

/// Runs `f` with this thread's id generator.
fn with_id_rng<R>(f: impl FnOnce(&mut rand::rngs::SmallRng) -> R) -> R {
    ID_RNG.with(|rng| f(&mut rng.borrow_mut()))
}

/// A random, non-zero span id.
fn new_span_id(rng: &mut impl rand::RngCore) -> [u8; 8] {
    // One word from the generator (`fill` on a byte array goes through a generic
    // byte-filling loop).
    loop {
        let id = rng.next_u64();
        if id != 0 {
            return id.to_le_bytes();
        }
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes exactly `out.len()` bytes of lowercase hex from `text`.
fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    let text = text.as_bytes();
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Appends metadata entries to a buffer.
#[derive(Debug)]
pub struct MetadataWriter<'a> {
    /// The frame buffer being written; entries are appended at its end.
    dst: &'a mut BytesMut,
}

impl<'a> MetadataWriter<'a> {
    /// A writer appending to `dst`.
    pub fn new(dst: &'a mut BytesMut) -> Self {
        MetadataWriter { dst }
    }

    /// Appends one entry.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Metadata`] if `value` is longer than 65 535 bytes.
    pub fn entry(&mut self, tag: u8, value: &[u8]) -> Result<(), ProtocolError> {
        let len = u16::try_from(value.len()).map_err(|_| {
            ProtocolError::Metadata(format!(
                "entry {tag:#04x} is {} bytes, the limit is 65535",
                value.len()
            ))
        })?;
        let [hi, lo] = len.to_be_bytes();
        // Two appends, not one per field: each `put_*` checks capacity and copies.
        self.dst.reserve(3 + value.len());
        self.dst.put_slice(&[tag, hi, lo]);
        self.dst.put_slice(value);
        Ok(())
    }

    /// Appends the service and method names.
    ///
    /// # Errors
    ///
    /// If either name is longer than 65 535 bytes.
    pub fn target(&mut self, service: &str, method: &str) -> Result<(), ProtocolError> {
        self.entry(tag::SERVICE, service.as_bytes())?;
        self.entry(tag::METHOD, method.as_bytes())
    }

    /// Appends the caller's timeout, saturating at `u32::MAX` milliseconds.
    pub fn timeout(&mut self, timeout: Duration) {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let [a, b, c, d] = ms.to_be_bytes();
        self.dst.put_slice(&[tag::TIMEOUT, 0, 4, a, b, c, d]);
    }

    /// Appends the trace context (the flags only when not zero).
    pub fn trace(&mut self, trace: &TraceContext) {
        // The three entries assembled on the stack and appended at once.
        let mut entries = [0u8; 3 + 16 + 3 + 8 + 4];
        entries[..3].copy_from_slice(&[tag::TRACE_ID, 0, 16]);
        entries[3..19].copy_from_slice(&trace.trace_id);
        entries[19..22].copy_from_slice(&[tag::SPAN_ID, 0, 8]);
        entries[22..30].copy_from_slice(&trace.span_id);
        let len = if trace.flags != 0 {
            entries[30..].copy_from_slice(&[tag::TRACE_FLAGS, 0, 1, trace.flags]);
            entries.len()
        } else {
            30
        };
        self.dst.put_slice(&entries[..len]);
    }

    /// Appends a user attachment.
    ///
    /// # Errors
    ///
    /// If the key is longer than 255 bytes or key and value together exceed the entry
    /// limit.
    pub fn attachment(&mut self, key: &str, value: &[u8]) -> Result<(), ProtocolError> {
        let key_len = u8::try_from(key.len()).map_err(|_| {
            ProtocolError::Metadata(format!(
                "attachment key is {} bytes, the limit is 255",
                key.len()
            ))
        })?;
        let total = 1 + key.len() + value.len();
        let len = u16::try_from(total).map_err(|_| {
            ProtocolError::Metadata(format!(
                "attachment `{key}` is {total} bytes, the limit is 65535"
            ))
        })?;
        self.dst.reserve(3 + total);
        self.dst.put_u8(tag::ATTACHMENT);
        self.dst.put_u16(len);
        self.dst.put_u8(key_len);
        self.dst.put_slice(key.as_bytes());
        self.dst.put_slice(value);
        Ok(())
    }
}

/// Iterates over the raw `(tag, value)` entries of a metadata section.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    /// What is left to parse.
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Entries of `section`.
    pub fn new(section: &'a [u8]) -> Self {
        Entries { rest: section }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u8, &'a [u8]), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 3 {
            self.rest = &[];
            return Some(Err(truncated_header()));
        }
        let tag = self.rest[0];
        let len = usize::from(u16::from_be_bytes([self.rest[1], self.rest[2]]));
        if self.rest.len() < 3 + len {
            self.rest = &[];
            return Some(Err(overrun(tag, len)));
        }
        let value = &self.rest[3..3 + len];
        self.rest = &self.rest[3 + len..];
        Some(Ok((tag, value)))
    }
}

/// A section that ends inside an entry's header.
fn truncated_header() -> ProtocolError {
    ProtocolError::Metadata("truncated entry header".into())
}

/// An entry (`tag`) whose declared length (`len`) runs past the section's end.
fn overrun(tag: u8, len: usize) -> ProtocolError {
    ProtocolError::Metadata(format!(
        "entry {tag:#04x} declares {len} bytes but the section ends first"
    ))
}

/// The metadata of a request, borrowed from the frame.
#[derive(Debug, Clone)]
pub struct RequestMeta<'a> {
    /// Target service name.
    pub service: &'a str,
    /// Target method name.
    pub method: &'a str,
    /// How long the caller waits, if it said.
    pub timeout: Option<Duration>,
    /// Trace context, if the caller sent one.
    pub trace: Option<TraceContext>,
    /// Authentication token, if any.
    pub auth_token: Option<&'a [u8]>,
    /// The whole section, for iterating over attachments; empty when it has none
    /// (so that a request without attachments is walked once, when parsed).
    section: &'a [u8],
}

impl<'a> RequestMeta<'a> {
    /// Parses a request's metadata section without copying.
    ///
    /// # Errors
    ///
    /// Truncated entries, names that are not UTF-8, fixed-size values of the wrong
    /// size, or a missing service or method.
    pub fn parse(section: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut service = None;
        let mut method = None;
        let mut timeout = None;
        let mut trace_id = None;
        let mut span_id = None;
        let mut auth_token = None;
        let mut flags = 0;
        let mut attachments = false;
        // The entries walked in place (as `Entries` does, without an `Option<Result>`
        // per entry): this runs for every request.
        let mut rest = section;
        while let [tag, hi, lo, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            let Some(value) = tail.get(..len) else {
                return Err(overrun(*tag, len));
            };
            rest = &tail[len..];
            match *tag {
                tag::SERVICE => service = Some(utf8(value, "service")?),
                tag::METHOD => method = Some(utf8(value, "method")?),
                tag::TIMEOUT => {
                    let ms: [u8; 4] = value
                        .try_into()
                        .map_err(|_| ProtocolError::Metadata("timeout is not 4 bytes".into()))?;
                    let ms = u32::from_be_bytes(ms);
                    if ms > 0 {
                        timeout = Some(Duration::from_millis(u64::from(ms)));
                    }
                }
                tag::TRACE_ID => {
                    trace_id =
                        Some(<[u8; 16]>::try_from(value).map_err(|_| {
                            ProtocolError::Metadata("trace id is not 16 bytes".into())
                        })?);
                }
                tag::SPAN_ID => {
                    span_id =
                        Some(<[u8; 8]>::try_from(value).map_err(|_| {
                            ProtocolError::Metadata("span id is not 8 bytes".into())
                        })?);
                }
                tag::AUTH_TOKEN => auth_token = Some(value),
                tag::TRACE_FLAGS => {
                    let [f] = <[u8; 1]>::try_from(value).map_err(|_| {
                        ProtocolError::Metadata("trace flags are not 1 byte".into())
                    })?;
                    flags = f;
                }
                tag::ATTACHMENT => {
                    parse_attachment(value)?;
                    attachments = true;
                }
                _ => {}
            }
        }
        if !rest.is_empty() {
            return Err(truncated_header());
        }
        let trace = match (trace_id, span_id) {
            (Some(trace_id), Some(span_id)) => Some(TraceContext {
                trace_id,
                span_id,
                flags,
            }),
            _ => None,
        };
        Ok(RequestMeta {
            service: service.ok_or_else(|| ProtocolError::Metadata("no service name".into()))?,
            method: method.ok_or_else(|| ProtocolError::Metadata("no method name".into()))?,
            timeout,
            trace,
            auth_token,
            section: if attachments { section } else { &[] },
        })
    }

    /// The user attachments, in the order they were sent.
    pub fn attachments(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        Entries::new(self.section).filter_map(|entry| match entry {
            Ok((tag::ATTACHMENT, value)) => parse_attachment(value).ok(),
            _ => None,
        })
    }
}

fn utf8<'a>(value: &'a [u8], what: &str) -> Result<&'a str, ProtocolError> {
    std::str::from_utf8(value)
        .map_err(|_| ProtocolError::Metadata(format!("{what} name is not UTF-8")))
}

fn parse_attachment(value: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let (&key_len, rest) = value
        .split_first()
        .ok_or_else(|| ProtocolError::Metadata("empty attachment entry".into()))?;
    let key_len = usize::from(key_len);
    if rest.len() < key_len {
        return Err(ProtocolError::Metadata(
            "attachment key runs past its entry".into(),
        ));
    }
    let key = std::str::from_utf8(&rest[..key_len])
        .map_err(|_| ProtocolError::Metadata("attachment key is not UTF-8".into()))?;
    Ok((key, &rest[key_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_values() {
        let trace = TraceContext::new_root();
        let text = trace.traceparent();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceContext::from_traceparent(&text), Some(trace));
        let known = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::from_traceparent(known).unwrap();
        assert_eq!(parsed.traceparent(), known);
        assert_eq!(parsed.flags, TraceContext::SAMPLED);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
        let child = trace.child();
        assert_eq!(child.trace_id, trace.trace_id);
        assert_ne!(child.span_id, trace.span_id);
    }

    #[test]
    fn request_meta_round_trips() {
        let mut buf = BytesMut::new();
        let mut w = MetadataWriter::new(&mut buf);
        w.target("Greeter", "greet").unwrap();
        w.timeout(Duration::from_millis(1500));
        let trace = TraceContext {
            trace_id: [7; 16],
            span_id: [9; 8],
            flags: TraceContext::SAMPLED,
        };
        w.trace(&trace);
        w.entry(tag::AUTH_TOKEN, b"secret").unwrap();
        w.attachment("tenant", b"acme").unwrap();
        w.entry(0x7f, b"from the future").unwrap();
        let meta = RequestMeta::parse(&buf).unwrap();
        assert_eq!(meta.service, "Greeter");
        assert_eq!(meta.method, "greet");
        assert_eq!(meta.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(meta.trace, Some(trace));
        assert_eq!(meta.auth_token, Some(&b"secret"[..]));
        assert_eq!(
            meta.attachments().collect::<Vec<_>>(),
            vec![("tenant", &b"acme"[..])]
        );
    }

    #[test]
    fn missing_method_is_an_error() {
        let mut buf = BytesMut::new();
        MetadataWriter::new(&mut buf)
            .entry(tag::SERVICE, b"Greeter")
            .unwrap();
        assert!(RequestMeta::parse(&buf).is_err());
    }

    #[test]
    fn truncated_entry_is_an_error() {
        assert!(RequestMeta::parse(&[tag::SERVICE, 0, 10, b'a']).is_err());
        assert!(RequestMeta::parse(&[tag::SERVICE, 0]).is_err());
    }
}
