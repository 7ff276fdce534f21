//! TLS 1.3 records of an established connection, protected here rather than by rustls.
//!
//! After the handshake, rustls's connection object holds about 2 KiB per connection (the
//! connection itself, its handshake deframer's span list, its state) that an idle WebSocket never
//! uses again. rustls hands over instead: the traffic keys and sequence numbers, and a
//! [`KernelConnection`] that computes new keys on a key update (the API rustls offers for kernel
//! TLS). What is left here is RFC 8446's record layer (section 5): each record is the AEAD seal of
//! the data and its content type under a nonce made from the key's IV and the record's sequence
//! number, with the record header as additional data; ring does the sealing and opening. The
//! send key is kept expanded (most of a relay's records are sent); the receive key is kept as its
//! bytes and expanded for each record opened, so an idle connection holds about 600 bytes of keys
//! rather than rustls's 2 KiB of connection.
//!
//! Handled as the RFC says: application data; alerts (close_notify ends the peer's stream, any
//! other alert fails the connection); key updates from the peer (new receive key, and when the
//! peer asks, a key update of our own and a new send key). Anything else after the handshake is
//! an unexpected message and fails the connection.

use ring::aead;
use rustls::crypto::cipher::{AeadKey, Iv, Nonce};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, SupportedCipherSuite};
use std::io;

/// Record content types (RFC 8446 section 5.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// The handshake message type of a key update, and its `update_requested` values (section 4.6.3).
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

/// The close_notify alert: level warning, description close_notify.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;

/// Most plaintext in one record (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;

/// Most ciphertext in one record (2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

/// One direction's key: its bytes, and for the send key ring's expanded key too.
struct RecordKey {
    algorithm: &'static aead::Algorithm,
    /// Zeroed when dropped.
    key: AeadKey,
    iv: Iv,
    seq: u64,
    /// ring's key, kept for the direction most records go (about 530 bytes); the other direction
    /// expands its key for each record it opens.
    expanded: Option<aead::LessSafeKey>,
}

impl RecordKey {
    /// The send key, kept expanded.
    fn send(secrets: (u64, ConnectionTrafficSecrets)) -> io::Result<RecordKey> {
        let mut key = RecordKey::new(secrets)?;
        key.expanded = Some(key.expand()?);
        Ok(key)
    }

    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> io::Result<RecordKey> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(io::Error::other(
                    "a TLS 1.3 cipher suite this relay cannot run",
                ));
            }
        };
        Ok(RecordKey {
            algorithm,
            key,
            iv,
            seq,
            expanded: None,
        })
    }

    fn expand(&self) -> io::Result<aead::LessSafeKey> {
        let unbound = aead::UnboundKey::new(self.algorithm, self.key.as_ref())
            .map_err(|_| io::Error::other("a record key of the wrong length"))?;
        Ok(aead::LessSafeKey::new(unbound))
    }

    /// Runs `protect` with the key and this record's nonce; moves on to the next record.
    fn next<T>(
        &mut self,
        protect: impl FnOnce(&aead::LessSafeKey, aead::Nonce) -> T,
    ) -> io::Result<T> {
        let nonce = aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, self.seq).0);
        // A sequence number never repeats under one key (2^64 records are never reached).
        self.seq += 1;
        Ok(match &self.expanded {
            Some(key) => protect(key, nonce),
            None => protect(&self.expand()?, nonce),
        })
    }
}

/// A TLS 1.3 connection's records after the handshake.
pub struct Tls13Records {
    kernel: KernelConnection<ServerConnectionData>,
    send: RecordKey,
    receive: RecordKey,
    /// Records sealed under one send key before it is replaced: half the suite's confidentiality
    /// limit (2^24 records for AES-GCM), which rustls enforces itself but leaves to kernel users.
    rotate_after: u64,
}

impl Tls13Records {
    /// Takes over from rustls: its keys and sequence numbers, and what key updates need.
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> io::Result<Tls13Records> {
        let rotate_after = match kernel.negotiated_cipher_suite() {
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit / 2,
            _ => return Err(io::Error::other("not a TLS 1.3 cipher suite")),
        };
        Ok(Tls13Records {
            kernel,
            send: RecordKey::send(secrets.tx)?,
            receive: RecordKey::new(secrets.rx)?,
            rotate_after,
        })
    }

    /// Seals `data` (at most [`MAX_PLAINTEXT`] bytes) of `content_type` as one record at the end of
    /// `outgoing`.
    pub fn seal(
        &mut self,
        content_type: u8,
        data: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> io::Result<()> {
        debug_assert!(data.len() <= MAX_PLAINTEXT);
        let length = data.len() + 1 + TAG_LEN;
        let header = [
            APPLICATION_DATA,
            3,
            3,
            (length >> 8) as u8,
            (length & 0xff) as u8,
        ];
        outgoing.reserve(HEADER_LEN + length);
        outgoing.extend_from_slice(&header);
        let start = outgoing.len();
        outgoing.extend_from_slice(data);
        outgoing.push(content_type);
        let tag = self
            .send
            .next(|key, nonce| {
                key.seal_in_place_separate_tag(
                    nonce,
                    aead::Aad::from(header),
                    &mut outgoing[start..],
                )
            })?
            .map_err(|_| io::Error::other("sealing a TLS record failed"))?;
        outgoing.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals application data; first replaces the send key if it has sealed enough.
    pub fn seal_data(&mut self, data: &[u8], outgoing: &mut Vec<u8>) -> io::Result<()> {
        if self.send.seq >= self.rotate_after {
            self.update_send_key(outgoing)?;
        }
        self.seal(APPLICATION_DATA, data, outgoing)
    }

    /// Tells the peer with a key update (sealed under the old key) and moves to the next key.
    fn update_send_key(&mut self, outgoing: &mut Vec<u8>) -> io::Result<()> {
        self.seal(
            HANDSHAKE,
            &[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED],
            outgoing,
        )?;
        self.send = RecordKey::send(self.kernel.update_tx_secret().map_err(invalid_data)?)?;
        Ok(())
    }

    /// Replaces the send key after `records` records (tests).
    #[cfg(test)]
    pub fn rotate_after(&mut self, records: u64) {
        self.rotate_after = records;
    }

    /// Seals our close_notify.
    pub fn seal_close_notify(&mut self, outgoing: &mut Vec<u8>) -> io::Result<()> {
        self.seal(ALERT, &CLOSE_NOTIFY, outgoing)
    }

    /// Opens every complete record at the front of `incoming`: application data is appended to
    /// `plaintext`, a key update's answer to `outgoing`. Returns how many bytes of `incoming` were
    /// consumed and whether the peer sent close_notify.
    pub fn open(
        &mut self,
        incoming: &mut [u8],
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> io::Result<(usize, bool)> {
        let mut consumed = 0;
        while let Some(header) = incoming.get(consumed..consumed + HEADER_LEN) {
            let content_type = header[0];
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if !(TAG_LEN + 1..=MAX_CIPHERTEXT).contains(&length) {
                return Err(invalid_data("a TLS record of an impossible length"));
            }
            if content_type != APPLICATION_DATA {
                // change_cipher_spec is only allowed during the handshake (appendix D.4).
                let what = if content_type == CHANGE_CIPHER_SPEC {
                    "change_cipher_spec after the handshake"
                } else {
                    "an unprotected TLS record after the handshake"
                };
                return Err(invalid_data(what));
            }
            let end = consumed + HEADER_LEN + length;
            if incoming.len() < end {
                break;
            }
            let header: [u8; HEADER_LEN] = header.try_into().expect("five bytes");
            let sealed = &mut incoming[consumed + HEADER_LEN..end];
            let opened = self
                .receive
                .next(|key, nonce| key.open_in_place(nonce, aead::Aad::from(header), sealed))?
                .map_err(|_| invalid_data("a TLS record that does not decrypt"))?;
            // The inner content type is the last non-zero byte; zeros after it are padding.
            let Some(type_at) = opened.iter().rposition(|b| *b != 0) else {
                return Err(invalid_data("a TLS record without a content type"));
            };
            let (content, inner_type) = (&opened[..type_at], opened[type_at]);
            consumed = end;
            match inner_type {
                APPLICATION_DATA => plaintext.extend_from_slice(content),
                ALERT if content == CLOSE_NOTIFY => return Ok((consumed, true)),
                ALERT => {
                    return Err(invalid_data(format!(
                        "the peer sent TLS alert {}",
                        content.get(1).copied().unwrap_or_default()
                    )));
                }
                HANDSHAKE => self.handshake_messages(content, outgoing)?,
                _ => return Err(invalid_data("a TLS record of an unknown content type")),
            }
        }
        Ok((consumed, false))
    }

    /// Post-handshake messages from the client: only key updates are allowed.
    fn handshake_messages(
        &mut self,
        mut messages: &[u8],
        outgoing: &mut Vec<u8>,
    ) -> io::Result<()> {
        while !messages.is_empty() {
            let [message_type, a, b, c, rest @ ..] = messages else {
                return Err(invalid_data("a truncated TLS handshake message"));
            };
            let length = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            if *message_type != KEY_UPDATE || length != 1 || rest.is_empty() {
                return Err(invalid_data(
                    "an unexpected TLS handshake message after the handshake",
                ));
            }
            self.receive = RecordKey::new(self.kernel.update_rx_secret().map_err(invalid_data)?)?;
            match rest[0] {
                UPDATE_NOT_REQUESTED => {}
                // Our own key update, sealed under the old key; what follows uses the new one.
                UPDATE_REQUESTED => self.update_send_key(outgoing)?,
                _ => return Err(invalid_data("a key update with an unknown request")),
            }
            messages = &rest[1..];
        }
        Ok(())
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
