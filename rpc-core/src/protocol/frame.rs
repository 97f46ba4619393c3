//! The frame: a fixed 24-byte header, a metadata section and a body.
//!
//! Parsing here is synchronous and does no I/O; [`super::codec`] wraps it for tokio.
//! The layout (all integers big-endian):
//!
//! ```text
//! offset size field
//!  0     2    magic            0x52 0x50 ("RP")
//!  2     1    version          1
//!  3     1    flags            bit0 response, bit1 oneway, bit2 heartbeat, bit3 event
//!  4     1    serialization    1 = MessagePack
//!  5     1    status           response status, event code, 0 in requests
//!  6     2    reserved         0
//!  8     8    request id
//! 16     4    metadata length
//! 20     4    body length
//! 24     ...  metadata, then body
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = [0x52, 0x50];
/// The protocol version this implementation speaks.
pub const VERSION: u8 = 1;
/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;
/// Default cap on a whole frame (header + metadata + body): 8 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// The smallest maximum frame length a peer may be configured with: every error reply
/// this implementation sends (a status and a short message) fits in it.
pub const MIN_FRAME_LEN: usize = 1024;
/// Serialization id of MessagePack, the default and currently only body encoding.
pub const SERIALIZATION_MSGPACK: u8 = 1;

/// The flags byte of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// Set on responses; clear on requests.
    pub const RESPONSE: Flags = Flags(0x01);
    /// Set on requests whose caller wants no response.
    pub const ONEWAY: Flags = Flags(0x02);
    /// Set on heartbeat frames (request or response), which carry no metadata or body.
    pub const HEARTBEAT: Flags = Flags(0x04);
    /// Set on event frames; the status byte holds the [`super::Event`] code.
    pub const EVENT: Flags = Flags(0x08);
    /// The bits that have a meaning; any other bit set is a protocol error.
    const KNOWN: u8 = 0x0f;

    /// No flag set: a plain request.
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Flags from a raw byte, or `None` if a reserved bit is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Whether every flag in `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the flags of `other` added.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Kind of frame.
    pub flags: Flags,
    /// Body encoding; [`SERIALIZATION_MSGPACK`] is the only one defined.
    pub serialization: u8,
    /// Response status code, event code, or 0 in requests.
    pub status: u8,
    /// Matches a response to its request on a multiplexed connection.
    pub request_id: u64,
    /// Length of the metadata section in bytes.
    pub metadata_len: u32,
    /// Length of the body in bytes.
    pub body_len: u32,
}

impl Header {
    /// Total frame length this header declares, header included. Computed in `u64`
    /// so that no declared length can overflow.
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.metadata_len) + u64::from(self.body_len)
    }

    /// Parses and validates a header from the first [`HEADER_LEN`] bytes of `src`.
    ///
    /// Returns `Ok(None)` when fewer bytes are available. Magic and version are checked
    /// as soon as their bytes are present, so garbage is rejected without waiting for a
    /// whole header.
    ///
    /// # Errors
    ///
    /// Wrong magic, unsupported version, reserved flag bits or reserved bytes set, or a
    /// declared frame length over `max_frame_len`.
    pub fn parse(src: &[u8], max_frame_len: usize) -> Result<Option<Header>, ProtocolError> {
        if src.len() >= 2 && src[..2] != MAGIC {
            return Err(ProtocolError::BadMagic([src[0], src[1]]));
        }
        if src.len() >= 3 && src[2] != VERSION {
            return Err(ProtocolError::UnsupportedVersion(src[2]));
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = Flags::from_bits(src[3]).ok_or(ProtocolError::ReservedFlags(src[3]))?;
        if src[6] != 0 || src[7] != 0 {
            return Err(ProtocolError::ReservedBytes);
        }
        let header = Header {
            flags,
            serialization: src[4],
            status: src[5],
            request_id: u64::from_be_bytes(src[8..16].try_into().expect("8 bytes")),
            metadata_len: u32::from_be_bytes(src[16..20].try_into().expect("4 bytes")),
            body_len: u32::from_be_bytes(src[20..24].try_into().expect("4 bytes")),
        };
        let declared = header.frame_len();
        if declared > max_frame_len as u64 {
            return Err(ProtocolError::FrameTooLarge {
                declared,
                max: max_frame_len,
            });
        }
        Ok(Some(header))
    }

    /// Writes the 24 header bytes into `dst`.
    pub fn write_to(&self, dst: &mut [u8; HEADER_LEN]) {
        dst[0..2].copy_from_slice(&MAGIC);
        dst[2] = VERSION;
        dst[3] = self.flags.bits();
        dst[4] = self.serialization;
        dst[5] = self.status;
        dst[6] = 0;
        dst[7] = 0;
        dst[8..16].copy_from_slice(&self.request_id.to_be_bytes());
        dst[16..20].copy_from_slice(&self.metadata_len.to_be_bytes());
        dst[20..24].copy_from_slice(&self.body_len.to_be_bytes());
    }
}

/// One whole frame. `metadata` and `body` share the receive buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The fixed header; its lengths match `metadata` and `body`.
    pub header: Header,
    /// The raw metadata section; see [`super::metadata`].
    pub metadata: Bytes,
    /// The raw body (MessagePack).
    pub body: Bytes,
}

impl Frame {
    /// A frame with the given header fields; the header's lengths are taken from
    /// `metadata` and `body`.
    ///
    /// # Panics
    ///
    /// If `metadata` or `body` is longer than `u32::MAX` bytes.
    pub fn new(flags: Flags, status: u8, request_id: u64, metadata: Bytes, body: Bytes) -> Frame {
        Frame {
            header: Header {
                flags,
                serialization: SERIALIZATION_MSGPACK,
                status,
                request_id,
                metadata_len: u32::try_from(metadata.len()).expect("metadata over 4 GiB"),
                body_len: u32::try_from(body.len()).expect("body over 4 GiB"),
            },
            metadata,
            body,
        }
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::FrameTooLarge`] if the frame is longer than `max_frame_len`;
    /// nothing is written then.
    /// The header's length fields are taken from `metadata` and `body` themselves, so a
    /// frame whose header disagrees with its contents cannot corrupt the stream.
    pub fn encode(&self, dst: &mut BytesMut, max_frame_len: usize) -> Result<(), ProtocolError> {
        let len = (HEADER_LEN + self.metadata.len()) as u64 + self.body.len() as u64;
        let too_large = ProtocolError::FrameTooLarge {
            declared: len,
            max: max_frame_len,
        };
        if len > max_frame_len as u64 {
            return Err(too_large);
        }
        let header = Header {
            metadata_len: u32::try_from(self.metadata.len()).map_err(|_| too_large.clone())?,
            body_len: u32::try_from(self.body.len()).map_err(|_| too_large.clone())?,
            ..self.header
        };
        let mut bytes = [0u8; HEADER_LEN];
        header.write_to(&mut bytes);
        let header = bytes;
        dst.reserve(len as usize);
        dst.put_slice(&header);
        dst.put_slice(&self.metadata);
        dst.put_slice(&self.body);
        Ok(())
    }
}

/// Why a byte stream is not a valid frame sequence. Any of these ends the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first two bytes are not [`MAGIC`].
    #[error("bad magic bytes {0:02x?}, expected {MAGIC:02x?}")]
    BadMagic([u8; 2]),
    /// The version byte is not [`VERSION`].
    #[error("unsupported protocol version {0}, this peer speaks {VERSION}")]
    UnsupportedVersion(u8),
    /// A reserved flag bit is set.
    #[error("reserved flag bits set in flags byte {0:#04x}")]
    ReservedFlags(u8),
    /// Reserved header bytes 6..8 are not zero.
    #[error("reserved header bytes are not zero")]
    ReservedBytes,
    /// The declared frame length exceeds the configured maximum.
    #[error("declared frame length {declared} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Length the header declared (header included).
        declared: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// A metadata section that does not parse.
    #[error("malformed metadata: {0}")]
    Metadata(String),
    /// A frame that is well-formed but not acceptable in this direction or state.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes() -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        Header {
            flags: Flags::ONEWAY,
            serialization: SERIALIZATION_MSGPACK,
            status: 0,
            request_id: 0x0102_0304_0506_0708,
            metadata_len: 3,
            body_len: 4,
        }
        .write_to(&mut b);
        b
    }

    #[test]
    fn header_round_trips() {
        let b = header_bytes();
        let h = Header::parse(&b, 1024).unwrap().unwrap();
        assert_eq!(h.request_id, 0x0102_0304_0506_0708);
        assert_eq!(h.flags, Flags::ONEWAY);
        assert_eq!(h.frame_len(), 31);
    }

    #[test]
    fn short_input_needs_more() {
        let b = header_bytes();
        for n in 0..HEADER_LEN {
            assert_eq!(Header::parse(&b[..n], 1024), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn bad_magic_is_rejected_from_two_bytes() {
        assert_eq!(
            Header::parse(b"GE", 1024),
            Err(ProtocolError::BadMagic([b'G', b'E']))
        );
    }

    #[test]
    fn wrong_version_is_rejected() {
        let mut b = header_bytes();
        b[2] = 9;
        assert_eq!(
            Header::parse(&b[..3], 1024),
            Err(ProtocolError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn reserved_bits_and_bytes_are_rejected() {
        let mut b = header_bytes();
        b[3] = 0x80;
        assert_eq!(
            Header::parse(&b, 1024),
            Err(ProtocolError::ReservedFlags(0x80))
        );
        let mut b = header_bytes();
        b[7] = 1;
        assert_eq!(Header::parse(&b, 1024), Err(ProtocolError::ReservedBytes));
    }

    #[test]
    fn oversized_declared_length_is_rejected() {
        let mut b = header_bytes();
        b[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        b[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Header::parse(&b, 1024),
            Err(ProtocolError::FrameTooLarge { declared, max: 1024 }) if declared == 24 + 2 * u64::from(u32::MAX)
        ));
    }

    #[test]
    fn encode_refuses_oversized_frame() {
        let frame = Frame::new(
            Flags::empty(),
            0,
            1,
            Bytes::new(),
            Bytes::from(vec![0; 100]),
        );
        let mut dst = BytesMut::new();
        assert!(frame.encode(&mut dst, 50).is_err());
        assert!(dst.is_empty());
    }
}
