//! Errors, each with its mapping to the wire: a [`ProtocolError`] becomes a close code, a
//! [`HandshakeError`] an HTTP status. Only [`ConfigError`] reaches the user as an `Err`.

use std::fmt;

/// The peer broke RFC 6455 or RFC 7692, or passed a limit. The connection closes with
/// [`ProtocolError::close_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A reserved bit was set that no extension gives a meaning (§5.2).
    ReservedBits,
    /// An opcode that RFC 6455 reserves (§5.2).
    InvalidOpcode,
    /// A control frame with FIN clear (§5.5).
    FragmentedControl,
    /// A control frame with more than 125 bytes (§5.5).
    ControlTooLong,
    /// A frame from a client without a mask, or from a server with one (§5.1).
    BadMask,
    /// A 64-bit length with the top bit set (§5.2).
    BadLength,
    /// A continuation frame with no message to continue, or a new message inside one (§5.4).
    UnexpectedContinuation,
    /// A data frame while a fragmented message was unfinished (§5.4).
    ExpectedContinuation,
    /// A close frame with a one-byte payload (§5.5.1).
    CloseTooShort,
    /// A close code that may not be sent (§7.4).
    InvalidCloseCode,
    /// Text, or a close reason, that is not UTF-8 (§8.1).
    InvalidUtf8,
    /// A frame larger than `max_frame_len`.
    FrameTooBig,
    /// A message larger than `max_message_len`.
    MessageTooBig,
    /// A compressed message that does not inflate (RFC 7692 §7.2.3).
    BadDeflate,
}

impl ProtocolError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => 1007,
            ProtocolError::FrameTooBig | ProtocolError::MessageTooBig => 1009,
            _ => 1002,
        }
    }

    /// A short lowercase description, also used as the close reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::InvalidOpcode => "reserved opcode",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame over 125 bytes",
            ProtocolError::BadMask => "wrong masking for this role",
            ProtocolError::BadLength => "invalid payload length",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "new message inside a fragmented one",
            ProtocolError::CloseTooShort => "close payload of one byte",
            ProtocolError::InvalidCloseCode => "invalid close code",
            ProtocolError::InvalidUtf8 => "invalid utf-8",
            ProtocolError::FrameTooBig => "frame too big",
            ProtocolError::MessageTooBig => "message too big",
            ProtocolError::BadDeflate => "invalid compressed data",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ProtocolError {}

/// An opening handshake that cannot succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The bytes are not an HTTP/1.1 request or response.
    Malformed(String),
    /// The head passed `max_handshake_len`.
    TooLarge,
    /// Not a GET.
    Method,
    /// A required header is missing or wrong (the name says which).
    Header(&'static str),
    /// `Sec-WebSocket-Version` is not 13.
    Version,
    /// Client side: the server answered with a status other than 101.
    Status(u16),
    /// Client side: `Sec-WebSocket-Accept` does not match the key sent.
    AcceptKey,
    /// Client side: the server chose a subprotocol or extension that was not offered.
    Unrequested(&'static str),
    /// The handshake did not finish within `handshake_timeout_ms`.
    Timeout,
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::TooLarge => 431,
            HandshakeError::Method => 405,
            HandshakeError::Version => 426,
            HandshakeError::Timeout => 408,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(why) => write!(f, "malformed http: {why}"),
            HandshakeError::TooLarge => f.write_str("handshake too large"),
            HandshakeError::Method => f.write_str("method must be GET"),
            HandshakeError::Header(name) => write!(f, "missing or invalid {name} header"),
            HandshakeError::Version => f.write_str("unsupported websocket version, expected 13"),
            HandshakeError::Status(s) => write!(f, "server answered {s}, not 101"),
            HandshakeError::AcceptKey => f.write_str("sec-websocket-accept does not match the key"),
            HandshakeError::Unrequested(what) => write!(f, "server chose an unrequested {what}"),
            HandshakeError::Timeout => f.write_str("handshake timed out"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A configuration value the user chose does not make sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, why: &'static str) -> ConfigError {
        ConfigError { field, why }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}: {}", self.field, self.why)
    }
}

impl std::error::Error for ConfigError {}
