//! Wardline's wire types, shared by the relay (`wardline-relay`) and the receiver.
//!
//! No I/O lives here, only the vocabulary both sides must agree on:
//! - [`channel`]: channel names (`doctor:{id}:notifications`, …) and which ones a role reads by default;
//! - [`cursor`]: a position in one channel's history (`<ms>-<seq>`, a Redis stream id);
//! - [`message`]: priorities and HealthHub's notification types, with readable titles and bodies;
//! - [`frame`]: the `wardline.v1` WebSocket frames and the Diagnoxix frame shape;
//! - [`error`]: stable numeric error codes and WebSocket close codes;
//! - [`sensitive`]: `Sensitive<T>`, which keeps secrets out of `Debug` and logs.
//!
//! The protocol is documented with an example of every frame in `protocol/README.md`.

pub mod channel;
pub mod clock;
pub mod cursor;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
pub mod sensitive;

pub use channel::{Channel, ChannelError, ChannelKind, Role};
pub use clock::now_ms;
pub use cursor::{Cursor, CursorError};
pub use error::{ErrorCode, Reconnect, close};
pub use frame::{
    ClientFrame, FrameError, Notification, ReceiptKind, ServerFrame, SubscribeChannel,
};
pub use message::Priority;
pub use sensitive::Sensitive;

/// The WebSocket subprotocol of Wardline's envelope protocol.
pub const SUBPROTOCOL_V1: &str = "wardline.v1";
/// The WebSocket subprotocol a browser names to get raw frames, as HealthHub's clients read them, while it passes its
/// token as a `bearer.<jwt>` subprotocol (browsers cannot set headers on a WebSocket).
pub const SUBPROTOCOL_RAW: &str = "wardline.raw";
/// Prefix of the subprotocol entry that carries a token.
pub const SUBPROTOCOL_BEARER_PREFIX: &str = "bearer.";
/// Largest inbound frame the relay accepts, in bytes.
pub const MAX_INBOUND_FRAME_BYTES: usize = 64 * 1024;
