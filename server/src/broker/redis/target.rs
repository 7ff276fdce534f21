//! Where the Redis broker connects: one server (`redis://…`, or `rediss://…` over TLS, trusting the
//! OS's certificate authorities or the one given with `--redis-ca-file`), or the current master of
//! a group that Redis Sentinel watches
//! (`redis+sentinel://[:password@]host:port[,host:port…]/<master>[/<db>]`; `rediss+sentinel://`
//! speaks TLS to the sentinels and the master, trusting the OS's authorities).
//! The master is asked of the sentinels at every (re)connection, and every second by the broker,
//! so that after a failover the node moves to the new master.

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, ConnectionAddr, RedisConnectionInfo};
use tokio::sync::Mutex;

/// Where to connect.
pub enum RedisTarget {
    /// One server.
    Server(Client),
    /// The master named `master`, as the sentinels see it.
    Sentinel {
        /// The sentinels (the client asks them in turn).
        sentinels: Mutex<Sentinel>,
        /// The master's name in the sentinels' configuration.
        master: String,
        /// Password and database for the master.
        node: SentinelNodeConnectionInfo,
    },
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";
const SENTINEL_TLS_SCHEME: &str = "rediss+sentinel://";

impl RedisTarget {
    /// Reads a `redis://`, `rediss://`, `unix://`, `redis+sentinel://` or `rediss+sentinel://` URL;
    /// `ca` (PEM) is the authority a `rediss://` server's certificate is checked with instead of
    /// the OS's.
    pub fn parse(url: &str, ca: Option<&[u8]>) -> Result<RedisTarget, String> {
        let (tls, rest) = match (
            url.strip_prefix(SENTINEL_SCHEME),
            url.strip_prefix(SENTINEL_TLS_SCHEME),
        ) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            (None, None) => {
                let client = match ca {
                    Some(ca) if url.starts_with("rediss://") => Client::build_with_tls(
                        url,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.to_vec()),
                        },
                    ),
                    Some(_) => return Err("--redis-ca-file is for a rediss:// URL".into()),
                    None => Client::open(url),
                };
                return client
                    .map(RedisTarget::Server)
                    .map_err(|e| format!("bad Redis URL: {e}"));
            }
        };
        if ca.is_some() {
            return Err(
                "--redis-ca-file is not supported with Sentinel: its TLS trusts the OS's certificate authorities"
                    .into(),
            );
        }
        let bad = |why: &str| {
            format!(
                "bad Redis Sentinel URL ({why}): expected {SENTINEL_SCHEME}[:password@]host:port[,host:port…]/<master>[/<db>]"
            )
        };
        let (password, rest) = match rest.split_once('@') {
            Some((credentials, rest)) => (
                Some(credentials.strip_prefix(':').unwrap_or(credentials)),
                rest,
            ),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or_else(|| bad("no master name"))?;
        let (master, db) = match path.split_once('/') {
            Some((master, db)) => (master, db.parse::<i64>().map_err(|_| bad("bad db"))?),
            None => (path, 0),
        };
        if master.is_empty() {
            return Err(bad("no master name"));
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{}://{h}", if tls { "rediss" } else { "redis" }))
            .collect();
        if sentinels.is_empty() {
            return Err(bad("no sentinel"));
        }
        let sentinel = Sentinel::build(sentinels).map_err(|e| bad(&e.to_string()))?;
        let mut info = RedisConnectionInfo::default().set_db(db);
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            info = info.set_password(password);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        if tls {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        Ok(RedisTarget::Sentinel {
            sentinels: Mutex::new(sentinel),
            master: master.to_owned(),
            node,
        })
    }

    /// Whether the server may change (a Sentinel-watched master).
    pub fn follows_failover(&self) -> bool {
        matches!(self, RedisTarget::Sentinel { .. })
    }

    /// A client for the server, or for the master as the sentinels see it now.
    pub async fn client(&self) -> redis::RedisResult<Client> {
        match self {
            RedisTarget::Server(client) => Ok(client.clone()),
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            } => {
                sentinels
                    .lock()
                    .await
                    .async_master_for(master, Some(node))
                    .await
            }
        }
    }
}

/// The address a client connects to.
pub fn address(client: &Client) -> &ConnectionAddr {
    client.get_connection_info().addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_sentinels_master_password_and_db() {
        let target = RedisTarget::parse(
            "redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/wardline/2",
            None,
        )
        .unwrap();
        let RedisTarget::Sentinel { master, .. } = &target else {
            panic!("not a sentinel target")
        };
        assert_eq!(master, "wardline");
        assert!(target.follows_failover());
        assert!(
            !RedisTarget::parse("redis://127.0.0.1:6379/0", None)
                .unwrap()
                .follows_failover()
        );
        for bad in [
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel:///m",
            "redis+sentinel://h:1/m/x",
        ] {
            let refused = RedisTarget::parse(bad, None).err().unwrap_or_default();
            assert!(
                refused.contains("bad Redis Sentinel URL"),
                "{bad}: {refused}"
            );
        }
    }
}
