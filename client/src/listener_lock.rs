//! One listener per inbox. The command line and the app share an inbox (see [`crate::Place`]); two
//! subscriptions on it would raise every alert twice. A listener holds an exclusive lock on
//! `<inbox>.listener` (the OS releases it when the process ends, however it ends) and writes its
//! process id there, so that a second one can say which process listens already.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock, held while a subscription runs.
#[derive(Debug)]
pub(crate) struct ListenerLock {
    _file: File,
}

/// The lock file of the inbox at `inbox`.
fn lock_file(inbox: &Path) -> PathBuf {
    let mut path = inbox.as_os_str().to_owned();
    path.push(".listener");
    PathBuf::from(path)
}

impl ListenerLock {
    /// Takes the inbox's listener lock, or says which process holds it.
    pub(crate) fn take(inbox: &Path) -> Result<ListenerLock, String> {
        let path = lock_file(inbox);
        crate::private::private_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                let pid = std::process::id().to_string();
                let written = file
                    .set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| file.write_all(pid.as_bytes()));
                if let Err(e) = written {
                    tracing::warn!(error = %e, "could not note this listener's process id");
                }
                Ok(ListenerLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(format!(
                    "another Wardline (process {}) already listens on this inbox, {}: it receives and alerts here; quit it (the app, or `wardline listen`) to listen from this one",
                    pid.trim(),
                    inbox.display()
                ))
            }
            Err(TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_listener_per_inbox_and_the_lock_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("inbox.sqlite3");
        let first = ListenerLock::take(&inbox).unwrap();
        let refused = ListenerLock::take(&inbox).unwrap_err();
        assert!(
            refused.contains(&format!("process {}", std::process::id())),
            "{refused}"
        );
        drop(first);
        ListenerLock::take(&inbox).unwrap();
    }
}
