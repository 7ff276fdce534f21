//! The token in the OS keychain (the Secret Service on Linux and the BSDs, the Keychain on Apple
//! systems, the Credential Manager on Windows), never in the config file or the inbox. One entry per
//! user and relay.
//!
//! Keychain calls run on a thread of their own, awaited without blocking the caller: with the async
//! Secret Service on tokio, a call made from a runtime thread can deadlock (keyring's documentation,
//! "Tokio runtime caution"), and a keychain may take seconds (an unlock prompt) that must not stall
//! an async worker or the app's main thread.

use wardline_protocol::Sensitive;

const SERVICE: &str = "wardline";

/// Why the keychain failed.
#[derive(Debug, thiserror::Error)]
#[error("OS keychain: {0}")]
pub struct SecretError(String);

fn account(server: &str, user: &str) -> String {
    format!("{user}@{}", server.trim_end_matches('/'))
}

async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
) -> Result<T, SecretError> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .await
        .map_err(|_| SecretError("the keychain call panicked".into()))?
        .map_err(|e| SecretError(e.to_string()))
}

/// Stores the token of `user` at `server`, replacing any earlier one.
pub async fn store_token(
    server: &str,
    user: &str,
    token: &Sensitive<String>,
) -> Result<(), SecretError> {
    let (account, token) = (account(server, user), token.expose().clone());
    on_own_thread(move || keyring::Entry::new(SERVICE, &account)?.set_password(&token)).await
}

/// The stored token of `user` at `server`, if any.
pub async fn load_token(
    server: &str,
    user: &str,
) -> Result<Option<Sensitive<String>>, SecretError> {
    let account = account(server, user);
    on_own_thread(
        move || match keyring::Entry::new(SERVICE, &account)?.get_password() {
            Ok(token) => Ok(Some(Sensitive::new(token))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e),
        },
    )
    .await
}

/// Removes the stored token; removing one that is not there is not an error.
pub async fn delete_token(server: &str, user: &str) -> Result<(), SecretError> {
    let account = account(server, user);
    on_own_thread(
        move || match keyring::Entry::new(SERVICE, &account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(e),
        },
    )
    .await
}
