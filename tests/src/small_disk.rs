//! A small file system of the test's own (a tmpfs mounted for it: the tests run as root, as
//! `cargo xtask test` does), to be filled up: what a full disk does to the receiver.

use anyhow::{Context, ensure};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount` takes it: "768k", "8m"), readable by its owner alone.
    pub fn mount(size: &str) -> anyhow::Result<SmallDisk> {
        let disk = SmallDisk {
            dir: tempfile::tempdir()?,
        };
        disk.run_mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "wardline-test",
        ])?;
        Ok(disk)
    }

    /// Mounts it again with `options` ("ro": a disk that turned read-only).
    pub fn remount(&self, options: &str) -> anyhow::Result<()> {
        self.run_mount(&["-o", &format!("remount,{options}")])
    }

    fn run_mount(&self, args: &[&str]) -> anyhow::Result<()> {
        let status = std::process::Command::new("mount")
            .args(args)
            .arg(self.dir.path())
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount {args:?} at {} failed ({status}): the tests run as root",
            self.dir.path().display()
        );
        Ok(())
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes all the space left with one file, which it returns: writes until the file system
    /// says it is full.
    pub fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path)?;
        for chunk in [64 * 1024, 4096, 1] {
            let bytes = vec![0u8; chunk];
            loop {
                match file.write_all(&bytes) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => return Err(e).context("filling the disk"),
                }
            }
        }
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: whatever still holds a file open on it (an app that outlived the test) does not
        // keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
