//! Wardline relay: carries notifications that hospital backends publish to Redis to clinicians' and
//! patients' devices over WebSocket and Server-Sent Events, with JWT auth, per-channel access control,
//! durable history and gap-free resume.
//!
//! Layout, in the order data flows:
//! - [`broker`]: stores notifications and fans them out between relay nodes; an embedded broker
//!   (SQLite, one node) and a Redis broker (streams + pub/sub, many nodes) behind one trait;
//! - [`hub`]: this node's channel → connections fan-out, with one broker subscription per channel,
//!   into each connection's bounded [`queue`];
//! - [`delivery`]: a notification with each wire format encoded at most once;
//! - [`session`]: one connection's domain state (channels, positions, resume seam), shared by
//!   every transport;
//! - [`transport`]: thin encoders from a session to a wire: WebSocket (raw as HealthHub's clients read it,
//!   `wardline.v1`, Diagnoxix's frames) and SSE;
//! - [`escalation`]: the acknowledge-or-escalate loop every node runs: reminders, escalations to
//!   backups, emails, each step once across nodes; receipts that end or hasten it;
//! - [`http`]: publishing, stats, receipts, a notification's trail, health, and metrics on their
//!   own listener;
//! - [`openapi`]: `GET /v1/openapi.json`, generated from the handlers;
//! - [`serve`]: the HTTP/1.1 server under the routes: accepting through a full file table, each
//!   connection's header and write deadlines;
//! - [`tls`]: https:// and wss:// on the same listener, the certificate re-read on SIGHUP;
//! - [`origins`]: CORS, and which browser origins may use the relay;
//! - [`client_addr`]: the client's address through trusted proxies;
//! - [`connection_caps`]: how many devices may be connected at once, per node, address and user;
//! - [`data_dir`]: the relay's private directory (the secret, the embedded history);
//! - [`auth`] (with [`auth::keys`]: the identity provider's public keys, JWKS and PEM, tokens are
//!   checked with), [`config`], [`ratelimit`], [`metrics`]: what the above lean on;
//! - [`error`]: `ApiError`, a leaf: each module turns its own errors into it in its own file, and
//!   `http` is the funnel every refusal leaves through.
//!
//! [`Relay::build`] connects the broker; [`Relay::serve`] takes a bound listener and a shutdown
//! future, so tests bind port 0.

pub mod auth;
pub mod broker;
pub mod client_addr;
pub mod config;
pub mod connection_caps;
pub mod data_dir;
pub mod delivery;
pub mod error;
pub mod escalation;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod openapi;
pub mod origins;
pub mod queue;
pub mod ratelimit;
pub mod serve;
pub mod session;
pub mod tls;
pub mod transport;

use crate::auth::Authenticator;
use crate::broker::embedded::EmbeddedBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, Retention};
use crate::config::Config;
use crate::connection_caps::ConnectionCaps;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::{IpRateLimiter, RateLimiter};
use crate::serve::TcpAcceptor;
use crate::tls::{Certificates, TlsListener};
use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Fan-out and the broker behind it.
    pub hub: Arc<Hub>,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// New connections per IP.
    pub connection_limiter: Arc<IpRateLimiter>,
    /// Devices connected at once, per node, address and user.
    pub caps: Arc<ConnectionCaps>,
    /// `POST /v1/receipts` per user, at the rate of a connection's frames.
    pub receipt_limiter: Arc<RateLimiter<String>>,
    /// Publishes naming their own `email_to`, per publisher.
    pub email_limiter: Arc<RateLimiter<String>>,
    /// Becomes `true` when the relay starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// The escalation loop's mailer and settings.
    pub escalation: escalation::Escalation,
}

impl AppState {
    /// The relay's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.hub.metrics()
    }
}

/// The relay's routes.
pub fn app(state: AppState) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/ws/{user_id}", get(transport::ws::user_socket))
        .route("/sse/{user_id}", get(transport::sse::user_events))
        .route("/v1/ws/notifications", get(transport::ws::diagnoxix_socket))
        .route("/v1/publish", post(http::publish::publish))
        .route("/v1/me", get(http::me::me))
        .route("/v1/stats", get(http::stats::stats))
        .route("/v1/ws/stats", get(http::stats::stats))
        .route(
            "/v1/ws/test-notification",
            post(http::stats::test_notification),
        )
        .route(
            "/v1/receipts",
            get(http::receipts::receipts).post(http::receipts::record_receipts),
        )
        .route("/v1/messages", get(http::messages::open_messages))
        .route("/v1/messages/{channel}/{id}", get(http::messages::message))
        .route("/v1/openapi.json", get(openapi::openapi))
        .route("/healthz", get(http::health::healthz))
        .route("/readyz", get(http::health::readyz))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origins::refuse_other_origins,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::funnel::funnel,
        ))
        .layer(origins::cors(state.config.allowed_origins.as_deref()))
        .with_state(state)
}

/// The metrics listener's routes: `/metrics` alone. Served apart from [`app`] (`--metrics-listen`,
/// loopback by default) so that counters of users and errors are not on the public port.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(http::health::metrics))
        .fallback(http::not_found)
        .with_state(state)
}

/// A relay whose broker is connected, ready to serve.
pub struct Relay {
    state: AppState,
    shutdown_tx: watch::Sender<bool>,
    certificates: Option<Arc<Certificates>>,
}

impl Relay {
    /// Connects the broker configured (Redis, or the embedded one) and builds the shared state.
    pub async fn build(config: Config) -> anyhow::Result<Relay> {
        // Certificate problems are found before anything connects.
        let certificates = config.tls.as_ref().map(Certificates::load).transpose()?;
        let retention = Retention {
            max_age: config.history_max_age,
            max_len: config.history_max_len,
        };
        let (live_tx, live_rx) = mpsc::channel(4096);
        let metrics = Arc::new(Metrics::default());
        let redis_ca = config
            .redis_ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path)
                    .with_context(|| format!("reading the Redis CA certificate {}", path.display()))
            })
            .transpose()?;
        let broker: Arc<dyn Broker> = match &config.redis_url {
            Some(url) => Arc::new(
                RedisBroker::connect(
                    url.expose(),
                    redis_ca.as_deref(),
                    retention,
                    config.recorder,
                    live_tx,
                    metrics.clone(),
                    config
                        .escalation
                        .default_for(wardline_protocol::Priority::Critical),
                )
                .await?,
            ),
            None => Arc::new(EmbeddedBroker::open(&config.data_dir, retention, live_tx)?),
        };
        tracing::info!(broker = broker.kind(), data_dir = %config.data_dir.display(), "broker ready");
        let hub = Hub::start(broker, metrics, live_rx);
        let escalation = escalation::Escalation {
            mailer: config
                .smtp_url
                .as_ref()
                .map(|url| {
                    escalation::email::Mailer::new(
                        url.expose(),
                        config.smtp_ca_file.as_deref(),
                        &config.smtp_from,
                    )
                })
                .transpose()?,
            email_retry: config.escalation.email_retry,
            email_allowed_domains: config.escalation.email_allowed_domains.clone(),
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        let state = AppState {
            hub,
            auth: Arc::new(Authenticator::new(&config.jwt)?),
            connection_limiter: Arc::new(IpRateLimiter::new(
                config.connections_per_ip_per_s,
                config.connections_per_ip_burst,
            )),
            receipt_limiter: Arc::new(RateLimiter::new(config.frames_per_s, config.frame_burst)),
            email_limiter: Arc::new(RateLimiter::per_minute(
                http::publish::EMAIL_PUBLISHES_PER_MINUTE,
                http::publish::EMAIL_PUBLISHES_PER_MINUTE,
            )),
            caps: ConnectionCaps::new(
                config.max_connections,
                config.max_connections_per_ip,
                config.max_connections_per_user,
            ),
            config: Arc::new(config),
            shutdown,
            escalation,
        };
        Ok(Relay {
            state,
            shutdown_tx,
            certificates,
        })
    }

    /// The certificate served, when the relay serves TLS ([`Certificates::reload`] on SIGHUP).
    pub fn certificates(&self) -> Option<Arc<Certificates>> {
        self.certificates.clone()
    }

    /// Serves [`metrics_app`] on `listener` until the process ends.
    pub fn serve_metrics(&self, listener: TcpListener) {
        let router = metrics_app(self.state.clone());
        let metrics = self.state.metrics().clone();
        let deadlines = self.state.config.deadlines;
        let listener = TcpAcceptor::new(listener, metrics.clone());
        tokio::spawn(serve::serve(
            listener,
            router,
            deadlines,
            metrics,
            std::future::pending(),
        ));
    }

    /// `https` when the relay serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.certificates.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The shared state (for tests that drive the router directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then closes every connection with 1001 and waits for them,
    /// at most the configured deadline.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Relay {
            state,
            shutdown_tx,
            certificates,
        } = self;
        let deadline = state.config.shutdown_deadline;
        let deadlines = state.config.deadlines;
        let handshakes_per_ip = state.config.max_tls_handshakes_per_ip;
        let metrics = state.metrics().clone();
        let broker = state.hub.broker().clone();
        let mut stopping = state.shutdown.clone();
        let escalation = tokio::spawn(escalation::run(
            broker.clone(),
            state.escalation.clone(),
            metrics.clone(),
            state.shutdown.clone(),
        ));
        let router = app(state);
        let graceful = {
            let metrics = metrics.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: closing connections");
                shutdown_tx.send_replace(true);
                // Upgraded WebSockets are no longer the server's: wait for their sessions to close.
                while metrics.connections_open() > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let server = async move {
            match certificates {
                Some(certificates) => {
                    let config = certificates.server_config()?;
                    let listener =
                        TlsListener::new(listener, config, metrics.clone(), handshakes_per_ip)?;
                    serve::serve(listener, router, deadlines, metrics, graceful).await;
                }
                None => {
                    let listener = TcpAcceptor::new(listener, metrics.clone());
                    serve::serve(listener, router, deadlines, metrics, graceful).await;
                }
            }
            anyhow::Ok(())
        };
        let hard_deadline = async move {
            crate::stopping(&mut stopping).await;
            tokio::time::sleep(deadline).await;
        };
        tokio::select! {
            result = server => result?,
            _ = hard_deadline => tracing::warn!(?deadline, "shutdown deadline passed; dropping what is left"),
        }
        // Escalation steps under way finish first (an email half sent would be sent again by
        // another node); the loop bounds how long that takes.
        let _ = escalation.await;
        broker.shutdown().await;
        Ok(())
    }
}

/// Completes once the relay starts shutting down.
pub async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it before the caller awaits anything else.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Builds a relay from `config` and serves it on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    Relay::build(config).await?.serve(listener, shutdown).await
}
