//! TLS 1.3 cipher suites that keep each connection's record keys as 32 bytes and let ring expand
//! them for each record.
//!
//! ring's expanded AES-GCM key is 528 bytes, and rustls keeps one per direction for the life of a
//! connection: 10,000 idle WebSockets would hold 10 MiB of key schedules. These suites keep the
//! key and IV instead (about 60 bytes a direction) and build ring's key for each record they
//! protect, which costs an allocation and a key expansion per record (what that does to the
//! relay's broadcast CPU is measured by `cargo xtask bench relay`). The algorithms and the code
//! that runs them are ring's, as rustls ships them: only when a key is expanded changes.
//!
//! Only the suites with 32-byte keys are offered for TLS 1.3, ChaCha20-Poly1305 first, then
//! AES-256-GCM: rustls's public API cannot rebuild a 16-byte key, and every TLS 1.3 client offers
//! both. The relay prefers ChaCha20-Poly1305 over the client's order ([`PREFER_SERVER_ORDER`]):
//! its key needs no expansion, so keeping it lean costs nothing, while rebuilding an AES-GCM key
//! for every record cost about 2 µs a record here (10 % more CPU per broadcast). The TLS 1.2
//! suites are ring's, unchanged.

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    NONCE_LEN, OutboundOpaqueMessage, OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::crypto::{CryptoProvider, ring};
use rustls::{
    CipherSuiteCommon, ConnectionTrafficSecrets, Error, SupportedCipherSuite, Tls13CipherSuite,
};
use std::sync::LazyLock;

/// The key length of the suites made lean.
const KEY_LEN: usize = 32;

/// The AEAD tag length of every TLS 1.3 suite.
const TAG_LEN: usize = 16;

/// Whether the server picks the suite in its own order rather than the client's.
pub const PREFER_SERVER_ORDER: bool = true;

/// ring's provider with its TLS 1.3 suites made lean.
pub fn provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| suite.tls13().is_none());
    provider
        .cipher_suites
        .splice(0..0, LEAN_SUITES.iter().copied());
    provider
}

/// Made once per process: rustls wants its suites `'static`.
static LEAN_SUITES: LazyLock<Vec<SupportedCipherSuite>> = LazyLock::new(|| {
    [
        ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
    ]
    .into_iter()
    .map(|suite| {
        let suite = suite.tls13().expect("a TLS 1.3 suite");
        assert_eq!(suite.aead_alg.key_len(), KEY_LEN);
        let aead: &'static LeanAead = Box::leak(Box::new(LeanAead(suite.aead_alg)));
        SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: suite.common.suite,
                hash_provider: suite.common.hash_provider,
                confidentiality_limit: suite.common.confidentiality_limit,
            },
            hkdf_provider: suite.hkdf_provider,
            aead_alg: aead,
            quic: None,
        })))
    })
    .collect()
});

/// One of ring's TLS 1.3 AEADs, handing out [`LeanKey`]s.
struct LeanAead(&'static dyn Tls13AeadAlgorithm);

impl Tls13AeadAlgorithm for LeanAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(LeanKey::new(self.0, key, iv))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(LeanKey::new(self.0, key, iv))
    }

    fn key_len(&self) -> usize {
        KEY_LEN
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, rustls::crypto::cipher::UnsupportedOperationError> {
        self.0.extract_keys(key, iv)
    }
}

/// A record key kept as its bytes.
struct LeanKey {
    algorithm: &'static dyn Tls13AeadAlgorithm,
    /// Zeroed when dropped.
    key: AeadKey,
    iv: [u8; NONCE_LEN],
}

impl LeanKey {
    fn new(algorithm: &'static dyn Tls13AeadAlgorithm, key: AeadKey, iv: Iv) -> LeanKey {
        let mut iv_bytes = [0; NONCE_LEN];
        iv_bytes.copy_from_slice(iv.as_ref());
        LeanKey {
            algorithm,
            key,
            iv: iv_bytes,
        }
    }

    fn key(&self) -> AeadKey {
        let mut bytes = [0; KEY_LEN];
        bytes.copy_from_slice(self.key.as_ref());
        AeadKey::from(bytes)
    }
}

impl MessageEncrypter for LeanKey {
    fn encrypt(
        &mut self,
        message: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        self.algorithm
            .encrypter(self.key(), Iv::from(self.iv))
            .encrypt(message, seq)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        // The content type byte and the tag, as ring's TLS 1.3 encrypter counts them.
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for LeanKey {
    fn decrypt<'a>(
        &mut self,
        message: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        self.algorithm
            .decrypter(self.key(), Iv::from(self.iv))
            .decrypt(message, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_suites_come_first_and_replace_only_tls13_ones() {
        let ring = ring::default_provider();
        let lean = provider();
        let names =
            |p: &CryptoProvider| -> Vec<_> { p.cipher_suites.iter().map(|s| s.suite()).collect() };
        let mut expected: Vec<_> = names(&ring);
        expected.retain(|s| *s != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut got = names(&lean);
        got.sort_by_key(|s| u16::from(*s));
        expected.sort_by_key(|s| u16::from(*s));
        assert_eq!(got, expected);
        assert!(lean.cipher_suites[..2].iter().all(|s| s.tls13().is_some()));
    }

    #[test]
    fn lean_keys_say_the_same_lengths_as_rings() {
        for (lean, ring) in LEAN_SUITES.iter().zip([
            ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ]) {
            let key = || AeadKey::from([7; KEY_LEN]);
            let iv = || Iv::from([9; NONCE_LEN]);
            let lean = lean.tls13().unwrap().aead_alg.encrypter(key(), iv());
            let ring = ring.tls13().unwrap().aead_alg.encrypter(key(), iv());
            for len in [0, 1, 200, 16 * 1024] {
                assert_eq!(
                    lean.encrypted_payload_len(len),
                    ring.encrypted_payload_len(len)
                );
            }
        }
    }
}
