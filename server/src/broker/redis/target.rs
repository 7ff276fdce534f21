//! Where the Redis broker connects: one server (`redis://…`), or the current master of a group that
//! Redis Sentinel watches (`redis+sentinel://[:password@]host:port[,host:port…]/<master>[/<db>]`).
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

impl RedisTarget {
    /// Reads a `redis://`, `rediss://`, `unix://` or `redis+sentinel://` URL.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Client::open(url)
                .map(RedisTarget::Server)
                .map_err(|e| format!("bad Redis URL: {e}"));
        };
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
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err(bad("no sentinel"));
        }
        let sentinel = Sentinel::build(sentinels).map_err(|e| bad(&e.to_string()))?;
        let mut info = RedisConnectionInfo::default().set_db(db);
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            info = info.set_password(password);
        }
        Ok(RedisTarget::Sentinel {
            sentinels: Mutex::new(sentinel),
            master: master.to_owned(),
            node: SentinelNodeConnectionInfo::default().set_redis_connection_info(info),
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
        let target =
            RedisTarget::parse("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26379/wardline/2")
                .unwrap();
        let RedisTarget::Sentinel { master, .. } = &target else {
            panic!("not a sentinel target")
        };
        assert_eq!(master, "wardline");
        assert!(target.follows_failover());
        assert!(
            !RedisTarget::parse("redis://127.0.0.1:6379/0")
                .unwrap()
                .follows_failover()
        );
        for bad in [
            "redis+sentinel://10.0.0.1:26379",
            "redis+sentinel:///m",
            "redis+sentinel://h:1/m/x",
        ] {
            let refused = RedisTarget::parse(bad).err().unwrap_or_default();
            assert!(
                refused.contains("bad Redis Sentinel URL"),
                "{bad}: {refused}"
            );
        }
    }
}
