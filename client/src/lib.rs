//! Wardline receiver: keeps a subscription to the relay alive, stores every notification in a local
//! SQLite inbox, and reports what happens, so that nothing is ever missed without anyone knowing.
//!
//! Layout:
//! - [`subscription`]: the connection to the relay (reconnect with backoff, resume from cursors,
//!   dead-connection and wake detection, receipts after commit), over a WebSocket (`ws`) or, where
//!   proxies refuse those, Server-Sent Events ([`sse`]);
//! - [`inbox`]: the SQLite inbox (rows and cursors in one transaction, full-text search, receipts
//!   still to send, gaps, status), encrypted at rest with a key from the OS keychain
//!   ([`inbox_key`]); [`inbox_handle`]: how everything else reaches it, off the async workers;
//! - [`http`]: the relay's plain HTTP endpoints (token check, receipts);
//! - [`events`]: the stream of state changes the CLI and the app show;
//! - [`alert`]: which OS alerts to raise, and the desktop alerter;
//! - [`freedesktop`] (Linux, the BSDs): that alerter's D-Bus side, one connection for all alerts;
//! - [`backoff`]: reconnection delays; [`liveness`]: the one deadline that notices a silent link;
//!   [`clock`]: the device's clock against the relay's;
//! - [`tls`]: which relays are trusted (the OS trust store plus a hospital's own CA);
//! - [`secrets`]: the token in the OS keychain; [`config`]: which relay and user (never the token);
//! - [`receiver`]: inbox + subscription + events as an app uses them (the Tauri app's domain);
//! - the `wardline` binary (`src/bin/wardline.rs`): the command line over all of it.
//!
//! No Tauri here: the app is a thin shell over this crate.

pub mod alert;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod events;
#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
pub mod freedesktop;
pub mod http;
pub mod inbox;
pub mod inbox_handle;
pub mod inbox_key;
pub mod liveness;
pub mod private;
pub mod receiver;
pub mod secrets;
pub mod sse;
pub mod subscription;
pub mod tls;
mod ws;

pub use events::{ConnectionState, Event};
pub use inbox::{Filter, Inbox, InboxError, Row};
pub use inbox_handle::InboxHandle;
pub use subscription::{
    Acknowledger, Ended, Options, Subscription, SubscriptionError, TokenHandle,
};
pub use tls::Trust;
