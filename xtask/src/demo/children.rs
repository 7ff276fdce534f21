//! The demo's child processes (the relay, the receivers, the app) and what the demo needs to know of
//! others: each child is stopped when its owner is dropped, however the demo ends (a signal, an
//! error, a panic), so none is left behind holding the port; and a taken port names its holder.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a child has to stop after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// A child process that is stopped when this is dropped: SIGTERM first (the relay closes its
/// broker cleanly), SIGKILL after [`GRACE`], then reaped.
pub struct OwnedChild(Child);

impl OwnedChild {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    /// How the child ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// The child itself, to take its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if self.exit_status().is_none() {
            // `kill(1)` rather than libc: this crate has no unsafe code.
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + GRACE;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A process listening on a port.
pub struct PortHolder {
    pub name: String,
    pub pid: u32,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.name, self.pid)
    }
}

/// Who listens on a local TCP port, as `ss` tells it; `None` when `ss` cannot say (not installed,
/// or the holder is another user's and this is not root).
pub fn port_holder(port: u16) -> Option<PortHolder> {
    let output = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    parse_ss_users(&String::from_utf8_lossy(&output.stdout))
}

/// `… users:(("wardline-relay",pid=1234,fd=9))` → wardline-relay, 1234.
fn parse_ss_users(ss_output: &str) -> Option<PortHolder> {
    let users = ss_output.split_once("users:((\"")?.1;
    let (name, rest) = users.split_once('"')?;
    let pid: String = rest
        .strip_prefix(",pid=")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(PortHolder {
        name: name.to_owned(),
        pid: pid.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_output_names_the_process_and_its_pid() {
        let line =
            "LISTEN 0 1024 127.0.0.1:8851 0.0.0.0:* users:((\"wardline-relay\",pid=4242,fd=9))\n";
        assert_eq!(
            parse_ss_users(line)
                .map(|holder| holder.to_string())
                .as_deref(),
            Some("wardline-relay (pid 4242)")
        );
        assert!(parse_ss_users("LISTEN 0 1024 127.0.0.1:8851 0.0.0.0:*\n").is_none());
        assert!(parse_ss_users("").is_none());
    }

    #[test]
    fn a_dropped_child_is_gone() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        drop(OwnedChild::new(child));
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
