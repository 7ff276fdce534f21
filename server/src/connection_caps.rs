//! How many devices may be connected at once (WebSockets and event streams): in all on this node
//! (`--max-connections`), from one client address (`--max-connections-per-ip`, the address as
//! [`client_addr`](crate::client_addr) resolves it through trusted proxies) and per user
//! (`--max-connections-per-user`).
//!
//! These are what hold a socket, a task and a queue for hours; short requests are bounded by the
//! connection deadlines instead ([`serve`](crate::serve)). The node's default leaves room under the
//! process's open-file limit, so that `/healthz`, publishes and the broker still get a socket when
//! devices take every slot they may.

use crate::error::ApiError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use wardline_protocol::ErrorCode;

/// The three caps and what each currently counts.
#[derive(Debug)]
pub struct ConnectionCaps {
    node: usize,
    per_address: usize,
    per_user: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    by_user: HashMap<String, usize>,
}

impl ConnectionCaps {
    /// Caps of `node` connections in all, `per_address` from one address, `per_user` per user.
    pub fn new(node: usize, per_address: usize, per_user: usize) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            node,
            per_address,
            per_user,
            open: Mutex::new(Open::default()),
        })
    }

    /// A slot for one more connection of `user` from `address`, held until the permit is dropped;
    /// or the cap it would pass, as the error answered (429 with 42903 for an address or a user,
    /// 503 with 50303 for the node; both with `Retry-After`).
    pub fn admit(
        self: &Arc<ConnectionCaps>,
        address: IpAddr,
        user: &str,
    ) -> Result<ConnectionPermit, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.node {
            return Err(ApiError::new(
                ErrorCode::RelayFull,
                format!(
                    "this relay holds its maximum of {} connections; retry later or use another node",
                    self.node
                ),
            ));
        }
        if open.by_address.get(&address).copied().unwrap_or(0) >= self.per_address {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "{} connections are already open from this address (the most allowed); close one or retry later",
                    self.per_address
                ),
            ));
        }
        if open.by_user.get(user).copied().unwrap_or(0) >= self.per_user {
            return Err(ApiError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "{} connections are already open for user {user} (the most allowed); close one or retry later",
                    self.per_user
                ),
            ));
        }
        open.total += 1;
        *open.by_address.entry(address).or_default() += 1;
        *open.by_user.entry(user.to_owned()).or_default() += 1;
        Ok(ConnectionPermit {
            caps: self.clone(),
            address,
            user: user.to_owned(),
        })
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One connection's slot under each cap; dropping it frees them.
#[derive(Debug)]
pub struct ConnectionPermit {
    caps: Arc<ConnectionCaps>,
    address: IpAddr,
    user: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        release(&mut open.by_address, &self.address);
        release(&mut open.by_user, &self.user);
    }
}

/// One fewer under `key`; a key that reaches zero is removed, so that the maps hold only who is
/// connected now.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The node's default cap: the process's open-file limit less a reserve (an eighth, at least 64)
/// for everything else that needs a file: requests, the broker, the history, the logs.
pub fn default_node_cap() -> usize {
    let limit = open_file_limit();
    let reserve = (limit / 8).max(64);
    limit.saturating_sub(reserve).max(1) as usize
}

#[cfg(unix)]
fn open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
        .min(1 << 24)
}

#[cfg(not(unix))]
fn open_file_limit() -> u64 {
    8192
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cap_refuses_past_its_count_and_a_dropped_permit_frees_its_slots() {
        let [a, b, c] = [1, 2, 3].map(|n| IpAddr::from([10, 0, 0, n]));
        let caps = ConnectionCaps::new(3, 2, 10);
        let first = caps.admit(a, "dr-a").unwrap();
        let _second = caps.admit(a, "dr-b").unwrap();
        let refused = caps.admit(a, "dr-c").unwrap_err();
        assert_eq!(
            refused.code,
            ErrorCode::TooManyConnections,
            "a third from one address"
        );
        assert!(
            refused.message.contains("from this address"),
            "{}",
            refused.message
        );
        let _third = caps.admit(b, "dr-c").unwrap();
        assert_eq!(
            caps.admit(c, "dr-d").unwrap_err().code,
            ErrorCode::RelayFull
        );
        drop(first);
        assert_eq!(caps.open(), 2);
        let _fourth = caps.admit(c, "dr-d").unwrap();

        let caps = ConnectionCaps::new(10, 10, 2);
        let permits = [a, b].map(|address| caps.admit(address, "dr-a").unwrap());
        let refused = caps.admit(c, "dr-a").unwrap_err();
        assert_eq!(
            refused.code,
            ErrorCode::TooManyConnections,
            "a third for one user"
        );
        assert!(
            refused.message.contains("for user dr-a"),
            "{}",
            refused.message
        );
        drop(permits);
        let open = caps.open.lock().unwrap();
        assert!(open.total == 0 && open.by_address.is_empty() && open.by_user.is_empty());
    }
}
