//! The inbox's encryption key: the inbox holds patients' names and results, so it is encrypted at
//! rest (SQLCipher, AES-256) with a random 256-bit key kept in the OS keychain, one entry per inbox
//! file. A copy of the file (a backup, a stolen disk) is unreadable without that entry.
//!
//! Where the key comes from, in order: `WARDLINE_INBOX_KEY` (64 hex digits: a server or a test
//! that manages its own), the keychain entry, then a key file beside the inbox (`<inbox>.key`,
//! readable by the user alone) where a machine has no keychain (a headless server: the inbox is
//! still encrypted, but its key sits next to it, and a warning says so). A new key goes to the
//! keychain, or to the key file when there is none. An inbox whose key is found nowhere is never
//! replaced: opening it fails and says why.
//!
//! Keychain calls run on a thread of their own (see [`crate::secrets`]): this is called from the
//! blocking threads that open the inbox, never from an async worker.

use std::path::{Path, PathBuf};
use wardline_protocol::Sensitive;

const SERVICE: &str = "wardline-inbox";

/// The environment variable that gives the key directly.
pub const KEY_ENV: &str = "WARDLINE_INBOX_KEY";

/// A 256-bit key, as 64 lowercase hex digits.
#[derive(Clone)]
pub struct InboxKey(Sensitive<String>);

impl std::fmt::Debug for InboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InboxKey(…)")
    }
}

impl InboxKey {
    /// A new random key.
    pub fn random() -> InboxKey {
        let bytes: [u8; 32] = rand::random();
        InboxKey(Sensitive::new(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        ))
    }

    /// A key given as 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<InboxKey, String> {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an inbox key is 64 hex digits".into());
        }
        Ok(InboxKey(Sensitive::new(hex)))
    }

    /// The key as SQLCipher takes a raw key: `x'<hex>'` (no key derivation: it is random already).
    pub(crate) fn sql_literal(&self) -> String {
        format!("\"x'{}'\"", self.0.expose())
    }

    fn hex(&self) -> &str {
        self.0.expose()
    }
}

/// Where a key was found (or put).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `WARDLINE_INBOX_KEY`.
    Environment,
    /// The OS keychain.
    Keychain,
    /// The key file beside the inbox (no keychain on this machine).
    File(PathBuf),
}

/// Why no key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `WARDLINE_INBOX_KEY` is not a key.
    #[error("{KEY_ENV}: {0}")]
    Environment(String),
    /// The inbox exists, encrypted, and its key is nowhere here (or the file is no inbox at all:
    /// the two look alike).
    #[error(
        "the inbox {0} cannot be read here: it is encrypted and its key is neither in this OS keychain nor in {0}.key (or it is not an inbox at all). Move it away to start a new one"
    )]
    Missing(String),
    /// The key file could not be read or written.
    #[error("the inbox key file {0}: {1}")]
    File(String, String),
}

/// The key file of the inbox at `inbox`.
pub fn key_file(inbox: &Path) -> PathBuf {
    let mut path = inbox.as_os_str().to_owned();
    path.push(".key");
    PathBuf::from(path)
}

/// The key of the inbox at `inbox`; `exists_encrypted` says whether the file already holds an
/// encrypted inbox (then a missing key is an error, never a new key).
pub fn for_inbox(inbox: &Path, exists_encrypted: bool) -> Result<(InboxKey, KeySource), KeyError> {
    if let Ok(hex) = std::env::var(KEY_ENV) {
        return InboxKey::from_hex(&hex)
            .map(|key| (key, KeySource::Environment))
            .map_err(KeyError::Environment);
    }
    let account = std::path::absolute(inbox)
        .unwrap_or_else(|_| inbox.to_owned())
        .display()
        .to_string();
    let file = key_file(inbox);
    let keychain = keychain_get(&account);
    if let Ok(Some(hex)) = &keychain
        && let Ok(key) = InboxKey::from_hex(hex)
    {
        return Ok((key, KeySource::Keychain));
    }
    if file.exists() {
        // The user's alone, as the inbox: tightened if found wider.
        crate::private::tighten_if_present(&file)
            .map_err(|e| KeyError::File(file.display().to_string(), e.to_string()))?;
        let text = std::fs::read_to_string(&file)
            .map_err(|e| KeyError::File(file.display().to_string(), e.to_string()))?;
        let key =
            InboxKey::from_hex(&text).map_err(|e| KeyError::File(file.display().to_string(), e))?;
        return Ok((key, KeySource::File(file)));
    }
    if exists_encrypted {
        return Err(KeyError::Missing(inbox.display().to_string()));
    }
    let key = InboxKey::random();
    let stored = match keychain {
        Ok(_) => keychain_set(&account, key.hex()),
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => Ok((key, KeySource::Keychain)),
        Err(reason) => {
            crate::private::write_atomically(&file, key.hex().as_bytes())
                .map_err(|e| KeyError::File(file.display().to_string(), e.to_string()))?;
            tracing::warn!(
                key_file = %file.display(),
                %reason,
                "no OS keychain here: the inbox is encrypted with a key kept beside it, readable by this user only"
            );
            Ok((key, KeySource::File(file)))
        }
    }
}

/// Runs a keychain call on a thread of its own and waits for it (the async Secret Service must not
/// be driven from a runtime thread).
fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, keyring::Error> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(work)
        .join()
        .map_err(|_| "the keychain call panicked".to_owned())?
        .map_err(|e| e.to_string())
}

fn keychain_get(account: &str) -> Result<Option<String>, String> {
    let account = account.to_owned();
    on_own_thread(
        move || match keyring::Entry::new(SERVICE, &account)?.get_password() {
            Ok(hex) => Ok(Some(hex)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(e),
        },
    )
}

fn keychain_set(account: &str, hex: &str) -> Result<(), String> {
    let (account, hex) = (account.to_owned(), hex.to_owned());
    on_own_thread(move || keyring::Entry::new(SERVICE, &account)?.set_password(&hex))
}

/// A fixed key for unit tests (never the keychain of the machine running them).
#[cfg(test)]
pub(crate) fn test_key() -> InboxKey {
    InboxKey::from_hex(&"5a".repeat(32)).expect("a valid key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_hex_digits_and_never_printed() {
        let key = InboxKey::random();
        assert_eq!(key.hex().len(), 64);
        assert_ne!(key.hex(), InboxKey::random().hex());
        assert!(InboxKey::from_hex(key.hex()).is_ok());
        assert!(InboxKey::from_hex("abc").is_err());
        assert!(InboxKey::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(format!("{key:?}"), "InboxKey(…)");
        assert!(key.sql_literal().starts_with("\"x'") && key.sql_literal().ends_with("'\""));
    }
}
