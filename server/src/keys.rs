//! The identity provider's public keys, which tokens signed RS256, ES256 or EdDSA are checked with
//! (Entra ID, Okta, Keycloak and their peers sign so and publish their keys as a JWKS):
//! - `--jwt-public-key FILE`: one PEM public key (RSA, EC P-256/P-384 or Ed25519);
//! - `--jwt-jwks-url URL`: the provider's key set, fetched on first need and cached by `kid`; a
//!   token naming a `kid` not in the cache makes one refetch, at most once per [`REFETCH_AFTER`]
//!   (keys rotate; a flood of made-up `kid`s must not become a flood of fetches).
//!
//! The shared HS256 secret is not here: [`crate::auth`] checks HS256 tokens with it alone, so a
//! token "signed" with a public key as an HMAC secret is never accepted.

use crate::auth::AuthError;
use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;
use tokio::time::Instant;

/// The shortest time between two fetches of the key set.
pub const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// How long a fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A key and the algorithms it may verify.
#[derive(Clone)]
struct PublicKey {
    key: DecodingKey,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    alg: Option<Algorithm>,
}

impl PublicKey {
    fn verifies(&self, alg: Algorithm) -> bool {
        self.key.family().algorithms().contains(&alg) && self.alg.is_none_or(|only| only == alg)
    }
}

/// The identity provider's keys.
#[derive(Default)]
pub struct PublicKeys {
    file: Option<PublicKey>,
    jwks: Option<Jwks>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, PublicKey>>,
    /// When the key set was last fetched (one fetch at a time).
    fetched: tokio::sync::Mutex<Option<Instant>>,
}

impl PublicKeys {
    /// Reads the PEM key file, if any; the key set is fetched when first needed.
    pub fn new(public_key: Option<&Path>, jwks_url: Option<&str>) -> anyhow::Result<PublicKeys> {
        let file = public_key.map(read_pem).transpose()?;
        let jwks = jwks_url
            .map(|url| -> anyhow::Result<Jwks> {
                Ok(Jwks {
                    url: url.to_owned(),
                    client: reqwest::Client::builder()
                        .timeout(FETCH_TIMEOUT)
                        .build()
                        .context("an HTTP client for the key set")?,
                    keys: RwLock::new(HashMap::new()),
                    fetched: tokio::sync::Mutex::new(None),
                })
            })
            .transpose()?;
        Ok(PublicKeys { file, jwks })
    }

    /// The key a token signed with `alg` and naming `kid` is to be checked with.
    pub async fn find(&self, alg: Algorithm, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let wrong_algorithm =
            || AuthError::Invalid(format!("the key for this token does not verify {alg:?}"));
        match (kid, &self.jwks) {
            (Some(kid), Some(jwks)) => {
                let key = match jwks.get(kid) {
                    Some(key) => key,
                    None => {
                        jwks.refetch().await;
                        jwks.get(kid).ok_or_else(|| {
                            AuthError::Invalid(format!(
                                "unknown key id {kid:?}: not in the identity provider's key set"
                            ))
                        })?
                    }
                };
                key.verifies(alg)
                    .then(|| key.key.clone())
                    .ok_or_else(wrong_algorithm)
            }
            _ => match &self.file {
                Some(key) => key
                    .verifies(alg)
                    .then(|| key.key.clone())
                    .ok_or_else(wrong_algorithm),
                None if self.jwks.is_some() => Err(AuthError::Invalid(
                    "the token names no key (`kid`) of the identity provider".into(),
                )),
                None => Err(AuthError::Invalid(format!(
                    "{alg:?} tokens are not accepted: no --jwt-jwks-url or --jwt-public-key is set"
                ))),
            },
        }
    }
}

impl Jwks {
    fn get(&self, kid: &str) -> Option<PublicKey> {
        self.keys.read().expect("key set lock").get(kid).cloned()
    }

    /// Fetches the key set unless it was fetched within [`REFETCH_AFTER`]. A failure keeps the
    /// keys already known and is logged: tokens with those keys keep working.
    async fn refetch(&self) {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some_and(|at| at.elapsed() < REFETCH_AFTER) {
            return;
        }
        *fetched = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "identity provider keys fetched");
                *self.keys.write().expect("key set lock") = keys;
            }
            Err(e) => {
                tracing::error!(url = %self.url, error = format!("{e:#}"), "identity provider keys not fetched");
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, PublicKey>> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
            .context("not a JWKS")?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                // Keys for encryption, or of kinds not supported, are left out.
                Err(e) => tracing::debug!(kid = ?kid, error = %e, "key of the set not used"),
            }
        }
        Ok(keys)
    }
}

fn from_jwk(jwk: &Jwk) -> anyhow::Result<PublicKey> {
    use jsonwebtoken::jwk::{KeyAlgorithm, PublicKeyUse};
    anyhow::ensure!(
        jwk.common.public_key_use != Some(PublicKeyUse::Encryption),
        "an encryption key"
    );
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(match alg {
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::RS384 => Algorithm::RS384,
            KeyAlgorithm::RS512 => Algorithm::RS512,
            KeyAlgorithm::PS256 => Algorithm::PS256,
            KeyAlgorithm::PS384 => Algorithm::PS384,
            KeyAlgorithm::PS512 => Algorithm::PS512,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::ES384 => Algorithm::ES384,
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            other => anyhow::bail!("algorithm {other:?} is not for signatures the relay checks"),
        }),
    };
    let key = DecodingKey::from_jwk(jwk)?;
    anyhow::ensure!(
        key.family() != jsonwebtoken::AlgorithmFamily::Hmac,
        "a symmetric key"
    );
    Ok(PublicKey { key, alg })
}

fn read_pem(path: &Path) -> anyhow::Result<PublicKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the JWT public key {}", path.display()))?;
    let key = DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            anyhow::anyhow!(
                "{} is not a PEM public key (RSA, EC or Ed25519, BEGIN PUBLIC KEY)",
                path.display()
            )
        })?;
    Ok(PublicKey { key, alg: None })
}
