//! The wire protocol: frames, their codec, metadata and status codes.
//!
//! `docs/PROTOCOL.md` is the normative description; this module is its implementation.
//! Using the framework never needs it: it is public for the benchmarks, the protocol
//! tests, and anyone checking another implementation's bytes against ours.
//!
//! - [`frame`](self::Frame): the fixed header and the I/O-free parser;
//! - [`FrameCodec`]: the parser as a tokio-util codec with a frame-size cap;
//! - [`metadata`]: the tag-length-value metadata section;
//! - [`Status`] and [`Event`]: response status and event codes;
//! - message building: whole frames written in place, bodies as MessagePack.

mod codec;
mod frame;
mod message;
pub mod metadata;
pub(crate) mod scratch;
mod status;

pub use codec::{BatchFrames, CodecError, FrameCodec, RawFrame};
pub use frame::{
    Flags, Frame, Header, ProtocolError, DEFAULT_MAX_FRAME_LEN, HEADER_LEN, MAGIC, MIN_FRAME_LEN,
    SERIALIZATION_MSGPACK, VERSION,
};
pub use message::{
    encode_args, encode_cancel, encode_event, encode_heartbeat, encode_raw_request,
    encode_raw_response, encode_request, encode_response, encode_response_with, EncodeError,
    RequestTarget, ResponseError,
};
pub use status::{Event, Status};
