//! The identity provider's public keys, which tokens signed RS256, ES256 or EdDSA are checked with
//! (Entra ID, Okta, Keycloak and their peers sign so and publish their keys as a JWKS):
//! - `--jwt-public-key FILE`: one PEM public key (RSA, EC P-256/P-384 or Ed25519);
//! - `--jwt-jwks-url URL`: the provider's key set, fetched on first need and cached by `kid`.
//!
//! Keys rotate: the provider publishes a new one and signs with it. The cached set is fetched again
//! - when a token names a `kid` not in it, within a token bucket ([`UNKNOWN_KID_REFETCH_BURST`],
//!   then one every [`UNKNOWN_KID_REFETCH_EVERY`]): made-up `kid`s cannot become a flood of fetches,
//!   nor keep a new key out for longer than that (a refetch any of them causes brings the new key
//!   in, whoever asked for it);
//! - when it is older than the provider's `Cache-Control: max-age` (within [`MAX_AGE_BOUNDS`];
//!   [`DEFAULT_MAX_AGE`] without one), so a withdrawn key stops verifying: in the background, the
//!   tokens of known keys are checked meanwhile.
//!
//! One fetch at a time, and requests that needed one while it ran take its result rather than
//! fetching again. A failed fetch keeps the keys already known (tokens with them keep working).
//!
//! The shared HS256 secret is not here: [`crate::auth`] checks HS256 tokens with it alone, so a
//! token "signed" with a public key as an HMAC secret is never accepted.

use crate::auth::AuthError;
use crate::ratelimit::TokenBucket;
use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Refetches that tokens naming unknown `kid`s may cause at once...
pub const UNKNOWN_KID_REFETCH_BURST: u32 = 2;

/// ...and then one per this long: the longest a newly published key can be refused.
pub const UNKNOWN_KID_REFETCH_EVERY: Duration = Duration::from_secs(5);

/// How long a fetched key set is used when the provider's answer has no `Cache-Control: max-age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(10 * 60);

/// The provider's `max-age` is taken within these bounds: not fetched more often than the bound
/// on unknown `kid`s allows (`no-cache`, `max-age=0`), and at least daily.
pub const MAX_AGE_BOUNDS: RangeInclusive<Duration> =
    UNKNOWN_KID_REFETCH_EVERY..=Duration::from_secs(24 * 3600);

/// After a failed fetch, the set is tried again (for its regular refresh) after this long.
const RETRY_FAILED_FETCH_AFTER: Duration = Duration::from_secs(10);

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
    jwks: Option<Arc<Jwks>>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    cached: RwLock<Cached>,
    /// Held for the whole of a fetch (one at a time); the bucket of refetches for unknown `kid`s.
    fetching: tokio::sync::Mutex<TokenBucket>,
    /// Fetches started so far: a request that needed a fetch and finds that one started after it
    /// did takes that fetch's result.
    fetches_started: AtomicU64,
    /// Whether a background refresh of a stale set is under way.
    refreshing: AtomicBool,
}

/// The key set as last fetched.
#[derive(Default)]
struct Cached {
    keys: HashMap<String, PublicKey>,
    /// Until when it is used as it is; `None`: never fetched.
    fresh_until: Option<Instant>,
}

impl PublicKeys {
    /// Reads the PEM key file, if any; the key set is fetched when first needed.
    pub fn new(public_key: Option<&Path>, jwks_url: Option<&str>) -> anyhow::Result<PublicKeys> {
        let file = public_key.map(read_pem).transpose()?;
        let jwks = jwks_url
            .map(|url| -> anyhow::Result<Arc<Jwks>> {
                Ok(Arc::new(Jwks {
                    url: url.to_owned(),
                    client: reqwest::Client::builder()
                        .timeout(FETCH_TIMEOUT)
                        .build()
                        .context("an HTTP client for the key set")?,
                    cached: RwLock::new(Cached::default()),
                    fetching: tokio::sync::Mutex::new(TokenBucket::one_every(
                        UNKNOWN_KID_REFETCH_EVERY,
                        UNKNOWN_KID_REFETCH_BURST,
                    )),
                    fetches_started: AtomicU64::new(0),
                    refreshing: AtomicBool::new(false),
                }))
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
                    Some(key) => {
                        if jwks.is_stale() {
                            Jwks::refresh_in_background(jwks);
                        }
                        key
                    }
                    None => {
                        jwks.refetch_for_unknown(kid).await;
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
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(kid)
            .cloned()
    }

    /// Whether the set was never fetched or is past its max-age.
    fn is_stale(&self) -> bool {
        self.cached
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fresh_until
            .is_none_or(|until| Instant::now() >= until)
    }

    /// A token names `kid`, which the set does not hold: fetches the set unless a fetch that
    /// started since has brought it (or not), or the bucket of such refetches is empty. A set
    /// never fetched or past its max-age is fetched whatever the bucket holds.
    async fn refetch_for_unknown(&self, kid: &str) {
        let needed_after = self.fetches_started.load(Ordering::Acquire);
        let mut unknown_kid_refetches = self.fetching.lock().await;
        if self.get(kid).is_some() || self.fetches_started.load(Ordering::Acquire) != needed_after {
            return;
        }
        if !self.is_stale() && !unknown_kid_refetches.try_take() {
            tracing::debug!(kid, "unknown key id: the key set was refetched moments ago");
            return;
        }
        self.fetch_and_keep().await;
    }

    /// Fetches a stale set in a task of its own (one at a time): the request that noticed is not
    /// held up, and goes on with the key it found.
    fn refresh_in_background(jwks: &Arc<Jwks>) {
        if jwks.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let jwks = jwks.clone();
        tokio::spawn(async move {
            {
                let _one_at_a_time = jwks.fetching.lock().await;
                // Another fetch may have refreshed it meanwhile.
                if jwks.is_stale() {
                    jwks.fetch_and_keep().await;
                }
            }
            jwks.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the set and keeps it until its max-age (the caller holds `fetching`). A failure
    /// keeps the keys already known and is logged.
    async fn fetch_and_keep(&self) {
        self.fetches_started.fetch_add(1, Ordering::AcqRel);
        let fetched = self.fetch().await;
        let mut cached = self.cached.write().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok((keys, max_age)) => {
                tracing::info!(url = %self.url, keys = keys.len(), max_age_s = max_age.as_secs(), "identity provider keys fetched");
                cached.keys = keys;
                cached.fresh_until = Some(Instant::now() + max_age);
            }
            Err(e) => {
                tracing::error!(url = %self.url, error = format!("{e:#}"), "identity provider keys not fetched");
                cached.fresh_until = Some(Instant::now() + RETRY_FAILED_FETCH_AFTER);
            }
        }
    }

    /// The provider's keys and how long they may be used.
    async fn fetch(&self) -> anyhow::Result<(HashMap<String, PublicKey>, Duration)> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?;
        let max_age = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(*MAX_AGE_BOUNDS.start(), *MAX_AGE_BOUNDS.end());
        let set: JwkSet = response.json().await.context("not a JWKS")?;
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
        Ok((keys, max_age))
    }
}

/// How long a `Cache-Control` value allows the response to be used: its `max-age` (RFC 9111
/// §5.2.2.1), or none at all for `no-cache` and `no-store`; `None` when it says neither.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        let (name, seconds) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| seconds.trim().trim_matches('"').parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=3600, must-revalidate"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("Max-Age = \"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert_eq!(max_age("s-maxage=10"), None);
    }
}
