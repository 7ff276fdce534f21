//! The WebSocket connection (`wardline.v1`): TCP and the handshake (TLS for `wss://`) each bounded,
//! welcome, subscribe with cursors, frames in, receipts and acknowledgements out, pings,
//! dead-link and wake detection.

use crate::liveness::{HANDSHAKE_TIMEOUT, Silence, silence_limit};
use crate::subscription::{
    ChangeDetector, HISTORY_EPOCH, Outcome, Pace, Subscription, SubscriptionError, closed, refused,
    resume_point, retry,
};
use crate::tls::{CONNECT_TIMEOUT, certificate_problem};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, WebSocketStream};
use wardline_protocol::{
    Channel, ClientFrame, Cursor, ReceiptKind, SUBPROTOCOL_V1, ServerFrame, SubscribeChannel,
};

/// Frames read in one go are stored in one transaction.
const BATCH: usize = 256;

/// What came in on the socket.
enum Incoming {
    /// A frame of the protocol.
    Frame(ServerFrame),
    /// Something else that proves the link alive (a ping, a pong, an unreadable frame).
    Alive,
}

impl Subscription {
    /// One WebSocket connection, from opening to its end.
    pub(crate) async fn websocket(&self) -> Result<Outcome, SubscriptionError> {
        let (base, _) = self.bases()?;
        let url = match self.device() {
            "" => format!("{base}/ws/{}", self.options.user),
            device => format!("{base}/ws/{}?device={device}", self.options.user),
        };
        let bad_server = || SubscriptionError::BadServer(self.options.server.clone());
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|_| bad_server())?;
        let host = request.uri().host().ok_or_else(bad_server)?.to_owned();
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if base.starts_with("wss://") { 443 } else { 80 });
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            SUBPROTOCOL_V1.parse().expect("valid header"),
        );
        let bearer = format!("Bearer {}", self.token().expose());
        headers.insert("authorization", bearer.parse().map_err(|_| bad_server())?);
        // IPv6 literals come bracketed in URLs, bare to the resolver.
        let address = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connect = tokio::net::TcpStream::connect((address, port));
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Err(_) => {
                return Ok(retry(&format!(
                    "no answer from {host}:{port} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => return Ok(retry(&format!("cannot reach {host}:{port}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        // Plain `ws://` needs no TLS configuration (nor the trust store it loads).
        let connector = if base.starts_with("wss://") {
            Connector::Rustls(self.options.trust.rustls())
        } else {
            Connector::Plain
        };
        let handshake =
            tokio_tungstenite::client_async_tls_with_config(request, tcp, None, Some(connector));
        let socket = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Err(_) => {
                return Ok(retry(&format!(
                    "the relay accepted the connection but did not answer the handshake within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => return Ok(failed_handshake(&host, e)),
            Ok(Ok((socket, response))) => {
                let date = response.headers().get("date").and_then(|d| d.to_str().ok());
                self.check_clock(date);
                socket
            }
        };
        self.websocket_session(socket).await
    }

    /// A connection whose handshake is done: welcome, subscribe, then frames until it ends.
    pub(crate) async fn websocket_session<S>(
        &self,
        mut socket: WebSocketStream<S>,
    ) -> Result<Outcome, SubscriptionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Followed from before the relay's welcome: a newer token handed over from here on (while
        // subscribing, or while catching up on other devices) is presented on this connection.
        let mut new_tokens = self.new_tokens();
        let welcome = async {
            loop {
                match next_frame(&mut socket).await? {
                    Incoming::Frame(frame) => return Ok(frame),
                    Incoming::Alive => continue,
                }
            }
        };
        let (channels, heartbeat) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, welcome).await {
            Ok(Ok(ServerFrame::Welcome {
                channels,
                heartbeat_s,
                ..
            })) => (channels, Duration::from_secs(heartbeat_s.max(1))),
            Ok(Ok(other)) => return Ok(retry(&format!("unexpected first frame {other:?}"))),
            Ok(Err(outcome)) => return Ok(outcome),
            Err(_) => return Ok(retry("no welcome from the relay")),
        };
        let (cursors, epoch) = self
            .with_inbox(|inbox| Ok((inbox.cursors()?, inbox.state(HISTORY_EPOCH)?)))
            .await?;
        let since_of = |channel: &Channel| Some(resume_point(&cursors, channel));
        let subscribe = ClientFrame::Subscribe {
            channels: channels
                .iter()
                .map(|c| SubscribeChannel {
                    channel: c.to_string(),
                    since: since_of(c).map(|s| s.to_string()),
                    // Only a cursor the relay gave belongs to an epoch (not "a week ago").
                    epoch: epoch
                        .clone()
                        .filter(|_| cursors.iter().any(|(held, _)| held == c)),
                })
                .collect(),
        };
        if send(&mut socket, &subscribe).await.is_err() {
            return Ok(retry("connection lost while subscribing"));
        }
        let pending = self.with_inbox(|inbox| inbox.pending_receipts()).await?;
        for (kind, groups) in [
            (ReceiptKind::Received, pending.received),
            (ReceiptKind::Acknowledged, pending.acknowledged),
            (ReceiptKind::Declined, pending.declined),
        ] {
            for (channel, ids) in groups {
                if send(&mut socket, &receipt(kind, &channel, &ids))
                    .await
                    .is_err()
                {
                    return Ok(retry("connection lost while sending receipts"));
                }
            }
        }
        self.online().await?;
        self.connected("websocket", &self.options.server).await;
        let ping_every = self.options.heartbeat;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut clock = tokio::time::interval(Duration::from_secs(5));
        let mut changes = ChangeDetector::new();
        // The relay pings every `heartbeat` and answers ours: its silence for two heartbeats is a
        // dead link. Only frames from the relay push this deadline back.
        let mut silence = Silence::new(silence_limit(heartbeat.min(ping_every)));
        loop {
            tokio::select! {
                incoming = next_frame(&mut socket) => {
                    silence.heard();
                    let mut frames = Vec::new();
                    let mut ended = None;
                    match incoming {
                        Ok(Incoming::Frame(frame)) => frames.push(frame),
                        Ok(Incoming::Alive) => {}
                        Err(outcome) => return Ok(outcome),
                    }
                    while frames.len() < BATCH && ended.is_none() {
                        match next_frame(&mut socket).now_or_never() {
                            Some(Ok(Incoming::Frame(frame))) => frames.push(frame),
                            Some(Ok(Incoming::Alive)) => {}
                            Some(Err(outcome)) => ended = Some(outcome),
                            None => break,
                        }
                    }
                    if frames.is_empty() && ended.is_none() {
                        continue;
                    }
                    let received = self.handle(frames, &since_of).await?;
                    if let Some(outcome) = ended {
                        // Committed either way; unconfirmed receipts go again on the next connection.
                        return Ok(outcome);
                    }
                    let receipts = received
                        .into_iter()
                        .map(|group| (ReceiptKind::Received, group))
                        .chain(self.take_displayed().into_iter().map(|group| (ReceiptKind::Displayed, group)));
                    for (kind, (channel, ids)) in receipts {
                        if send(&mut socket, &receipt(kind, &channel, &ids)).await.is_err() {
                            return Ok(retry("connection lost while sending receipts"));
                        }
                    }
                }
                _ = silence.expired() => {
                    let reason = format!("no answer from the relay for {} s", silence.limit().as_secs());
                    return Ok(Outcome::Retry { reason, pace: Pace::Now });
                }
                _ = self.acknowledger.waiting() => {
                    for (kind, pending) in self.pending_acks().await? {
                        for (channel, ids) in pending {
                            if send(&mut socket, &receipt(kind, &channel, &ids)).await.is_err() {
                                return Ok(retry("connection lost while sending an acknowledgement"));
                            }
                        }
                    }
                }
                Ok(()) = new_tokens.changed() => {
                    let token = new_tokens.borrow_and_update().expose().clone();
                    if send(&mut socket, &ClientFrame::Refresh { token }).await.is_err() {
                        return Ok(retry("connection lost while presenting a new token"));
                    }
                }
                _ = ping.tick() => {
                    if send(&mut socket, &ClientFrame::Ping).await.is_err() {
                        return Ok(retry("connection lost"));
                    }
                    self.touch_state().await;
                }
                _ = clock.tick() => {
                    if let Some(what) = changes.changed() {
                        return Ok(Outcome::Retry { reason: what.into(), pace: Pace::Now });
                    }
                }
            }
        }
    }
}

/// How a failed handshake ends the attempt: a certificate that cannot be trusted stops; the
/// relay's refusals follow its error code; an answer without one means something in between does
/// not pass WebSockets.
fn failed_handshake(host: &str, error: tungstenite::Error) -> Outcome {
    if let Some(problem) = certificate_problem(host, &error) {
        return Outcome::Untrusted(problem);
    }
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            refused(status, response.body().as_deref().unwrap_or_default()).unwrap_or_else(|| {
                Outcome::WebSocketRefused(format!(
                    "the WebSocket upgrade was answered with {status}"
                ))
            })
        }
        tungstenite::Error::Io(e) => retry(&format!("connection lost during the handshake: {e}")),
        tungstenite::Error::Tls(e) => retry(&format!("TLS handshake with {host} failed: {e}")),
        // The server answered, but not as a WebSocket (a proxy in the way).
        other => Outcome::WebSocketRefused(other.to_string()),
    }
}

/// The `received`, `ack` or `receipt` frame for ids of one channel.
fn receipt(kind: ReceiptKind, channel: &Channel, ids: &[Cursor]) -> ClientFrame {
    let (channel, ids) = (
        channel.to_string(),
        ids.iter().map(Cursor::to_string).collect(),
    );
    match kind {
        ReceiptKind::Received => ClientFrame::Received { channel, ids },
        ReceiptKind::Acknowledged => ClientFrame::Ack { channel, ids },
        kind => ClientFrame::Receipt { channel, ids, kind },
    }
}

async fn send<S>(
    socket: &mut WebSocketStream<S>,
    frame: &ClientFrame,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    socket
        .send(Message::Text(
            serde_json::to_string(frame)
                .expect("client frames serialize")
                .into(),
        ))
        .await
}

/// What came next from the relay, or how the connection ended.
async fn next_frame<S>(socket: &mut WebSocketStream<S>) -> Result<Incoming, Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match socket.next().await {
        Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
            Ok(frame) => Ok(Incoming::Frame(frame)),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable frame from the relay");
                Ok(Incoming::Alive)
            }
        },
        Some(Ok(Message::Close(frame))) => {
            let (code, reason) = frame
                .map(|f| (u16::from(f.code), f.reason.to_string()))
                .unwrap_or((1005, String::new()));
            Err(closed(code, &reason))
        }
        Some(Ok(_)) => Ok(Incoming::Alive),
        Some(Err(e)) => Err(retry(&format!("connection lost: {e}"))),
        None => Err(retry("connection lost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::Inbox;
    use crate::subscription::Options;
    use tokio::time::Instant;
    use wardline_protocol::{Role, Sensitive};

    fn subscription(dir: &tempfile::TempDir) -> Subscription {
        let inbox = Inbox::open_encrypted(
            &dir.path().join("inbox.sqlite3"),
            &crate::inbox_key::test_key(),
        )
        .unwrap();
        let options = Options {
            server: "http://relay.test".into(),
            user: "d1".into(),
            token: Sensitive::new("t".into()),
            heartbeat: Duration::from_secs(15),
            trust: crate::tls::Trust::new(None).unwrap(),
            offline_alarm: crate::subscription::OFFLINE_ALARM,
        };
        Subscription::new(options, crate::inbox_handle::InboxHandle::new(inbox))
    }

    /// A relay on the other end of an in-memory pipe: welcomes, reads the subscription, then sends
    /// a pong every `pong_every` (or nothing, if `None`) while answering nothing else.
    async fn relay(stream: tokio::io::DuplexStream, pong_every: Option<Duration>) {
        let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
        let welcome = ServerFrame::Welcome {
            user: "d1".into(),
            role: Role::Doctor,
            channels: vec![Channel::parse("doctor:d1:notifications").unwrap()],
            heartbeat_s: 15,
            expires_at: u64::MAX,
        };
        let text = serde_json::to_string(&welcome).unwrap();
        socket.send(Message::Text(text.into())).await.unwrap();
        let (mut write, mut read) = socket.split();
        // Keep reading (the client's pings and receipts are swallowed, never answered).
        tokio::spawn(async move { while read.next().await.is_some() {} });
        let Some(every) = pong_every else {
            std::future::pending::<()>().await;
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            let pong = serde_json::to_string(&ServerFrame::Pong).unwrap();
            if write.send(Message::Text(pong.into())).await.is_err() {
                return;
            }
        }
    }

    async fn session_against(
        pong_every: Option<Duration>,
        limit: Duration,
    ) -> (Option<Outcome>, Duration) {
        let dir = tempfile::tempdir().unwrap();
        let subscription = subscription(&dir);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(relay(server, pong_every));
        let (socket, _) = tokio_tungstenite::client_async("ws://relay.test/ws/d1", client)
            .await
            .unwrap();
        let start = Instant::now();
        let outcome = tokio::time::timeout(limit, subscription.websocket_session(socket))
            .await
            .ok()
            .map(|outcome| outcome.unwrap());
        (outcome, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_is_left_after_two_heartbeats_though_pings_go_out() {
        let (outcome, after) = session_against(None, Duration::from_secs(120)).await;
        match outcome {
            Some(Outcome::Retry { reason, pace }) => {
                assert_eq!(pace, Pace::Now);
                assert!(
                    reason.contains("no answer from the relay for 33 s"),
                    "{reason}"
                );
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        assert!(
            after >= Duration::from_secs(33) && after < Duration::from_secs(34),
            "{after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_from_the_relay_keeps_the_link_alive() {
        let (outcome, after) =
            session_against(Some(Duration::from_secs(20)), Duration::from_secs(300)).await;
        assert!(
            outcome.is_none(),
            "still connected after {after:?}: {outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_never_welcomes_is_left_within_the_handshake_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let subscription = subscription(&dir);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            // Upgrades, then says nothing.
            let _socket = tokio_tungstenite::accept_async(server).await.unwrap();
            std::future::pending::<()>().await;
        });
        let (socket, _) = tokio_tungstenite::client_async("ws://relay.test/ws/d1", client)
            .await
            .unwrap();
        let start = Instant::now();
        let outcome = subscription.websocket_session(socket).await.unwrap();
        assert!(
            matches!(
                outcome,
                Outcome::Retry {
                    pace: Pace::Backoff,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(start.elapsed(), HANDSHAKE_TIMEOUT);
    }
}
