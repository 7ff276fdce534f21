//! `ReceiverError`: why an operation of the receiver failed, with a stable code for the window
//! (`{code, message}`) and the command line's exit codes.

use crate::http::TokenCheckError;
use crate::inbox::InboxError;
use crate::secrets::SecretError;
use std::path::PathBuf;

/// Why a receiver operation failed, with a stable code for the UI.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// The relay refused the token or could not be reached at sign-in.
    #[error("{0}")]
    SignIn(String),
    /// The OS keychain failed.
    #[error(transparent)]
    Keychain(#[from] SecretError),
    /// Not signed in: no relay and user given or remembered.
    #[error(
        "not signed in: sign in first (`wardline login --server URL --user ID`), or give the relay and user (--server, --user; WARDLINE_SERVER, WARDLINE_USER)"
    )]
    NotSignedIn,
    /// No token for the account: neither in the environment nor in the keychain.
    #[error("not signed in as {user} at {server}: run `wardline login` (or set WARDLINE_TOKEN)")]
    NoToken {
        /// The relay.
        server: String,
        /// The user.
        user: String,
    },
    /// The relay refused the token, or it expired: sign in again.
    #[error("{0}")]
    TokenRefused(String),
    /// The relay's certificate cannot be trusted.
    #[error("{0}")]
    Untrusted(String),
    /// No inbox yet where one was expected.
    #[error("no inbox yet at {}: run `wardline listen` first (it makes the inbox and fills it)", .0.display())]
    NoInbox(PathBuf),
    /// The settings file could not be read or written.
    #[error("settings: {0}")]
    Settings(String),
    /// The relay could not answer (unreachable, or it refused the request).
    #[error("{0}")]
    Relay(String),
}

impl ReceiverError {
    /// A stable code for the UI.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiverError::Inbox(_) => "inbox",
            ReceiverError::SignIn(_) => "sign_in",
            ReceiverError::Keychain(_) => "keychain",
            ReceiverError::NotSignedIn | ReceiverError::NoToken { .. } => "not_signed_in",
            ReceiverError::TokenRefused(_) => "token_refused",
            ReceiverError::Untrusted(_) => "untrusted",
            ReceiverError::NoInbox(_) => "no_inbox",
            ReceiverError::Settings(_) => "settings",
            ReceiverError::Relay(_) => "relay",
        }
    }
}

impl From<TokenCheckError> for ReceiverError {
    fn from(e: TokenCheckError) -> ReceiverError {
        match e {
            TokenCheckError::Expired | TokenCheckError::Refused { .. } => {
                ReceiverError::TokenRefused(e.to_string())
            }
            TokenCheckError::Untrusted(reason) => ReceiverError::Untrusted(reason),
            TokenCheckError::Unreachable(reason) => ReceiverError::SignIn(reason),
        }
    }
}
