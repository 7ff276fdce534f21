//! The relay's side of one TLS connection, holding no buffer while the connection is idle.
//!
//! rustls's usual `ServerConnection` keeps a 4 KiB read buffer for as long as the connection
//! lives: with 10,000 idle WebSockets that is 40 MiB doing nothing. This stream drives rustls's
//! unbuffered API over a `TcpStream` instead and owns the buffers itself: ciphertext read from the
//! socket, plaintext not yet read by the application, records not yet written. Each is allocated
//! when there is something in it and freed when it empties. Once a TLS 1.3 handshake is done,
//! rustls's connection object (about 2 KiB) is dropped too and the records are protected by
//! [`Tls13Records`]; TLS 1.2 connections (older publishers) stay with rustls.
//!
//! One task drives the stream (hyper's connection, then the WebSocket's): records that must go
//! out while the application reads (a key update's answer, say) are written without registering
//! for write readiness, and go out at the latest with the next write or flush.

use crate::tls::records::{MAX_PLAINTEXT, Tls13Records};
use rustls::ProtocolVersion;
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most ciphertext one read from the socket takes.
const READ_CHUNK: usize = 4096;

/// Most ciphertext held while a record or handshake message is incomplete: a handshake message
/// rustls joins across records (at most 64 KiB) plus one record.
const MAX_INCOMING: usize = 64 * 1024 + 17 * 1024;

/// A server-side TLS stream over TCP (see the module's documentation).
pub struct TlsStream {
    tcp: TcpStream,
    protection: Protection,
    buffers: Buffers,
}

/// Who protects the records. Boxed: the stream lives inside every upgraded connection, and a
/// variant inline would make each as large as rustls's connection object.
enum Protection {
    /// The handshake, and TLS 1.2 connections throughout.
    Rustls(Box<UnbufferedServerConnection>),
    /// An established TLS 1.3 connection.
    Tls13(Box<Tls13Records>),
}

/// What the stream holds between calls; empty, without allocations, while idle.
#[derive(Default)]
struct Buffers {
    /// Ciphertext received and not yet processed.
    incoming: Vec<u8>,
    /// Plaintext decrypted and not yet read: `plaintext[read..]`.
    plaintext: Vec<u8>,
    read: usize,
    /// Records to send: `outgoing[sent..]` is not yet written to the socket.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer has finished sending (close_notify, or its side of TCP closed).
    read_closed: bool,
    /// Our close_notify is queued.
    write_closed: bool,
}

impl Buffers {
    fn consume_incoming(&mut self, consumed: usize) {
        self.incoming.drain(..consumed);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
    }
}

/// Where processing the received records left the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// The handshake needs more from the peer.
    NeedInput,
    /// Everything received is processed; application data may be sent.
    Established,
    /// Both sides have sent close_notify.
    Closed,
}

/// What to encrypt once sending application data is allowed.
enum ToSend<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

impl TlsStream {
    /// Runs the server side of a TLS handshake on `tcp`; a TLS 1.3 connection then leaves rustls's
    /// connection object behind.
    pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        // rustls hands over established TLS 1.3 connections only when the configuration allows.
        let hand_over = config.enable_secret_extraction;
        let tls = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
        let mut stream = TlsStream {
            tcp,
            protection: Protection::Rustls(Box::new(tls)),
            buffers: Buffers::default(),
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        let TlsStream {
            tcp,
            protection,
            buffers,
        } = stream;
        let protection = match protection {
            Protection::Rustls(tls)
                if hand_over && tls.protocol_version() == Some(ProtocolVersion::TLSv1_3) =>
            {
                let (secrets, kernel) = (*tls)
                    .dangerous_into_kernel_connection()
                    .map_err(invalid_data)?;
                Protection::Tls13(Box::new(Tls13Records::new(secrets, kernel)?))
            }
            other => other,
        };
        Ok(TlsStream {
            tcp,
            protection,
            buffers,
        })
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (progress, _) = self.process(ToSend::Nothing)?;
            ready!(self.poll_send(cx))?;
            let Protection::Rustls(tls) = &self.protection else {
                return Poll::Ready(Ok(()));
            };
            if !tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if progress == Progress::Closed || self.buffers.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                self.buffers.read_closed = true;
            }
        }
    }

    /// Processes every complete record received: decrypted data goes to `plaintext`, records to
    /// send to `outgoing`. Once sending application data is allowed, encrypts `send` into
    /// `outgoing` and returns how many bytes of it were taken.
    fn process(&mut self, send: ToSend<'_>) -> io::Result<(Progress, usize)> {
        let processed = match &mut self.protection {
            Protection::Rustls(tls) => process_rustls(tls, &mut self.buffers, send),
            Protection::Tls13(records) => process_tls13(records, &mut self.buffers, send),
        };
        if processed.is_err() {
            // An alert for the peer, if one was queued.
            let _ = self.send_now();
        }
        processed
    }

    /// Reads more ciphertext from the socket; `Ok(0)` at the end of the peer's stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffers.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(invalid_data("TLS message too large")));
        }
        // Read on the stack and keep only what arrived: a buffer reserved before a read that
        // finds nothing would stay with the idle connection.
        let mut chunk = [0; READ_CHUNK];
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(&mut chunk) {
                Ok(read) => {
                    self.buffers.incoming.extend_from_slice(&chunk[..read]);
                    return Poll::Ready(Ok(read));
                }
                // Readiness was stale: poll_read_ready waits again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` to the socket until it is all sent.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.buffers.sent < self.buffers.outgoing.len() {
            let written = ready!(
                Pin::new(&mut self.tcp).poll_write(cx, &self.buffers.outgoing[self.buffers.sent..])
            )?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buffers.sent += written;
        }
        self.buffers.outgoing = Vec::new();
        self.buffers.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what the socket takes now, without waiting (see the module's documentation).
    fn send_now(&mut self) -> io::Result<()> {
        while self.buffers.sent < self.buffers.outgoing.len() {
            match self
                .tcp
                .try_write(&self.buffers.outgoing[self.buffers.sent..])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.buffers.sent += written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.buffers.outgoing = Vec::new();
        self.buffers.sent = 0;
        Ok(())
    }
}

/// [`TlsStream::process`] with rustls protecting the records.
fn process_rustls(
    tls: &mut UnbufferedServerConnection,
    buffers: &mut Buffers,
    send: ToSend<'_>,
) -> io::Result<(Progress, usize)> {
    loop {
        let UnbufferedStatus { mut discard, state } =
            tls.process_tls_records(&mut buffers.incoming);
        let mut done = None;
        let mut failed = None;
        match state {
            Err(e) => failed = Some(e),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            buffers.plaintext.extend_from_slice(record.payload);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let mut room = 1024;
                loop {
                    let start = buffers.outgoing.len();
                    buffers.outgoing.resize(start + room, 0);
                    match encode.encode(&mut buffers.outgoing[start..]) {
                        Ok(written) => {
                            buffers.outgoing.truncate(start + written);
                            break;
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => {
                            buffers.outgoing.truncate(start);
                            room = required_size;
                        }
                        Err(e) => return Err(io::Error::other(e)),
                    }
                }
            }
            // What rustls encoded is in `outgoing`; the callers send it.
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                let taken = match send {
                    ToSend::Nothing => 0,
                    ToSend::Data(data) => {
                        let data = &data[..data.len().min(MAX_PLAINTEXT)];
                        encrypt_into(&mut buffers.outgoing, data.len(), |out| {
                            traffic.encrypt(data, out)
                        })?;
                        data.len()
                    }
                    ToSend::CloseNotify => {
                        encrypt_into(&mut buffers.outgoing, 2, |out| {
                            traffic.queue_close_notify(out)
                        })?;
                        buffers.write_closed = true;
                        0
                    }
                };
                done = Some((Progress::Established, taken));
            }
            Ok(ConnectionState::BlockedHandshake) => done = Some((Progress::NeedInput, 0)),
            Ok(ConnectionState::PeerClosed) => buffers.read_closed = true,
            Ok(ConnectionState::Closed) => {
                buffers.read_closed = true;
                done = Some((Progress::Closed, 0));
            }
            Ok(other) => {
                // Early data is off (the relay's configuration accepts none).
                return Err(invalid_data(format!("unexpected TLS state {other:?}")));
            }
        }
        buffers.consume_incoming(discard);
        if let Some(e) = failed {
            queue_alert(tls, buffers);
            return Err(invalid_data(e));
        }
        if let Some(done) = done {
            return Ok(done);
        }
    }
}

/// Queues the alert rustls prepares when it fails a connection (a client that does not trust the
/// certificate, say, learns why).
fn queue_alert(tls: &mut UnbufferedServerConnection, buffers: &mut Buffers) {
    let UnbufferedStatus { state, .. } = tls.process_tls_records(&mut []);
    if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
        let mut alert = [0; 64];
        if let Ok(written) = encode.encode(&mut alert) {
            buffers.outgoing.extend_from_slice(&alert[..written]);
        }
    }
}

/// [`TlsStream::process`] on an established TLS 1.3 connection.
fn process_tls13(
    records: &mut Tls13Records,
    buffers: &mut Buffers,
    send: ToSend<'_>,
) -> io::Result<(Progress, usize)> {
    if !buffers.read_closed {
        let (consumed, peer_closed) = records.open(
            &mut buffers.incoming,
            &mut buffers.plaintext,
            &mut buffers.outgoing,
        )?;
        buffers.consume_incoming(consumed);
        if peer_closed {
            buffers.read_closed = true;
            // Whatever followed close_notify is not the peer's to send.
            buffers.incoming = Vec::new();
        }
    }
    let taken = match send {
        ToSend::Nothing => 0,
        ToSend::Data(data) => {
            let data = &data[..data.len().min(MAX_PLAINTEXT)];
            records.seal_data(data, &mut buffers.outgoing)?;
            data.len()
        }
        ToSend::CloseNotify => {
            records.seal_close_notify(&mut buffers.outgoing)?;
            buffers.write_closed = true;
            0
        }
    };
    Ok((Progress::Established, taken))
}

/// Most bytes a TLS record adds to its plaintext: header 5, explicit nonce 8 (TLS 1.2 AES-GCM),
/// content type 1 (TLS 1.3), tag 16.
const RECORD_OVERHEAD: usize = 30;

/// Runs `encrypt` on room at the end of `outgoing` for `plaintext` bytes (once: the room is
/// enough unless rustls pads), growing the room until it fits.
fn encrypt_into(
    outgoing: &mut Vec<u8>,
    plaintext: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let mut room = plaintext + plaintext.div_ceil(MAX_PLAINTEXT).max(1) * RECORD_OVERHEAD;
    loop {
        let start = outgoing.len();
        outgoing.resize(start + room, 0);
        match encrypt(&mut outgoing[start..]) {
            Ok(written) => {
                outgoing.truncate(start + written);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                outgoing.truncate(start);
                room = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.buffers.read < this.buffers.plaintext.len() {
                let available = &this.buffers.plaintext[this.buffers.read..];
                let taken = available.len().min(buf.remaining());
                buf.put_slice(&available[..taken]);
                this.buffers.read += taken;
                if this.buffers.read == this.buffers.plaintext.len() {
                    this.buffers.plaintext = Vec::new();
                    this.buffers.read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.buffers.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.process(ToSend::Nothing)?;
            this.send_now()?;
            if this.buffers.read < this.buffers.plaintext.len() || this.buffers.read_closed {
                continue;
            }
            if ready!(this.poll_receive(cx))? == 0 {
                // The peer's TCP stream ended without close_notify: the end of the stream all
                // the same (HTTP and WebSocket frame their own messages).
                this.buffers.read_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Records not yet sent come first: this is the stream's backpressure.
        ready!(this.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.buffers.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        match this.process(ToSend::Data(buf))? {
            (Progress::Established, taken) => {
                // Sent now if the socket takes it, else by the next write or flush.
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(taken))
            }
            (Progress::Closed, _) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            (Progress::NeedInput, _) => Poll::Ready(Err(io::Error::other(
                "write before the TLS handshake finished",
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffers.write_closed {
            ready!(this.poll_send(cx))?;
            // When both sides have already closed, rustls has nothing more to send.
            this.process(ToSend::CloseNotify)?;
            this.buffers.write_closed = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConfig, RootCertStore};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsConnector;

    /// A server configuration for a fresh self-signed `localhost` certificate (the relay's
    /// cipher suites), and a client configuration trusting it (ring's, as a standard client).
    pub(in crate::tls) fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        configs_with_client(rustls::crypto::ring::default_provider())
    }

    /// The same, the client speaking only TLS 1.2 (an older publisher).
    fn configs_with_tls12_client() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        configs_for(
            rustls::crypto::ring::default_provider(),
            &[&rustls::version::TLS12],
        )
    }

    fn configs_with_client(
        client: rustls::crypto::CryptoProvider,
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        configs_for(client, rustls::DEFAULT_VERSIONS)
    }

    fn configs_for(
        client: rustls::crypto::CryptoProvider,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let mut server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key.into())
                .unwrap();
        server.enable_secret_extraction = true;
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(client))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A handshaken pair over real TCP: our server stream and a rustls client.
    async fn pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        pair_with(configs()).await
    }

    async fn pair_with(
        (server, client): (Arc<ServerConfig>, Arc<ClientConfig>),
    ) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await.unwrap();
            TlsConnector::from(client)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let server = TlsStream::accept(tcp, server).await.unwrap();
        (server, connecting.await.unwrap())
    }

    fn holds_no_buffer(stream: &TlsStream) -> bool {
        stream.buffers.incoming.capacity() == 0
            && stream.buffers.plaintext.capacity() == 0
            && stream.buffers.outgoing.capacity() == 0
    }

    #[tokio::test]
    async fn a_megabyte_each_way_arrives_intact() {
        let (mut server, client) = pair().await;
        let upload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let download: Vec<u8> = upload.iter().rev().copied().collect();
        let (sent_up, sent_down) = (upload.clone(), download.clone());
        let client_side = tokio::spawn(async move {
            let (mut read, mut write) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                write.write_all(&sent_up).await.unwrap();
                write.flush().await.unwrap();
                write
            });
            let mut received = vec![0; sent_down.len()];
            read.read_exact(&mut received).await.unwrap();
            let _ = writer.await.unwrap();
            received
        });
        let mut received = vec![0; upload.len()];
        server.read_exact(&mut received).await.unwrap();
        server.write_all(&download).await.unwrap();
        server.flush().await.unwrap();
        assert!(received == upload, "the server read what the client wrote");
        assert!(
            client_side.await.unwrap() == download,
            "the client read what the server wrote"
        );
        assert!(
            holds_no_buffer(&server),
            "all read and sent: no buffer kept"
        );
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (mut server, mut client) = pair().await;
        assert!(holds_no_buffer(&server), "after the handshake");
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut ping = [0; 4];
        server.read_exact(&mut ping).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        let mut pong = [0; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!((&ping, &pong), (b"ping", b"pong"));
        assert!(holds_no_buffer(&server), "after a message each way");
        // Waiting for the next message, as an idle WebSocket does.
        let mut next = [0; 1];
        let waited = tokio::time::timeout(Duration::from_millis(50), server.read(&mut next)).await;
        assert!(waited.is_err(), "nothing was sent");
        assert!(holds_no_buffer(&server), "while waiting to read");
    }

    #[tokio::test]
    async fn every_tls13_suite_carries_records_both_ways() {
        for suite in [
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let mut only = rustls::crypto::ring::default_provider();
            only.cipher_suites.retain(|s| s.suite() == suite);
            let (mut server, mut client) = pair_with(configs_with_client(only)).await;
            let negotiated = client.get_ref().1.negotiated_cipher_suite().unwrap();
            assert_eq!(negotiated.suite(), suite);
            assert!(matches!(server.protection, Protection::Tls13(_)));
            exchange(
                &mut server,
                &mut client,
                format!("over {suite:?}").as_bytes(),
            )
            .await;
        }
    }

    /// Writes `message` from the client and reads it on the server, then the other way round.
    async fn exchange(
        server: &mut TlsStream,
        client: &mut tokio_rustls::client::TlsStream<TcpStream>,
        message: &[u8],
    ) {
        client.write_all(message).await.unwrap();
        client.flush().await.unwrap();
        let mut received = vec![0; message.len()];
        server.read_exact(&mut received).await.unwrap();
        assert_eq!(received, message);
        server.write_all(message).await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(received, message);
    }

    #[tokio::test]
    async fn tls13_connections_leave_rustls_after_the_handshake() {
        let (mut server, mut client) = pair().await;
        assert!(matches!(server.protection, Protection::Tls13(_)));
        exchange(&mut server, &mut client, b"critical result").await;
    }

    #[tokio::test]
    async fn a_tls12_client_stays_with_rustls() {
        let (mut server, mut client) = pair_with(configs_with_tls12_client()).await;
        assert!(matches!(server.protection, Protection::Rustls(_)));
        exchange(&mut server, &mut client, b"from an older publisher").await;
    }

    #[tokio::test]
    async fn key_updates_either_way_keep_the_connection() {
        let (mut server, mut client) = pair().await;
        exchange(&mut server, &mut client, b"before").await;
        // The client asks for new keys both ways (rustls requests an update of ours too).
        client.get_mut().1.refresh_traffic_keys().unwrap();
        exchange(&mut server, &mut client, b"after the client's update").await;
        // The relay moves to a new send key by itself after a few records.
        let Protection::Tls13(records) = &mut server.protection else {
            panic!("TLS 1.3")
        };
        records.rotate_after(3);
        for n in 0..8 {
            exchange(&mut server, &mut client, format!("record {n}").as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_each_way() {
        let (mut server, mut client) = pair().await;
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.shutdown().await.unwrap();
        // The client sees close_notify: a clean end, not a truncation error.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_does_not_trust_the_certificate_is_refused() {
        let (server, _) = configs();
        let (_, stranger) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await.unwrap();
            TlsConnector::from(stranger)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let Err(refused) = TlsStream::accept(tcp, server).await else {
            panic!("the handshake succeeded")
        };
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        let Err(client_error) = connecting.await.unwrap() else {
            panic!("the client trusted a certificate it should not")
        };
        assert!(
            client_error
                .to_string()
                .contains("invalid peer certificate"),
            "{client_error}"
        );
    }

    #[tokio::test]
    async fn plain_http_instead_of_tls_is_refused() {
        let (server, _) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut plain = TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let Err(refused) = TlsStream::accept(tcp, server).await else {
            panic!("the handshake succeeded")
        };
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
    }
}
