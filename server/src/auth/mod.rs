//! Tokens: JWTs with `sub`, a role claim, `exp` and an optional `channels` list, as hospitals mint
//! them with their own JWT libraries (HS256 with the shared secret) or their identity provider
//! issues them (RS256, ES256, EdDSA, checked with [`keys`]); where a request carries its
//! token; what each role may do.

use crate::config::JwtConfig;
pub mod keys;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use keys::PublicKeys;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wardline_protocol::{Channel, ChannelKind, ErrorCode, Role, SUBPROTOCOL_BEARER_PREFIX};

/// How many years ahead a token's `exp`, `nbf` or `iat` may lie ([`TIME_CLAIM_HORIZON`]).
pub const TIME_CLAIM_HORIZON_YEARS: u64 = 10;

/// The furthest ahead a token's `exp`, `nbf` or `iat` may lie. Tokens are minted for minutes to
/// months (a service's for a few years at most); a time beyond this is a forged or broken token,
/// and timers and sums with it could overflow. (Years of 365¼ days.)
pub const TIME_CLAIM_HORIZON: Duration = Duration::from_secs(
    TIME_CLAIM_HORIZON_YEARS * 365 * 24 * 3600 + TIME_CLAIM_HORIZON_YEARS * 6 * 3600,
);

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The user's role.
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Extra channels the backend granted (e.g. `appointment:{id}:updates`).
    pub channels: Vec<Channel>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query, the `Authorization` header or the subprotocols.
    #[error(
        "a token is required: ?token=, Authorization: Bearer, or a bearer.<token> WebSocket subprotocol"
    )]
    Missing,
    /// Bad signature, algorithm or claims.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
}

impl AuthError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::TokenMissing,
            AuthError::Invalid(_) => ErrorCode::TokenInvalid,
            AuthError::Expired => ErrorCode::TokenExpired,
        }
    }
}

/// Verifies tokens (the shared secret, or the identity provider's keys) and mints them (the
/// shared secret).
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    public_keys: PublicKeys,
    role_claim: String,
    leeway_s: u64,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl Authenticator {
    /// An authenticator for the configured secret, public keys and claim checks (a public key file
    /// that cannot be read is an error now, not at the first token).
    pub fn new(config: &JwtConfig) -> anyhow::Result<Authenticator> {
        let mut validation = Validation::new(Algorithm::HS256);
        // An expired token is refused at once: clinicians' devices renew tokens, and a grace period
        // would be a window in which a revoked session still reads patient data.
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Authenticator {
            decoding: DecodingKey::from_secret(config.secret.expose()),
            encoding: EncodingKey::from_secret(config.secret.expose()),
            validation,
            public_keys: PublicKeys::new(config.public_key.as_deref(), config.jwks_url.as_deref())?,
            role_claim: config.role_claim.clone(),
            leeway_s: config.leeway.as_secs(),
        })
    }

    /// Verifies a token and reads its claims. HS256 is checked with the shared secret and nothing
    /// else; RS256, ES256, EdDSA (and their kin) with the identity provider's key the token names.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("unreadable token header: {e}")))?;
        let decoded = match header.alg {
            Algorithm::HS256 => {
                jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
            }
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(AuthError::Invalid(
                    "shared-secret tokens must be HS256".into(),
                ));
            }
            alg => {
                let key = self.public_keys.find(alg, header.kid.as_deref()).await?;
                let mut validation = self.validation.clone();
                validation.algorithms = vec![alg];
                jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            }
        };
        let data = decoded.map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Invalid(
                "the token is not valid yet (its `nbf` lies in the future)".into(),
            ),
            ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let claims = data.claims;
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => {
                return Err(AuthError::Invalid(
                    "`sub` must be a non-empty string".into(),
                ));
            }
        };
        let role = claims
            .get(&self.role_claim)
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "claim `{}` must be doctor, patient, admin or service",
                    self.role_claim
                ))
            })?;
        // Checked here as well, whatever the JWT library made of them: fractions are allowed
        // (RFC 7519's NumericDate) and read as whole seconds, never as 0.
        let now = unix_now();
        let exp = time_claim(&claims, "exp")?
            .ok_or_else(|| AuthError::Invalid("`exp` is required".into()))?;
        let nbf = time_claim(&claims, "nbf")?;
        let iat = time_claim(&claims, "iat")?;
        let horizon = now.saturating_add(TIME_CLAIM_HORIZON.as_secs());
        for (name, time) in [("exp", Some(exp)), ("nbf", nbf), ("iat", iat)] {
            if let Some(time) = time
                && time > horizon
            {
                return Err(AuthError::Invalid(format!(
                    "`{name}` is {time}, more than {TIME_CLAIM_HORIZON_YEARS} years from now: not a time a token may name"
                )));
            }
        }
        if exp.saturating_add(self.leeway_s) <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = nbf
            && nbf > now.saturating_add(self.leeway_s)
        {
            return Err(AuthError::Invalid(format!(
                "the token is not valid yet: `nbf` is {nbf}, {}s from now",
                nbf - now
            )));
        }
        if let Some(iat) = iat
            && iat > now.saturating_add(self.leeway_s)
        {
            return Err(AuthError::Invalid(format!(
                "the token was issued in the future: `iat` is {iat}, {}s from now",
                iat - now
            )));
        }
        let channels = match claims.get("channels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|name| {
                    let name = name.as_str().unwrap_or_default();
                    Channel::parse(name).map_err(|e| AuthError::Invalid(format!("`channels`: {e}")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(AuthError::Invalid(
                    "`channels` must be a list of names".into(),
                ));
            }
        };
        Ok(Claims {
            sub,
            role,
            exp,
            channels,
        })
    }

    /// Mints a token, as `wardline-relay token` does.
    pub fn mint(&self, sub: &str, role: Role, channels: &[Channel], ttl: Duration) -> String {
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.into());
        claims.insert(self.role_claim.clone(), role.as_str().into());
        claims.insert("iat".into(), unix_now().into());
        claims.insert(
            "exp".into(),
            unix_now().saturating_add(ttl.as_secs()).into(),
        );
        if !channels.is_empty() {
            let names = channels.iter().map(|c| Value::from(c.as_str())).collect();
            claims.insert("channels".into(), Value::Array(names));
        }
        if let Some(iss) = self
            .validation
            .iss
            .as_ref()
            .and_then(|set| set.iter().next())
        {
            claims.insert("iss".into(), iss.as_str().into());
        }
        if let Some(aud) = self
            .validation
            .aud
            .as_ref()
            .and_then(|set| set.iter().next())
        {
            claims.insert("aud".into(), aud.as_str().into());
        }
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a JSON map cannot fail")
    }
}

/// The token a request carries: `?token=`, then `Authorization: Bearer`, then a `bearer.<token>`
/// entry of `Sec-WebSocket-Protocol` (the only place a browser WebSocket can put it).
pub fn token_from_request(query_token: Option<&str>, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = query_token.filter(|t| !t.is_empty()) {
        return Some(token.to_owned());
    }
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if let Some(token) = bearer {
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix(SUBPROTOCOL_BEARER_PREFIX)
                .map(str::to_owned)
        })
}

impl Claims {
    /// Every channel this token may read: its role's defaults plus the granted ones.
    pub fn readable_channels(&self) -> Vec<Channel> {
        let mut channels = match self.role {
            Role::Doctor | Role::Patient | Role::Admin => self.role.default_channels(&self.sub),
            Role::Service => Vec::new(),
        };
        for channel in &self.channels {
            if !channels.contains(channel) {
                channels.push(channel.clone());
            }
        }
        channels
    }

    /// Whether this token may read `channel`.
    pub fn can_read(&self, channel: &Channel) -> bool {
        self.readable_channels().contains(channel)
    }

    /// Whether this token may publish to `channel`: a service anywhere, an admin to `system:alerts`.
    pub fn can_publish(&self, channel: &Channel) -> bool {
        match self.role {
            Role::Service => true,
            Role::Admin => *channel == Channel::system_alerts(),
            Role::Doctor | Role::Patient => false,
        }
    }

    /// Whether this token may read relay statistics and delivery receipts.
    pub fn can_read_stats(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Service)
    }

    /// Whether this token may record receipts for `channel`'s notifications: those who read it,
    /// and those who publish to it.
    pub fn can_record_receipts(&self, channel: &Channel) -> bool {
        self.can_read(channel) || self.can_publish(channel)
    }

    /// Whether this token's receipts act on the escalation chains of `channel`'s notifications
    /// (an acknowledgement ends one for everyone, a decline escalates it at once): the recipient of
    /// a personal channel (a backup acknowledges an escalation on their own channel), and those who
    /// publish to the channel (services; administrators on `system:alerts`). Anyone else reading a
    /// channel many users read (`system:alerts`, an appointment's, a granted one) records receipts
    /// that are theirs alone: their devices, their trail entries.
    pub fn can_settle(&self, channel: &Channel) -> bool {
        let recipient = match channel.kind() {
            ChannelKind::Doctor(id) => self.role == Role::Doctor && id == self.sub,
            ChannelKind::Patient(id) => self.role == Role::Patient && id == self.sub,
            ChannelKind::Appointment(_) | ChannelKind::SystemAlerts => false,
        };
        recipient || self.can_publish(channel)
    }

    /// Time left before the token expires.
    pub fn time_left(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(unix_now()))
    }
}

/// A time claim (RFC 7519's NumericDate: seconds since 1970, fractions allowed) in whole seconds;
/// `None` when absent.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let seconds = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && (0.0..1e15).contains(f))
                .map(|f| f as u64)
        }),
        _ => None,
    };
    seconds.map(Some).ok_or_else(|| {
        AuthError::Invalid(format!("`{name}` must be seconds since 1970, not {value}"))
    })
}

/// Refusals reach clients as the relay's errors (see [`crate::error`]).
impl From<AuthError> for crate::error::ApiError {
    fn from(e: AuthError) -> crate::error::ApiError {
        crate::error::ApiError::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardline_protocol::Sensitive;

    fn config() -> JwtConfig {
        JwtConfig {
            secret: Sensitive::new(b"unit-test-secret-0123456789".to_vec()),
            issuer: None,
            audience: None,
            role_claim: "role".into(),
            public_key: None,
            jwks_url: None,
            leeway: Duration::ZERO,
        }
    }

    fn sign(claims: Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_their_claims() {
        let auth = Authenticator::new(&config()).unwrap();
        let extra = Channel::parse("appointment:a1:updates").unwrap();
        let token = auth.mint(
            "d1",
            Role::Doctor,
            std::slice::from_ref(&extra),
            Duration::from_secs(60),
        );
        let claims = auth.verify(&token).await.unwrap();
        assert_eq!(claims.sub, "d1");
        assert_eq!(claims.role, Role::Doctor);
        assert_eq!(claims.channels, vec![extra.clone()]);
        let names: Vec<_> = claims
            .readable_channels()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "doctor:d1:notifications",
                "system:alerts",
                "appointment:a1:updates"
            ]
        );
    }

    #[tokio::test]
    async fn bad_signature_expiry_role_and_algorithm_are_refused() {
        let auth = Authenticator::new(&config()).unwrap();
        let exp = unix_now() + 60;
        let other = sign(
            serde_json::json!({"sub": "d1", "role": "doctor", "exp": exp}),
            b"another-secret-0123456789",
        );
        assert_eq!(
            auth.verify(&other).await,
            Err(AuthError::Invalid("bad signature".into()))
        );
        let expired = sign(
            serde_json::json!({"sub": "d1", "role": "doctor", "exp": unix_now() - 1}),
            b"unit-test-secret-0123456789",
        );
        assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
        let no_role = sign(
            serde_json::json!({"sub": "d1", "exp": exp}),
            b"unit-test-secret-0123456789",
        );
        assert!(matches!(
            auth.verify(&no_role).await,
            Err(AuthError::Invalid(_))
        ));
        let bad_channel = sign(
            serde_json::json!({"sub": "d1", "role": "doctor", "exp": exp, "channels": ["nope"]}),
            b"unit-test-secret-0123456789",
        );
        assert!(matches!(
            auth.verify(&bad_channel).await,
            Err(AuthError::Invalid(_))
        ));
        // alg "none": header {"alg":"none"}, claims, empty signature.
        let none =
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJkMSIsInJvbGUiOiJkb2N0b3IiLCJleHAiOjk5OTk5OTk5OTl9.";
        assert!(matches!(
            auth.verify(none).await,
            Err(AuthError::Invalid(_))
        ));
    }

    proptest::proptest! {
        /// A time claim is its whole seconds, integer or fractional; anything else is refused.
        #[test]
        fn time_claims_are_whole_seconds_or_refused(seconds in 0u64..4_000_000_000, fraction in 0.0f64..0.99, junk in "\\PC{0,10}") {
            let claims = |value: Value| Map::from_iter([("exp".to_owned(), value)]);
            proptest::prop_assert_eq!(time_claim(&claims(serde_json::json!(seconds)), "exp"), Ok(Some(seconds)));
            proptest::prop_assert_eq!(time_claim(&claims(serde_json::json!(seconds as f64 + fraction)), "exp"), Ok(Some(seconds)));
            proptest::prop_assert!(time_claim(&claims(serde_json::json!(junk)), "exp").is_err());
            proptest::prop_assert!(time_claim(&claims(serde_json::json!(-(seconds as i64) - 1)), "exp").is_err());
            proptest::prop_assert_eq!(time_claim(&claims(serde_json::json!(1)), "nbf"), Ok(None));
        }
    }

    #[tokio::test]
    async fn every_time_claim_is_checked_with_the_leeway() {
        let secret = b"unit-test-secret-0123456789";
        let now = unix_now();
        let token = |extra: Value| {
            let mut claims = serde_json::json!({"sub": "d1", "role": "doctor", "exp": now + 60});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            sign(claims, secret)
        };
        let strict = Authenticator::new(&config()).unwrap();
        let lenient = Authenticator::new(&JwtConfig {
            leeway: Duration::from_secs(30),
            ..config()
        })
        .unwrap();
        let soon = serde_json::json!({"nbf": now + 20});
        assert!(
            matches!(strict.verify(&token(soon.clone())).await, Err(AuthError::Invalid(m)) if m.contains("nbf"))
        );
        assert!(lenient.verify(&token(soon)).await.is_ok());
        let issued_later = serde_json::json!({"iat": now + 20});
        assert!(
            matches!(strict.verify(&token(issued_later.clone())).await, Err(AuthError::Invalid(m)) if m.contains("iat"))
        );
        assert!(lenient.verify(&token(issued_later)).await.is_ok());
        let just_expired = serde_json::json!({"exp": now - 5});
        assert_eq!(
            strict.verify(&token(just_expired.clone())).await,
            Err(AuthError::Expired)
        );
        assert!(lenient.verify(&token(just_expired)).await.is_ok());
        let fractional = serde_json::json!({"exp": (now + 60) as f64 + 0.75});
        assert_eq!(
            strict.verify(&token(fractional)).await.unwrap().exp,
            now + 60
        );
        for bad in [
            serde_json::json!({"nbf": "later"}),
            serde_json::json!({"iat": -1}),
        ] {
            assert!(matches!(
                strict.verify(&token(bad)).await,
                Err(AuthError::Invalid(_))
            ));
        }
    }

    #[tokio::test]
    async fn time_claims_beyond_the_horizon_are_refused() {
        let auth = Authenticator::new(&JwtConfig {
            leeway: Duration::from_secs(30),
            ..config()
        })
        .unwrap();
        let now = unix_now();
        let beyond = now + TIME_CLAIM_HORIZON.as_secs() + 1;
        let within = now + TIME_CLAIM_HORIZON.as_secs() - 60;
        let token = |times: Value| {
            let mut claims = serde_json::json!({"sub": "d1", "role": "doctor"});
            claims
                .as_object_mut()
                .unwrap()
                .extend(times.as_object().unwrap().clone());
            sign(claims, b"unit-test-secret-0123456789")
        };
        for (times, name) in [
            (serde_json::json!({"exp": beyond}), "`exp`"),
            (serde_json::json!({"exp": u64::MAX}), "`exp`"),
            (
                serde_json::json!({"exp": now + 60, "iat": u64::MAX}),
                "`iat`",
            ),
            (serde_json::json!({"exp": now + 60, "iat": beyond}), "`iat`"),
            (serde_json::json!({"exp": now + 60, "nbf": u64::MAX}), "nbf"),
        ] {
            assert!(
                matches!(auth.verify(&token(times.clone())).await, Err(AuthError::Invalid(m)) if m.contains(name)),
                "{times}"
            );
        }
        let claims = auth
            .verify(&token(serde_json::json!({"exp": within, "iat": now})))
            .await
            .unwrap();
        assert!(claims.time_left() <= TIME_CLAIM_HORIZON);
    }

    #[tokio::test]
    async fn issuer_audience_and_role_claim_are_configurable() {
        let auth = Authenticator::new(&JwtConfig {
            issuer: Some("healthhub".into()),
            audience: Some("wardline".into()),
            role_claim: "https://healthhub/role".into(),
            ..config()
        })
        .unwrap();
        let exp = unix_now() + 60;
        let good = sign(
            serde_json::json!({"sub": "p1", "https://healthhub/role": "patient", "exp": exp, "iss": "healthhub", "aud": "wardline"}),
            b"unit-test-secret-0123456789",
        );
        assert_eq!(auth.verify(&good).await.unwrap().role, Role::Patient);
        let wrong_issuer = sign(
            serde_json::json!({"sub": "p1", "https://healthhub/role": "patient", "exp": exp, "iss": "other", "aud": "wardline"}),
            b"unit-test-secret-0123456789",
        );
        assert!(matches!(
            auth.verify(&wrong_issuer).await,
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            auth.verify(&auth.mint("p1", Role::Patient, &[], Duration::from_secs(5)))
                .await
                .unwrap()
                .sub,
            "p1"
        );
    }

    #[test]
    fn roles_read_and_publish_only_what_they_should() {
        let claims = |role| Claims {
            sub: "u1".into(),
            role,
            exp: 0,
            channels: vec![],
        };
        let doctor_channel = Channel::parse("doctor:u1:notifications").unwrap();
        let other_doctor = Channel::parse("doctor:u2:notifications").unwrap();
        assert!(claims(Role::Doctor).can_read(&doctor_channel));
        assert!(!claims(Role::Doctor).can_read(&other_doctor));
        assert!(!claims(Role::Patient).can_read(&doctor_channel));
        assert!(!claims(Role::Admin).can_read(&doctor_channel));
        assert!(claims(Role::Admin).can_publish(&Channel::system_alerts()));
        assert!(!claims(Role::Admin).can_publish(&doctor_channel));
        assert!(claims(Role::Service).can_publish(&other_doctor));
        assert!(!claims(Role::Doctor).can_publish(&doctor_channel));
        assert!(claims(Role::Service).can_read_stats() && !claims(Role::Patient).can_read_stats());
    }

    #[test]
    fn tokens_are_found_in_query_header_or_subprotocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_from_request(None, &headers), None);
        headers.insert(
            "sec-websocket-protocol",
            "wardline.v1, bearer.abc.def".parse().unwrap(),
        );
        assert_eq!(
            token_from_request(None, &headers).as_deref(),
            Some("abc.def")
        );
        headers.insert("authorization", "Bearer hdr".parse().unwrap());
        assert_eq!(token_from_request(None, &headers).as_deref(), Some("hdr"));
        assert_eq!(
            token_from_request(Some("q"), &headers).as_deref(),
            Some("q")
        );
    }
}
