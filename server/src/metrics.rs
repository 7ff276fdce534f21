//! Counters for `/metrics` (Prometheus text format) and `/v1/stats`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use wardline_protocol::ErrorCode;

/// The ways a client can be connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws/{user}` without a subprotocol: the published JSON as it is.
    WsRaw,
    /// `/ws/{user}` with `wardline.v1`: envelopes, resume, acks.
    WsV1,
    /// `/sse/{user}`.
    Sse,
    /// `/v1/ws/notifications`, seed 004's frames.
    Seed004,
}

impl Transport {
    const ALL: [Transport; 4] = [
        Transport::WsRaw,
        Transport::WsV1,
        Transport::Sse,
        Transport::Seed004,
    ];

    /// The label used in metrics and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WsRaw => "ws_raw",
            Transport::WsV1 => "ws_v1",
            Transport::Sse => "sse",
            Transport::Seed004 => "seed004",
        }
    }
}

/// The relay's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: [AtomicI64; 4],
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Notifications stored through `POST /v1/publish`.
    pub published_total: AtomicU64,
    /// Publishes that failed.
    pub publish_failures_total: AtomicU64,
    /// Notifications handed to connection queues (live).
    pub deliveries_total: AtomicU64,
    /// Notifications replayed from history.
    pub replayed_total: AtomicU64,
    /// Connections closed because their queue filled.
    pub slow_consumer_closes_total: AtomicU64,
    /// Connections closed for sending too many frames.
    pub flood_closes_total: AtomicU64,
    /// Requests refused for their token.
    pub auth_failures_total: AtomicU64,
    /// Connections refused by the per-IP rate limit.
    pub rate_limited_total: AtomicU64,
    /// Resumes that found a gap.
    pub gaps_total: AtomicU64,
    /// TLS handshakes that failed or timed out (a device that does not trust the certificate).
    pub tls_handshake_failures_total: AtomicU64,
    /// HTTP error answers, by code (in [`ErrorCode::ALL`]'s order).
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl Metrics {
    /// Counts a connection opening; the guard counts it closing.
    pub fn connection_opened(self: &Arc<Self>, transport: Transport) -> ConnectionGuard {
        self.connections[transport as usize].fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            transport,
        }
    }

    /// Open connections of a transport.
    pub fn connections(&self, transport: Transport) -> i64 {
        self.connections[transport as usize].load(Relaxed)
    }

    /// Open connections of every transport.
    pub fn connections_open(&self) -> i64 {
        Transport::ALL.iter().map(|t| self.connections(*t)).sum()
    }

    /// Counts an HTTP error answer.
    pub fn count_error(&self, code: ErrorCode) {
        if let Some(index) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[index].fetch_add(1, Relaxed);
        }
    }

    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, broker_kind: &str, broker_up: bool, channels: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE wardline_connections gauge");
        for transport in Transport::ALL {
            let _ = writeln!(
                out,
                "wardline_connections{{transport=\"{}\"}} {}",
                transport.as_str(),
                self.connections(transport)
            );
        }
        let counters = [
            ("wardline_connections_total", &self.connections_total),
            ("wardline_published_total", &self.published_total),
            (
                "wardline_publish_failures_total",
                &self.publish_failures_total,
            ),
            ("wardline_deliveries_total", &self.deliveries_total),
            ("wardline_replayed_total", &self.replayed_total),
            (
                "wardline_slow_consumer_closes_total",
                &self.slow_consumer_closes_total,
            ),
            ("wardline_flood_closes_total", &self.flood_closes_total),
            ("wardline_auth_failures_total", &self.auth_failures_total),
            ("wardline_rate_limited_total", &self.rate_limited_total),
            ("wardline_gaps_total", &self.gaps_total),
            (
                "wardline_tls_handshake_failures_total",
                &self.tls_handshake_failures_total,
            ),
        ];
        for (name, value) in counters {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", value.load(Relaxed));
        }
        let _ = writeln!(out, "# TYPE wardline_errors_total counter");
        for (code, count) in ErrorCode::ALL.iter().zip(&self.errors) {
            let count = count.load(Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "wardline_errors_total{{code=\"{}\"}} {count}",
                    code.code()
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE wardline_channels gauge\nwardline_channels {channels}"
        );
        let _ = writeln!(
            out,
            "# TYPE wardline_broker_up gauge\nwardline_broker_up{{broker=\"{broker_kind}\"}} {}",
            u8::from(broker_up)
        );
        out
    }
}

/// Counts a connection closing when dropped.
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.transport as usize].fetch_sub(1, Relaxed);
    }
}
