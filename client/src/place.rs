//! Where the receiver keeps its files, decided here once for the command line and the app.
//!
//! On a desktop the command line and the app share one inbox and one settings file, so that
//! `wardline ack` acts on what the app shows: the inbox at `WARDLINE_DB`, else
//! `<data dir>/wardline/inbox.sqlite3`, and the settings at `<config dir>/wardline/config.toml`
//! (Linux: `$XDG_DATA_HOME` or `~/.local/share`, `$XDG_CONFIG_HOME` or `~/.config`; macOS:
//! `~/Library/Application Support`; Windows: `%APPDATA%`). A phone has no such directories: the
//! app keeps both in its own data directory. Either way the inbox's directory is the user's alone.

use std::path::{Path, PathBuf};

/// The environment variable that names the inbox (tests, a second profile).
pub const INBOX_ENV: &str = "WARDLINE_DB";

/// The receiver's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    inbox: PathBuf,
    settings: PathBuf,
}

impl Place {
    /// The desktop's place, shared by the command line and the app.
    pub fn desktop() -> Place {
        let data = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
        let config = dirs::config_dir().unwrap_or_else(|| PathBuf::from("."));
        Place {
            inbox: inbox_from_env().unwrap_or_else(|| data.join("wardline/inbox.sqlite3")),
            settings: config.join("wardline/config.toml"),
        }
    }

    /// Everything in `dir` (an app's own data directory, on a phone); `WARDLINE_DB` still names
    /// the inbox when set.
    pub fn in_dir(dir: &Path) -> Place {
        Place {
            inbox: inbox_from_env().unwrap_or_else(|| dir.join("inbox.sqlite3")),
            settings: dir.join("config.toml"),
        }
    }

    /// The inbox and the settings file exactly where given (tests, a second profile).
    pub fn at(inbox: PathBuf, settings: PathBuf) -> Place {
        Place { inbox, settings }
    }

    /// The same place with the inbox at `inbox` (the command line's `--db`).
    pub fn with_inbox(self, inbox: PathBuf) -> Place {
        Place { inbox, ..self }
    }

    /// The inbox.
    pub fn inbox(&self) -> &Path {
        &self.inbox
    }

    /// The settings file.
    pub fn settings(&self) -> &Path {
        &self.settings
    }

    /// Makes the inbox's directory, the user's alone (patients' details live there), also when
    /// it existed before.
    pub(crate) fn prepare(&self) -> std::io::Result<()> {
        match self.inbox.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => crate::private::private_dir(dir),
            None => Ok(()),
        }
    }
}

fn inbox_from_env() -> Option<PathBuf> {
    std::env::var_os(INBOX_ENV)
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}
