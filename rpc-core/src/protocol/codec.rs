//! [`FrameCodec`]: the frame parser wrapped as a tokio-util `Decoder`/`Encoder`.

use std::io;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{Frame, Header, ProtocolError, DEFAULT_MAX_FRAME_LEN, HEADER_LEN};

/// Decodes and encodes [`Frame`]s, enforcing a maximum frame length in both directions.
///
/// Follows the `Decoder` contract: `Ok(None)` means more bytes are needed, `Err` means
/// the stream is corrupt and the connection must end. The declared length is checked
/// against the maximum before any memory is reserved, so a peer cannot make us allocate
/// more than `max_frame_len` bytes with a lying header.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Largest frame accepted or produced, header included.
    max_frame_len: usize,
    /// Header of the frame whose body is still arriving, so it is parsed once.
    pending: Option<Header>,
}

impl FrameCodec {
    /// A codec with the given maximum frame length.
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len,
            pending: None,
        }
    }

    /// The maximum frame length.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Takes the whole frames at the front of `src` out as one buffer (one
    /// reference-counted split per read, not one per frame), leaving a trailing partial
    /// frame in `src`, which grows to exactly that frame's length if it must (as in
    /// [`peek`](FrameCodec::peek)). Frames in the batch lie back to back: a header,
    /// metadata and body each, as [`Header::parse`] reads them.
    ///
    /// A malformed header after the whole frames is returned as the error, alongside
    /// the frames before it: handle those, then end the stream.
    pub fn split_frames(&mut self, src: &mut BytesMut) -> (Option<Bytes>, Option<CodecError>) {
        let mut whole = 0;
        let mut partial = None;
        let mut error = None;
        loop {
            let rest = &src[whole..];
            match Header::parse(rest, self.max_frame_len) {
                Ok(Some(header)) if rest.len() >= header.frame_len() as usize => {
                    whole += header.frame_len() as usize;
                }
                Ok(Some(header)) => {
                    partial = Some(header);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.into());
                    break;
                }
            }
        }
        let batch = (whole > 0).then(|| src.split_to(whole).freeze());
        self.pending = partial;
        if let Some(header) = partial {
            grow_to_frame(src, &header);
        }
        (batch, error)
    }

    /// Checks whether a whole frame sits at the front of `src` without taking it out:
    /// returns its header, and the frame is `src[..header.frame_len()]` (metadata from
    /// [`HEADER_LEN`], then the body). The caller advances `src` past it when done.
    /// This lets a server handle frames straight from its read buffer, with no
    /// reference-counted slices.
    ///
    /// # Errors
    ///
    /// As [`Decoder::decode`]: the stream is corrupt and must end.
    #[inline]
    pub fn peek(&mut self, src: &mut BytesMut) -> Result<Option<Header>, CodecError> {
        let header = match self.pending {
            Some(header) => header,
            None => match Header::parse(src, self.max_frame_len)? {
                Some(header) => header,
                None => return Ok(None),
            },
        };
        // Bounded by max_frame_len, which Header::parse checked.
        let total = header.frame_len() as usize;
        if src.len() < total {
            self.pending = Some(header);
            grow_to_frame(src, &header);
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(header))
    }

    /// Makes room in `buf` for the next read: while a frame is partly received the
    /// decoder has already sized the buffer for exactly that frame, so nothing is added;
    /// otherwise at least `chunk / 4` bytes are made free, reserving `chunk`.
    /// Keeps a peer from growing the buffer past the frame cap.
    pub fn reserve_for_read(&self, buf: &mut BytesMut, chunk: usize) {
        let spare = buf.capacity() - buf.len();
        if spare >= chunk / 4 {
            return;
        }
        match self.pending {
            Some(header) if buf.capacity() >= header.frame_len() as usize => {}
            _ => buf.reserve(chunk),
        }
    }
}

/// Makes `src`, holding the start of the frame `header` describes, able to hold the
/// whole frame: exactly that much, because `reserve` may double the buffer, which would
/// let a peer make us hold twice the frame cap.
fn grow_to_frame(src: &mut BytesMut, header: &Header) {
    // Bounded by max_frame_len, which Header::parse checked.
    let total = header.frame_len() as usize;
    if src.capacity() < total {
        let mut exact = BytesMut::with_capacity(total);
        exact.extend_from_slice(src);
        *src = exact;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_LEN)
    }
}

/// Error of [`FrameCodec`]: the bytes were not a valid frame, or I/O failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent something that is not a valid frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Reading or writing the socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(header) = self.peek(src)? else {
            return Ok(None);
        };
        let mut frame = src.split_to(header.frame_len() as usize).freeze();
        let _ = frame.split_to(HEADER_LEN);
        let metadata = frame.split_to(header.metadata_len as usize);
        Ok(Some(Frame {
            header,
            metadata,
            body: frame,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated(src.len()).into()),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst, self.max_frame_len)?;
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst, self.max_frame_len)?;
        Ok(())
    }
}

/// One frame of a batch from [`FrameCodec::split_frames`], borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// The parsed header.
    pub header: Header,
    /// The metadata section.
    pub metadata: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

/// The frames of a batch from [`FrameCodec::split_frames`], in order: the slicing of a
/// batch lives here, beside the parser that checked it.
#[derive(Debug, Clone)]
pub struct BatchFrames<'a> {
    /// The batch: whole frames back to back.
    batch: &'a [u8],
}

impl<'a> BatchFrames<'a> {
    /// The frames of `batch`, which [`FrameCodec::split_frames`] returned (so every
    /// header in it is valid and every frame whole).
    pub fn new(batch: &'a [u8]) -> Self {
        BatchFrames { batch }
    }
}

impl<'a> Iterator for BatchFrames<'a> {
    type Item = RawFrame<'a>;

    fn next(&mut self) -> Option<RawFrame<'a>> {
        // The headers were checked against the frame cap when the batch was split;
        // anything short or malformed (only a batch from elsewhere) ends the iteration.
        let header = Header::parse(self.batch, usize::MAX).ok()??;
        let len = usize::try_from(header.frame_len()).ok()?;
        let frame = self.batch.get(..len)?;
        self.batch = &self.batch[len..];
        let (metadata, body) = frame[HEADER_LEN..].split_at(header.metadata_len as usize);
        Some(RawFrame {
            header,
            metadata,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Flags;

    fn sample() -> Frame {
        Frame::new(
            Flags::empty(),
            0,
            42,
            Bytes::from_static(b"\x01\x00\x01S"),
            Bytes::from_static(b"\x91\x01"),
        )
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        codec.encode(sample(), &mut wire).unwrap();
        let mut src = BytesMut::new();
        let mut out = None;
        for (i, b) in wire.iter().enumerate() {
            src.extend_from_slice(&[*b]);
            if let Some(frame) = codec.decode(&mut src).unwrap() {
                assert_eq!(i, wire.len() - 1);
                out = Some(frame);
            }
        }
        assert_eq!(out, Some(sample()));
        assert!(src.is_empty());
    }

    #[test]
    fn decodes_several_frames_from_one_buffer() {
        let mut codec = FrameCodec::default();
        let mut src = BytesMut::new();
        for _ in 0..3 {
            codec.encode(sample(), &mut src).unwrap();
        }
        for _ in 0..3 {
            assert_eq!(codec.decode(&mut src).unwrap(), Some(sample()));
        }
        assert_eq!(codec.decode(&mut src).unwrap(), None);
    }

    #[test]
    fn truncated_stream_is_an_error_at_eof() {
        let mut codec = FrameCodec::default();
        let mut src = BytesMut::new();
        codec.encode(sample(), &mut src).unwrap();
        src.truncate(src.len() - 1);
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(CodecError::Protocol(ProtocolError::Truncated(_)))
        ));
    }

    #[test]
    fn oversized_header_reserves_nothing() {
        let mut codec = FrameCodec::new(1024);
        let mut header = [0u8; HEADER_LEN];
        let mut h = sample().header;
        h.body_len = 1 << 30;
        h.write_to(&mut header);
        let mut src = BytesMut::from(&header[..]);
        let before = src.capacity();
        assert!(codec.decode(&mut src).is_err());
        assert_eq!(src.capacity(), before);
    }
}
