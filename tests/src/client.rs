//! Test clients: `wardline.v1` and raw WebSockets, and SSE.

use crate::WAIT;
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wardline_protocol::{ClientFrame, Notification, ServerFrame, SubscribeChannel};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a WebSocket connection attempt ended with.
#[derive(Debug)]
pub enum Refused {
    /// The upgrade was refused with this HTTP status and body.
    Http(u16, Value),
    /// Something else failed.
    Other(String),
}

/// Opens a WebSocket, with the given subprotocols; an HTTP refusal is returned as [`Refused::Http`].
pub async fn connect(url: &str, protocols: &[&str]) -> Result<Socket, Refused> {
    let mut request = url
        .into_client_request()
        .map_err(|e| Refused::Other(e.to_string()))?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(Refused::Http(status, body))
        }
        Err(e) => Err(Refused::Other(e.to_string())),
    }
}

/// The next text frame, or the close frame's code if the relay closed.
pub async fn next_text(socket: &mut Socket) -> anyhow::Result<Result<String, Option<u16>>> {
    // One deadline for the frame: the relay's pings in between do not extend it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .context("no frame in time")?;
        match message {
            Some(Ok(Message::Text(text))) => return Ok(Ok(text.to_string())),
            Some(Ok(Message::Close(frame))) => {
                return Ok(Err(frame.map(|f: CloseFrame| u16::from(f.code))));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Ok(Err(None)),
        }
    }
}

/// A `wardline.v1` client.
pub struct V1Client {
    /// The socket.
    pub socket: Socket,
}

impl V1Client {
    /// Connects and reads the welcome frame.
    pub async fn connect(base_ws: &str, user: &str, token: &str) -> anyhow::Result<V1Client> {
        let url = format!("{base_ws}/ws/{user}?token={token}");
        let socket = connect(&url, &["wardline.v1"])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut client = V1Client { socket };
        match client.frame().await? {
            ServerFrame::Welcome { .. } => Ok(client),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.send_text(&serde_json::to_string(frame)?).await
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// The next frame; fails if the relay closed.
    pub async fn frame(&mut self) -> anyhow::Result<ServerFrame> {
        match next_text(&mut self.socket).await? {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("unreadable frame {text}"))
            }
            Err(code) => bail!("closed with {code:?}"),
        }
    }

    /// Reads until the relay closes; returns the close code and the frames before it.
    pub async fn until_closed(&mut self) -> anyhow::Result<(Option<u16>, Vec<ServerFrame>)> {
        let mut frames = Vec::new();
        loop {
            match next_text(&mut self.socket).await? {
                Ok(text) => frames.push(serde_json::from_str(&text)?),
                Err(code) => return Ok((code, frames)),
            }
        }
    }

    /// Subscribes to channels (each with an optional cursor) and collects what comes back until a
    /// `resumed` or `error` frame has arrived for each channel: (notifications, resumed/error frames).
    pub async fn subscribe(
        &mut self,
        channels: &[(&str, Option<&str>)],
    ) -> anyhow::Result<(Vec<Notification>, Vec<ServerFrame>)> {
        let frame = ClientFrame::Subscribe {
            channels: channels
                .iter()
                .map(|(c, since)| SubscribeChannel {
                    channel: c.to_string(),
                    since: since.map(str::to_owned),
                    epoch: None,
                })
                .collect(),
        };
        self.send(&frame).await?;
        let (mut notifications, mut outcomes) = (Vec::new(), Vec::new());
        while outcomes.len() < channels.len() {
            match self.frame().await? {
                ServerFrame::Notification(n) => notifications.push(n),
                other @ (ServerFrame::Resumed { .. } | ServerFrame::Error { .. }) => {
                    outcomes.push(other)
                }
                other => bail!("unexpected frame while subscribing: {other:?}"),
            }
        }
        Ok((notifications, outcomes))
    }

    /// The next `n` notifications.
    pub async fn notifications(&mut self, n: usize) -> anyhow::Result<Vec<Notification>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.frame().await? {
                ServerFrame::Notification(notification) => out.push(notification),
                other => bail!("expected a notification, got {other:?}"),
            }
        }
        Ok(out)
    }
}

/// Reads an SSE stream as the HTML standard's event-stream parser does (what a browser's
/// `EventSource` hands over): lines end at CRLF, LF or CR; `data` lines are joined with LF; one
/// space after the colon is dropped; comments are skipped. Written apart from the receiver's
/// parser, so that each checks the relay on its own.
pub struct SseClient {
    response: reqwest::Response,
    /// Bytes not yet split into lines (a chunk may end inside a line or a UTF-8 character).
    pending: Vec<u8>,
    /// A CR ended the last line: an LF at the start of the next chunk belongs to it.
    after_cr: bool,
    /// The event being built.
    current: SseEvent,
    data: Option<String>,
    ready: std::collections::VecDeque<SseEvent>,
}

/// One SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// Its `id:`, if any.
    pub id: Option<String>,
    /// Its `event:` (`message` when absent).
    pub event: String,
    /// Its data.
    pub data: String,
}

impl SseEvent {
    fn empty() -> SseEvent {
        SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        }
    }
}

impl SseClient {
    /// Opens `GET url` with an optional `Last-Event-ID`; returns the status and, on 200, the client.
    pub async fn open(
        url: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Result<SseClient, (u16, Value)>> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        if response.status() != 200 {
            let status = response.status().as_u16();
            return Ok(Err((status, response.json().await.unwrap_or(Value::Null))));
        }
        Ok(Ok(SseClient {
            response,
            pending: Vec::new(),
            after_cr: false,
            current: SseEvent::empty(),
            data: None,
            ready: std::collections::VecDeque::new(),
        }))
    }

    /// The next event (comments skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            match tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .context("no SSE data in time")??
            {
                Some(chunk) => self.feed(&chunk)?,
                None => return Ok(None),
            }
        }
    }

    fn feed(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        for &byte in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match byte {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = String::from_utf8(std::mem::take(&mut self.pending))
                        .context("an SSE line that is not UTF-8")?;
                    self.line(&line);
                }
                _ => self.pending.push(byte),
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let mut event = std::mem::replace(&mut self.current, SseEvent::empty());
            if let Some(mut data) = self.data.take() {
                data.pop();
                event.data = data;
                self.ready.push_back(event);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = value.to_owned(),
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                data.push_str(value);
                data.push('\n');
            }
            _ => {}
        }
    }
}
