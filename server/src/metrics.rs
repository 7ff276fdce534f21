//! The relay's counters and histograms, for `/metrics` (Prometheus text format, served on the
//! metrics listener, `--metrics-listen`, not the public one) and `/v1/stats`.

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
    /// `/v1/ws/notifications`, the Diagnoxix notification service's frames.
    Diagnoxix,
}

impl Transport {
    const ALL: [Transport; 4] = [
        Transport::WsRaw,
        Transport::WsV1,
        Transport::Sse,
        Transport::Diagnoxix,
    ];

    /// The label used in metrics and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WsRaw => "ws_raw",
            Transport::WsV1 => "ws_v1",
            Transport::Sse => "sse",
            Transport::Diagnoxix => "diagnoxix",
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
    /// Connections refused by the per-IP rate limit, and receipt requests by the per-user one.
    pub rate_limited_total: AtomicU64,
    /// Resumes that found a gap.
    pub gaps_total: AtomicU64,
    /// Escalation steps run (reminders, escalations, emails, including emails that failed).
    pub escalation_steps_total: AtomicU64,
    /// Escalation steps that could not run (the broker failed them); they run again.
    pub escalation_failures_total: AtomicU64,
    /// Resumes from a cursor beyond the channel's end, started from the end instead.
    pub future_cursors_total: AtomicU64,
    /// Plain PUBLISHes not recorded: too large or nested too deep.
    pub plain_publishes_refused_total: AtomicU64,
    /// TLS handshakes that failed or timed out (a device that does not trust the certificate).
    pub tls_handshake_failures_total: AtomicU64,
    /// Connections that sent no complete request head in time (slowloris, idle keep-alive).
    pub header_timeouts_total: AtomicU64,
    /// Connections whose writes made no progress in time (a reader that stopped reading).
    pub write_timeouts_total: AtomicU64,
    /// Accepts that failed (out of file descriptors) and were retried.
    pub accept_errors_total: AtomicU64,
    /// Devices refused by a connection cap (node, address or user).
    pub connections_capped_total: AtomicU64,
    /// HTTP error answers, by code (in [`ErrorCode::ALL`]'s order).
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Seconds from a notification's publish (its id's time) to its frame handed to a socket.
    pub delivery_latency: Histogram<Seconds>,
    /// Notifications replayed per channel resumed.
    pub replay_size: Histogram<Notifications>,
    /// Seconds a Redis command took, sent to answered.
    pub redis_round_trip: Arc<Histogram<Seconds>>,
}

/// What a histogram measures: its bucket bounds.
pub trait Buckets {
    /// The upper bounds of the buckets, ascending (`+Inf` follows).
    const BOUNDS: &'static [f64];
}

/// Latencies, in seconds.
#[derive(Debug)]
pub struct Seconds;

impl Buckets for Seconds {
    const BOUNDS: &'static [f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
}

/// Numbers of notifications.
#[derive(Debug)]
pub struct Notifications;

impl Buckets for Notifications {
    const BOUNDS: &'static [f64] = &[
        0.0,
        1.0,
        10.0,
        100.0,
        1_000.0,
        10_000.0,
        50_000.0,
        100_000.0,
        1_000_000.0,
    ];
}

/// A Prometheus histogram with the buckets of `B` (plus `+Inf`), lock-free.
#[derive(Debug)]
pub struct Histogram<B: Buckets> {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of observations, in millionths.
    sum_micros: AtomicU64,
    unit: std::marker::PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            buckets: B::BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            unit: std::marker::PhantomData,
        }
    }
}

impl<B: Buckets> Histogram<B> {
    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let value = value.max(0.0);
        if let Some(i) = B::BOUNDS.iter().position(|bound| value <= *bound) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Relaxed);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in B::BOUNDS.iter().zip(self.buckets.iter()) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

impl Metrics {
    /// Counts a connection opening; the guard counts it closing.
    pub fn connection_opened(
        self: &Arc<Self>,
        transport: Transport,
        user: &str,
    ) -> ConnectionGuard {
        self.connections[transport as usize].fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            transport,
            user: user.to_owned(),
            opened: std::time::Instant::now(),
            close_code: None,
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

    /// Records a live notification's frame handed to a socket (the latency from its publish).
    pub fn delivered(&self, published_ms: u64) {
        let now = wardline_protocol::now_ms();
        self.delivery_latency
            .observe(now.saturating_sub(published_ms) as f64 / 1000.0);
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

    /// The Prometheus text exposition, each metric with its HELP line.
    pub fn render(&self, broker_kind: &str, broker_up: bool, channels: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP wardline_connections Open connections, by transport.\n# TYPE wardline_connections gauge"
        );
        for transport in Transport::ALL {
            let _ = writeln!(
                out,
                "wardline_connections{{transport=\"{}\"}} {}",
                transport.as_str(),
                self.connections(transport)
            );
        }
        let counters = [
            (
                "wardline_connections_total",
                "Connections accepted since start.",
                &self.connections_total,
            ),
            (
                "wardline_published_total",
                "Notifications published through the HTTP API.",
                &self.published_total,
            ),
            (
                "wardline_publish_failures_total",
                "Publishes refused or failed.",
                &self.publish_failures_total,
            ),
            (
                "wardline_deliveries_total",
                "Notifications handed to connections live.",
                &self.deliveries_total,
            ),
            (
                "wardline_replayed_total",
                "Notifications replayed from history on resume.",
                &self.replayed_total,
            ),
            (
                "wardline_slow_consumer_closes_total",
                "Connections closed because they stopped reading.",
                &self.slow_consumer_closes_total,
            ),
            (
                "wardline_flood_closes_total",
                "Connections closed for sending too many frames.",
                &self.flood_closes_total,
            ),
            (
                "wardline_auth_failures_total",
                "Requests and frames refused for their token.",
                &self.auth_failures_total,
            ),
            (
                "wardline_rate_limited_total",
                "Connections refused by the per-address rate limit, and receipt requests by the per-user one.",
                &self.rate_limited_total,
            ),
            (
                "wardline_escalation_steps_total",
                "Escalation steps run: reminders, escalations and emails (a failed email's is in its trail).",
                &self.escalation_steps_total,
            ),
            (
                "wardline_escalation_failures_total",
                "Escalation steps the broker failed; each runs again when its claim runs out.",
                &self.escalation_failures_total,
            ),
            (
                "wardline_gaps_total",
                "Resumes that found history missing.",
                &self.gaps_total,
            ),
            (
                "wardline_plain_publishes_refused_total",
                "Plain PUBLISHes not recorded: larger or nested deeper than POST /v1/publish allows.",
                &self.plain_publishes_refused_total,
            ),
            (
                "wardline_future_cursors_total",
                "Resumes from a cursor beyond anything the channel held, started from its end (and reported as a gap).",
                &self.future_cursors_total,
            ),
            (
                "wardline_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                &self.tls_handshake_failures_total,
            ),
            (
                "wardline_header_timeouts_total",
                "Connections closed for not sending a complete request head in time (--header-timeout).",
                &self.header_timeouts_total,
            ),
            (
                "wardline_write_timeouts_total",
                "Connections closed because their writes made no progress in time (--write-timeout).",
                &self.write_timeouts_total,
            ),
            (
                "wardline_accept_errors_total",
                "Accepts that failed, out of file descriptors, and were retried.",
                &self.accept_errors_total,
            ),
            (
                "wardline_connections_capped_total",
                "Devices refused by a connection cap (--max-connections, -per-ip, -per-user).",
                &self.connections_capped_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wardline_errors_total HTTP error answers, by error code.\n# TYPE wardline_errors_total counter"
        );
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
        self.delivery_latency.render(
            &mut out,
            "wardline_delivery_latency_seconds",
            "From publish (the notification id's time) to the frame handed to a socket.",
        );
        self.replay_size.render(
            &mut out,
            "wardline_replay_size",
            "Notifications replayed per channel resumed.",
        );
        self.redis_round_trip.render(
            &mut out,
            "wardline_redis_round_trip_seconds",
            "Redis commands, sent to answered.",
        );
        let _ = writeln!(
            out,
            "# HELP wardline_channels Channels with at least one connection on this node.\n# TYPE wardline_channels gauge\nwardline_channels {channels}"
        );
        let _ = writeln!(
            out,
            "# HELP wardline_broker_up Whether the broker answers.\n# TYPE wardline_broker_up gauge\nwardline_broker_up{{broker=\"{broker_kind}\"}} {}",
            u8::from(broker_up)
        );
        out
    }
}

/// Counts a connection closing when dropped.
/// Also writes the connection's access-log line then: user, transport, close code, duration (never
/// the token).
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    transport: Transport,
    user: String,
    opened: std::time::Instant,
    close_code: Option<u16>,
}

impl ConnectionGuard {
    /// The relay closes the connection with `code` (without one, the client left).
    pub fn closed_with(&mut self, code: u16) {
        self.close_code = Some(code);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.transport as usize].fetch_sub(1, Relaxed);
        let seconds = self.opened.elapsed().as_secs_f64();
        match self.close_code {
            Some(code) => tracing::info!(
                user = ?self.user, transport = self.transport.as_str(), code,
                seconds = format!("{seconds:.1}"), "connection closed by the relay"
            ),
            None => tracing::info!(
                user = ?self.user, transport = self.transport.as_str(),
                seconds = format!("{seconds:.1}"), "connection closed by the client"
            ),
        }
    }
}
