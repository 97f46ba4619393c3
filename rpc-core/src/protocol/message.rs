//! Building whole frames in place: header, metadata and a MessagePack body written
//! straight into the outgoing buffer, with no intermediate allocation.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::frame::{Flags, Header, ProtocolError, HEADER_LEN, SERIALIZATION_MSGPACK};
use super::metadata::{MetadataWriter, TraceContext};
use super::status::{Event, Status};

/// What goes into a request's metadata section.
#[derive(Debug, Clone, Copy)]
pub struct RequestTarget<'a> {
    /// Service name.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// The caller's timeout, propagated as a deadline.
    pub timeout: Option<Duration>,
    /// Trace context to propagate.
    pub trace: Option<&'a TraceContext>,
    /// Authentication token.
    pub auth_token: Option<&'a [u8]>,
    /// User attachments.
    pub attachments: &'a [(String, Vec<u8>)],
}

/// Why a message could not be encoded. Nothing is left in the buffer when this is
/// returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The value could not be serialized.
    #[error("cannot serialize: {0}")]
    Serialize(#[from] rmp_serde::encode::Error),
    /// The frame would break a protocol limit.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// MessagePack's nil.
const NIL: u8 = 0xc0;
/// MessagePack's empty array (fixarray of length 0).
const EMPTY_ARRAY: u8 = 0x90;

/// Appends a request frame for `args` (the argument tuple; `()` for none) to `dst`.
///
/// # Errors
///
/// If the arguments cannot be serialized, metadata exceeds its limits, or the frame is
/// longer than `max_frame_len`. `dst` is left as it was.
pub fn encode_request<A: Serialize + ?Sized>(
    dst: &mut BytesMut,
    request_id: u64,
    oneway: bool,
    target: &RequestTarget<'_>,
    args: &A,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    encode_request_with(dst, request_id, oneway, target, max_frame_len, |dst| {
        let start = dst.len();
        rmp_serde::encode::write_named(&mut dst.writer(), args)?;
        // The body is the argument array. A method without arguments has `()` as its
        // argument tuple, which serde writes as nil: send the empty array instead.
        if dst.len() == start + 1 && dst[start] == NIL {
            dst[start] = EMPTY_ARRAY;
        }
        Ok(())
    })
}

/// Appends a request frame whose body (the argument array) is already encoded, as
/// [`encode_args`] encodes it: a call sent again (a retry, a forked or hedged copy)
/// costs no second serialization.
///
/// # Errors
///
/// If metadata exceeds its limits or the frame is longer than `max_frame_len`. `dst`
/// is left as it was.
pub fn encode_raw_request(
    dst: &mut BytesMut,
    request_id: u64,
    oneway: bool,
    target: &RequestTarget<'_>,
    body: &[u8],
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    encode_request_with(dst, request_id, oneway, target, max_frame_len, |dst| {
        dst.extend_from_slice(body);
        Ok(())
    })
}

/// Encodes an argument tuple as a request body (what [`encode_request`] puts in the
/// frame).
///
/// # Errors
///
/// If the arguments cannot be serialized.
pub fn encode_args<A: Serialize + ?Sized>(args: &A) -> Result<bytes::Bytes, EncodeError> {
    // Into this thread's scratch chunk: no buffer grown from empty per call.
    let mut body = super::scratch::encode_with(|body| {
        rmp_serde::encode::write_named(&mut body.writer(), args).map_err(EncodeError::from)
    })?;
    if body[..] == [NIL] {
        body[0] = EMPTY_ARRAY;
    }
    Ok(body.freeze())
}

/// The frame around a request body `write_body` appends.
fn encode_request_with(
    dst: &mut BytesMut,
    request_id: u64,
    oneway: bool,
    target: &RequestTarget<'_>,
    max_frame_len: usize,
    write_body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    let result = (|| {
        dst.put_bytes(0, HEADER_LEN);
        let mut meta = MetadataWriter::new(dst);
        meta.target(target.service, target.method)?;
        if let Some(timeout) = target.timeout {
            meta.timeout(timeout);
        }
        if let Some(trace) = target.trace {
            meta.trace(trace);
        }
        if let Some(token) = target.auth_token {
            meta.entry(super::metadata::tag::AUTH_TOKEN, token)?;
        }
        for (key, value) in target.attachments {
            meta.attachment(key, value)?;
        }
        let meta_end = dst.len();
        write_body(dst)?;
        let flags = if oneway {
            Flags::ONEWAY
        } else {
            Flags::empty()
        };
        finish(dst, start, meta_end, flags, 0, request_id, max_frame_len)
    })();
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Appends a response frame whose body is `value` encoded as MessagePack.
///
/// # Errors
///
/// If the value cannot be serialized or the frame is too long; `dst` is left as it was.
pub fn encode_response<T: Serialize + ?Sized>(
    dst: &mut BytesMut,
    request_id: u64,
    status: u8,
    value: &T,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    let result = rmp_serde::encode::write_named(&mut dst.writer(), value)
        .map_err(EncodeError::from)
        .and_then(|()| {
            finish(
                dst,
                start,
                start + HEADER_LEN,
                Flags::RESPONSE,
                status,
                request_id,
                max_frame_len,
            )
        });
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Appends a response frame whose body is already encoded.
///
/// # Errors
///
/// If the frame is too long; `dst` is left as it was.
pub fn encode_raw_response(
    dst: &mut BytesMut,
    request_id: u64,
    status: u8,
    body: &[u8],
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    let start = dst.len();
    dst.reserve(HEADER_LEN + body.len());
    dst.put_bytes(0, HEADER_LEN);
    dst.put_slice(body);
    let result = finish(
        dst,
        start,
        start + HEADER_LEN,
        Flags::RESPONSE,
        status,
        request_id,
        max_frame_len,
    );
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Appends a heartbeat frame (request or response) with no metadata or body.
pub fn encode_heartbeat(dst: &mut BytesMut, request_id: u64, response: bool) {
    let flags = if response {
        Flags::HEARTBEAT.with(Flags::RESPONSE)
    } else {
        Flags::HEARTBEAT
    };
    put_empty(dst, flags, 0, request_id);
}

/// Appends an event frame with no metadata or body.
pub fn encode_event(dst: &mut BytesMut, event: Event) {
    put_empty(dst, Flags::EVENT, event.code(), 0);
}

/// Appends a [`Event::Cancel`] frame for the call with request id `request_id`.
pub fn encode_cancel(dst: &mut BytesMut, request_id: u64) {
    put_empty(dst, Flags::EVENT, Event::Cancel.code(), request_id);
}

fn put_empty(dst: &mut BytesMut, flags: Flags, status: u8, request_id: u64) {
    let mut header = [0u8; HEADER_LEN];
    Header {
        flags,
        serialization: SERIALIZATION_MSGPACK,
        status,
        request_id,
        metadata_len: 0,
        body_len: 0,
    }
    .write_to(&mut header);
    dst.put_slice(&header);
}

/// Appends a response frame whose body `encode_body` writes straight into `dst`, so
/// the result is serialized once, into the buffer that goes to the socket.
///
/// # Errors
///
/// What `encode_body` returns, or a frame longer than `max_frame_len`; `dst` is left
/// as it was.
pub fn encode_response_with<E>(
    dst: &mut BytesMut,
    request_id: u64,
    max_frame_len: usize,
    encode_body: impl FnOnce(&mut BytesMut) -> Result<Status, E>,
) -> Result<Status, ResponseError<E>> {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    let result = match encode_body(dst) {
        Ok(status) => finish(
            dst,
            start,
            start + HEADER_LEN,
            Flags::RESPONSE,
            status.code(),
            request_id,
            max_frame_len,
        )
        .map(|()| status)
        .map_err(ResponseError::Frame),
        Err(e) => Err(ResponseError::Body(e)),
    };
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Why [`encode_response_with`] wrote nothing.
#[derive(Debug)]
pub enum ResponseError<E> {
    /// The body encoder failed.
    Body(E),
    /// The frame breaks a protocol limit.
    Frame(EncodeError),
}

/// Fills in the header of a frame written from `start`, whose metadata ends at
/// `meta_end` and whose body runs to the end of `dst`.
fn finish(
    dst: &mut BytesMut,
    start: usize,
    meta_end: usize,
    flags: Flags,
    status: u8,
    request_id: u64,
    max_frame_len: usize,
) -> Result<(), EncodeError> {
    let total = dst.len() - start;
    if total > max_frame_len {
        return Err(ProtocolError::FrameTooLarge {
            declared: total as u64,
            max: max_frame_len,
        }
        .into());
    }
    let header = Header {
        flags,
        serialization: SERIALIZATION_MSGPACK,
        status,
        request_id,
        // Both fit: total <= max_frame_len, and lengths are checked below u32 by it
        // only when max_frame_len itself fits; use checked conversion regardless.
        metadata_len: u32::try_from(meta_end - start - HEADER_LEN).map_err(|_| {
            ProtocolError::FrameTooLarge {
                declared: total as u64,
                max: max_frame_len,
            }
        })?,
        body_len: u32::try_from(dst.len() - meta_end).map_err(|_| {
            ProtocolError::FrameTooLarge {
                declared: total as u64,
                max: max_frame_len,
            }
        })?,
    };
    let mut bytes = [0u8; HEADER_LEN];
    header.write_to(&mut bytes);
    dst[start..start + HEADER_LEN].copy_from_slice(&bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_frame_is_the_one_in_protocol_md() {
        let mut buf = BytesMut::new();
        encode_cancel(&mut buf, 7);
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let hex: String = buf
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .chunks(8)
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            doc.contains(&hex),
            "PROTOCOL.md lacks the cancel example `{hex}`"
        );
    }
}
