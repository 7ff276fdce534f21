//! Wardline receiver: keeps a subscription to the relay alive, stores every notification in a local
//! SQLite inbox, and reports what happens, so that nothing is ever missed without anyone knowing.
//!
//! The door: [`Wardline`] (where the files are, which relays are trusted, who is signed in: sign-in
//! and sign-out) opens the [`Receiver`] (the inbox, its subscription, receipts, status, alert
//! settings). The command line and the app use these two and the types below, nothing else; every
//! module is private to the crate.
//!
//! Layout (a module uses those listed after it, never one before):
//! - `wardline`: the door; `place`: where the files are (shared by the command line and the app);
//! - `receiver`: inbox + subscription + events as the app and the command line use them;
//!   `listener_lock`: one listener per inbox;
//! - `account`: which relay, user and token a run uses, sign-in and sign-out; `error`: the
//!   receiver's errors and their codes;
//! - `subscription`: the connection to the relay (reconnect with backoff, resume from cursors,
//!   dead-connection and wake detection, receipts after commit, failures of this device), over a
//!   WebSocket (`ws`) or, where proxies refuse those, Server-Sent Events (`sse`);
//! - `desktop_alerter`: OS alerts through the desktop's notification service, over `freedesktop`
//!   (Linux, the BSDs: the D-Bus side) or notify-rust; `alert`: which alerts to raise, and how
//!   they read (no I/O);
//! - `inbox`: the SQLite inbox (rows and cursors in one transaction, full-text search, receipts
//!   still to send, gaps, status), encrypted at rest with a key from the OS keychain
//!   (`inbox_key`); `inbox_handle`: how everything else reaches it, off the async workers;
//! - `http`: the relay's plain HTTP endpoints (token check, receipts, trails);
//! - `events`: the stream of state changes the CLI and the app show;
//! - `backoff`: reconnection delays; `liveness`: the one deadline that notices a silent link;
//!   `clock`: the device's clock against the relay's;
//! - `tls`: which relays are trusted (the OS trust store plus a hospital's own CA);
//! - `secrets`: the token in the OS keychain; `config`: which relay and user (never the token);
//!   `private`: files and directories of the user's alone;
//! - the `wardline` binary (`src/bin/wardline.rs`): the command line over the door.
//!
//! No Tauri here: the app is a thin shell over this crate.

mod account;
mod alert;
mod backoff;
mod clock;
mod config;
mod desktop_alerter;
mod error;
mod events;
#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
mod freedesktop;
mod http;
mod inbox;
mod inbox_handle;
mod inbox_key;
mod listener_lock;
mod liveness;
mod place;
mod private;
mod receiver;
mod secrets;
mod sse;
mod subscription;
mod tls;
mod wardline;
mod ws;

pub use account::{Account, SignedIn, relay_url};
pub use alert::{
    ACKNOWLEDGE_ACTION, Alert, AlertAction, AlertSettings, Alerter, DECLINE_ACTION, MORNING_HOUR,
    NotificationRef, OPEN_ACTION, Pause, QuietHours, Urgency,
};
pub use error::ReceiverError;
pub use events::{ConnectionState, Event};
pub use inbox::{Counts, Filter, Gap, Inbox, InboxError, Row, now_ms};
pub use inbox_key::key_file;
pub use place::Place;
pub use receiver::{Alerts, Listener, Receipted, Receiver, Status, Told};
pub use secrets::SecretError;
pub use subscription::Acknowledgement;
pub use tls::Trust;
pub use wardline::Wardline;
