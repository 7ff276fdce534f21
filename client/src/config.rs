//! The receiver's settings file (where: [`crate::Place`]): which relay and which user,
//! written by `wardline login` (or the app's sign-in), and the person's alert settings. Never the
//! token: that lives in the OS keychain.

use crate::alert::AlertSettings;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the receiver remembers between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The relay's base URL.
    pub server: Option<String>,
    /// The user id.
    pub user: Option<String>,
    /// Quiet hours, sound, pause.
    #[serde(default)]
    pub alerts: AlertSettings,
}

impl Settings {
    /// Reads the file; a missing file is empty settings. A file (and its directory) left readable
    /// by others, by an older version or by hand, is made the user's alone first.
    pub fn load(path: &Path) -> Result<Settings, String> {
        if path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::private::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            crate::private::tighten_if_present(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Reads the file, applies `change` and writes it back, so that changing one setting keeps the
    /// others.
    pub fn update(path: &Path, change: impl FnOnce(&mut Settings)) -> Result<Settings, String> {
        let mut settings = Settings::load(path)?;
        change(&mut settings);
        settings.save(path)?;
        Ok(settings)
    }

    /// Writes the file at once (never half of it), readable by the user alone.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private::private_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        crate::private::write_atomically(path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wardline/config.toml");
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let settings = Settings {
            server: Some("http://relay:8851".into()),
            user: Some("d1".into()),
            alerts: AlertSettings {
                quiet_hours: Some(crate::alert::QuietHours::parse("22:00-07:00").unwrap()),
                sound: false,
                paused_until: None,
                show_details: true,
            },
        };
        settings.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), settings);
        std::fs::write(
            &path,
            "server = \"http://relay:8851\"\n[alerts]\nquiet_hours = \"late\"\n",
        )
        .unwrap();
        let refused = Settings::load(&path).unwrap_err();
        assert!(refused.contains("expected HH:MM-HH:MM"), "{refused}");
    }
}
