//! How a connection proves it is alive: one deadline per connection, pushed back by every frame
//! from the relay and by nothing else.
//!
//! A link that goes silent without a FIN or RST (a dead NAT mapping, Wi-Fi roaming, a host that
//! lost power, a frozen relay) gives no error; only silence tells. The relay sends a heartbeat
//! every `heartbeat` (a WebSocket ping, an SSE comment) and answers the receiver's pings, so two
//! heartbeats of silence mean the link is dead. The deadline lives in its own value that only
//! [`Silence::heard`] moves: no other branch of the connection's loop (pings, clock checks,
//! acknowledgements) can reset it by accident.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// How long opening a connection (TLS, the WebSocket upgrade or the event stream's headers, the
/// relay's welcome) may take once TCP is connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Silence longer than this, with the relay's heartbeat, means a dead link: two heartbeats and a
/// little for the network (33 s with the default 15 s).
pub fn silence_limit(heartbeat: Duration) -> Duration {
    heartbeat * 2 + Duration::from_secs(3)
}

/// The connection's deadline.
pub(crate) struct Silence {
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl Silence {
    /// Starts counting now.
    pub(crate) fn new(limit: Duration) -> Silence {
        Silence {
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }

    /// The relay said something: the link is alive for another `limit`.
    pub(crate) fn heard(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.limit);
    }

    /// How long the relay may stay silent.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Completes when the relay has been silent for `limit`.
    pub(crate) fn expired(&mut self) -> impl Future<Output = ()> + '_ {
        self.deadline.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_what_is_heard_moves_the_deadline() {
        let start = Instant::now();
        let mut silence = Silence::new(silence_limit(Duration::from_secs(15)));
        assert_eq!(silence.limit(), Duration::from_secs(33));
        tokio::time::sleep(Duration::from_secs(20)).await;
        silence.heard();
        silence.expired().await;
        assert_eq!(start.elapsed(), Duration::from_secs(53));
        // Other timers firing meanwhile change nothing.
        let mut silence = Silence::new(Duration::from_secs(33));
        let start = Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = silence.expired() => break,
            }
        }
        assert_eq!(start.elapsed(), Duration::from_secs(33));
    }
}
