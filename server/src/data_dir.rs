//! The relay's data directory: the JWT secret and the embedded broker's history (patient details)
//! live there, so it is the relay's alone. At start it is created 0700, or an existing one with a
//! wider mode is narrowed (and every file in it to 0600, with a warning naming what was open); the
//! relay's own files are created 0600 whatever the umask.

use anyhow::Context;
use std::path::Path;

/// Creates `dir` private, or makes an existing one private.
#[cfg(unix)]
pub fn make_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    narrow(dir, 0o700)?;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading data dir {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading data dir {}", dir.display()))?;
        let file_type = entry.file_type()?;
        if file_type.is_file() {
            narrow(&entry.path(), 0o600)?;
        } else if file_type.is_dir() && entry.metadata()?.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %entry.path().display(), "a directory in the data dir is open to other users; the relay does not use it");
        }
    }
    Ok(())
}

/// Refuses a data dir the relay cannot write (a read-only mount, say): the embedded broker could
/// store no publish, which is better said at start than found out at the first one.
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "the data dir {} cannot be written, so no publish could be stored: give the relay a writable data dir (--data-dir)",
                dir.display()
            )
        })
}

/// Narrows `path` to `mode` when others or the group may use it.
#[cfg(unix)]
fn narrow(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if current & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).with_context(|| {
        format!(
            "{} is open to other users (mode {current:o}) and could not be made private; \
             run: chmod {mode:o} {}",
            path.display(),
            path.display()
        )
    })?;
    tracing::warn!(path = %path.display(), was = format!("{current:o}"), now = format!("{mode:o}"), "was open to other users; made private");
    Ok(())
}

/// Elsewhere directories keep the platform's defaults.
#[cfg(not(unix))]
pub fn make_private(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))
}

/// Creates `path` empty and 0600 if it does not exist, so that what is written into it later (by
/// SQLite, which also gives its `-wal` and `-shm` files the mode of the database) is never
/// readable by others.
#[cfg(unix)]
pub fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Elsewhere files keep the platform's defaults.
#[cfg(not(unix))]
pub fn create_private_file(_path: &Path) -> std::io::Result<()> {
    Ok(())
}
