//! Token buckets: new connections per IP address, frames per connection, receipt requests per user,
//! publishes that name their own email addresses per publisher.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use tokio::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket::with_rate(f64::from(rate), burst)
    }

    /// A full bucket refilled at `rate` tokens a second, fractions allowed.
    fn with_rate(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate,
            burst: f64::from(burst),
        }
    }

    /// A full bucket of `burst` tokens, refilled with one every `interval` (rates under one a
    /// second).
    pub fn one_every(interval: std::time::Duration, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: 1.0 / interval.as_secs_f64().max(f64::MIN_POSITIVE),
            burst: f64::from(burst),
        }
    }

    /// Takes a token if one is left.
    pub fn try_take(&mut self) -> bool {
        self.try_take_n(1)
    }

    /// Takes `n` tokens if that many are left (none otherwise).
    pub fn try_take_n(&mut self, n: u32) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= f64::from(n) {
            self.tokens -= f64::from(n);
            true
        } else {
            false
        }
    }

    fn is_full(&self) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * self.rate >= self.burst
    }
}

/// A token bucket per key (an address, a user); full buckets are forgotten once there are many.
pub struct RateLimiter<K> {
    buckets: Mutex<HashMap<K, TokenBucket>>,
    /// Tokens a second.
    rate: f64,
    burst: u32,
}

/// New connections per IP address.
pub type IpRateLimiter = RateLimiter<IpAddr>;

impl<K: Hash + Eq> RateLimiter<K> {
    /// A limiter allowing `burst` at once and `rate` per second after that, per key.
    pub fn new(rate: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter::with_rate(f64::from(rate), burst)
    }

    /// A limiter allowing `burst` at once and `per_minute` a minute after that, per key.
    pub fn per_minute(per_minute: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter::with_rate(f64::from(per_minute) / 60.0, burst)
    }

    fn with_rate(rate: f64, burst: u32) -> RateLimiter<K> {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            rate,
            burst,
        }
    }

    /// Whether `key` may go on now.
    pub fn allow(&self, key: K) -> bool {
        self.allow_n(key, 1)
    }

    /// Whether `key` may go on now with something that costs `n` tokens; a cost above the burst
    /// takes a full bucket (so that it can pass at all).
    pub fn allow_n(&self, key: K, n: u32) -> bool {
        let n = n.min(self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, bucket| !bucket.is_full());
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::with_rate(self.rate, self.burst))
            .try_take_n(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_allow_a_burst_then_the_rate() {
        let limiter = IpRateLimiter::new(2, 3);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(ip)));
        assert!(!limiter.allow(ip));
        assert!(limiter.allow(other), "limits are per address");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(limiter.allow(ip));
        assert!(!limiter.allow(ip));
    }
}
