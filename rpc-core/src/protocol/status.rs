//! Response status codes and event codes, as carried in the header's status byte.

use std::fmt;

/// The outcome of a call, carried in byte 5 of every response header.
///
/// The numeric values are part of the wire protocol (see `docs/PROTOCOL.md`) and never
/// change meaning. A receiver that sees a code it does not know treats it like
/// [`Status::InternalError`] and keeps the number for its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The call succeeded; the body is the MessagePack encoding of the result.
    Ok,
    /// The service returned its own error (`Err(e)` of a method returning `Result<T, E>`);
    /// the body is the MessagePack encoding of `e`.
    ApplicationError,
    /// No service with the requested name is hosted at this address.
    ServiceNotFound,
    /// The service exists but has no method with the requested name.
    MethodNotFound,
    /// The request could not be understood: missing or malformed metadata, arguments
    /// that do not decode into the method's parameter types, or an unsupported
    /// serialization id.
    BadRequest,
    /// The server refuses the call because it is at a configured limit.
    Overloaded,
    /// The call's deadline passed on the server before the handler finished.
    Timeout,
    /// The handler panicked or the result could not be encoded.
    InternalError,
    /// The request lacks valid credentials.
    Unauthenticated,
    /// The server is shutting down and does not accept new calls; retry elsewhere.
    ShuttingDown,
    /// A status code this version does not know, kept verbatim.
    Unknown(u8),
}

impl Status {
    /// The status byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::ApplicationError => 1,
            Status::ServiceNotFound => 2,
            Status::MethodNotFound => 3,
            Status::BadRequest => 4,
            Status::Overloaded => 5,
            Status::Timeout => 6,
            Status::InternalError => 7,
            Status::Unauthenticated => 8,
            Status::ShuttingDown => 9,
            Status::Unknown(code) => code,
        }
    }

    /// Maps a status byte from the wire to a status; unknown codes are kept.
    pub const fn from_code(code: u8) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::ApplicationError,
            2 => Status::ServiceNotFound,
            3 => Status::MethodNotFound,
            4 => Status::BadRequest,
            5 => Status::Overloaded,
            6 => Status::Timeout,
            7 => Status::InternalError,
            8 => Status::Unauthenticated,
            9 => Status::ShuttingDown,
            other => Status::Unknown(other),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Status::Ok => "ok",
            Status::ApplicationError => "application error",
            Status::ServiceNotFound => "service not found",
            Status::MethodNotFound => "method not found",
            Status::BadRequest => "bad request",
            Status::Overloaded => "server overloaded",
            Status::Timeout => "deadline exceeded on server",
            Status::InternalError => "internal server error",
            Status::Unauthenticated => "unauthenticated",
            Status::ShuttingDown => "server shutting down",
            Status::Unknown(code) => return write!(f, "unknown status {code}"),
        };
        f.write_str(name)
    }
}

/// Event codes, carried in the status byte of frames with the event flag set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// The server is shutting down gracefully: send no new calls on this connection;
    /// calls already sent will be answered; close the connection once they are.
    GoAway,
    /// Sent by a client: the caller gave up on the call whose request id the frame
    /// carries (it dropped the call's future). The server stops that call's handler if
    /// it is still running and sends no response for it; a cancel for a call it does
    /// not know (finished, never seen, oneway) is ignored.
    Cancel,
    /// An event code this version does not know; receivers ignore it.
    Unknown(u8),
}

impl Event {
    /// The event byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Event::GoAway => 1,
            Event::Cancel => 2,
            Event::Unknown(code) => code,
        }
    }

    /// Maps an event byte from the wire to an event.
    pub const fn from_code(code: u8) -> Event {
        match code {
            1 => Event::GoAway,
            2 => Event::Cancel,
            other => Event::Unknown(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=u8::MAX {
            assert_eq!(Status::from_code(code).code(), code);
            assert_eq!(Event::from_code(code).code(), code);
        }
    }
}
