//! Accounts: which relay and user a run acts as, and with which token, decided here once for the
//! command line and the app; and signing in and out.
//!
//! - the relay and the user: given (the command line's `--server`/`--user`, or `WARDLINE_SERVER`
//!   and `WARDLINE_USER`), else what the last sign-in remembered in the settings file;
//! - the token: `WARDLINE_TOKEN` (servers, kiosks, tests: the keychain is then never touched),
//!   else the OS keychain's entry for that relay and user.

use crate::config::Settings;
use crate::error::ReceiverError;
use crate::http;
use crate::secrets;
use crate::tls::Trust;
use wardline_protocol::Sensitive;

/// The environment variable that gives the token (the keychain is then not used).
pub const TOKEN_ENV: &str = "WARDLINE_TOKEN";

/// A relay and a user to act as, and their token.
#[derive(Debug, Clone)]
pub struct Account {
    /// The relay's base URL.
    pub server: String,
    /// The user.
    pub user: String,
    /// The token.
    pub token: Sensitive<String>,
}

/// Who a sign-in signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user.
    pub user: String,
    /// Their role, as the relay says.
    pub role: String,
    /// The relay.
    pub server: String,
}

/// Who a run acts as, at which relays (trusted how), remembered in which settings file.
#[derive(Clone)]
pub struct Accounts {
    settings: std::path::PathBuf,
    trust: Trust,
    server: Option<String>,
    user: Option<String>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("settings", &self.settings)
            .field("server", &self.server)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Accounts {
    /// Accounts remembered in the settings file at `settings`, at relays trusted by `trust`,
    /// acting as the remembered account (or the one the environment gives).
    pub fn new(settings: std::path::PathBuf, trust: Trust) -> Accounts {
        let given = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Accounts {
            settings,
            trust,
            server: given("WARDLINE_SERVER"),
            user: given("WARDLINE_USER"),
        }
    }

    /// Acts as this relay and user rather than the remembered ones, where given.
    pub fn with_account(mut self, server: Option<String>, user: Option<String>) -> Accounts {
        self.server = server.or(self.server);
        self.user = user.or(self.user);
        self
    }

    /// Which relays are trusted.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Checks `token` with the relay at `server` (a base URL, checked first), keeps it in the OS
    /// keychain and remembers relay and user for later runs.
    pub async fn sign_in(
        &self,
        server: &str,
        user: &str,
        token: &Sensitive<String>,
    ) -> Result<SignedIn, ReceiverError> {
        let server = relay_url(server).map_err(ReceiverError::SignIn)?;
        if token.expose().trim().is_empty() {
            return Err(ReceiverError::SignIn("no token given".into()));
        }
        let me = http::whoami(self.trust.http(), &server, token)
            .await
            .map_err(ReceiverError::from)?;
        if me["user"].as_str() != Some(user) {
            return Err(ReceiverError::SignIn(format!(
                "the token is for user {}, not {user}",
                me["user"]
            )));
        }
        secrets::store_token(&server, user, token).await?;
        let (remembered_server, remembered_user) = (server.clone(), user.to_owned());
        self.with_settings(move |settings| {
            Settings::update(settings, |settings| {
                settings.server = Some(remembered_server);
                settings.user = Some(remembered_user);
            })
        })
        .await?;
        Ok(SignedIn {
            user: user.to_owned(),
            role: me["role"].as_str().unwrap_or("?").to_owned(),
            server,
        })
    }

    /// Removes the account's token from the OS keychain; answers whose it was.
    pub async fn sign_out(&self) -> Result<(String, String), ReceiverError> {
        let (server, user) = self.server_and_user().await?;
        secrets::delete_token(&server, &user).await?;
        Ok((server, user))
    }

    /// The relay and user this run acts as (see the module's rule); `NotSignedIn` when neither
    /// is given nor remembered.
    pub async fn server_and_user(&self) -> Result<(String, String), ReceiverError> {
        let remembered = self.with_settings(Settings::load).await?;
        let server = self.server.clone().or(remembered.server);
        let user = self.user.clone().or(remembered.user);
        match (server, user) {
            (Some(server), Some(user)) => {
                Ok((relay_url(&server).map_err(ReceiverError::Settings)?, user))
            }
            _ => Err(ReceiverError::NotSignedIn),
        }
    }

    /// The account this run acts as, token included; `NotSignedIn` without one.
    pub async fn account(&self) -> Result<Account, ReceiverError> {
        let (server, user) = self.server_and_user().await?;
        let token = match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.trim().is_empty() => Sensitive::new(token.trim().to_owned()),
            _ => match secrets::load_token(&server, &user).await? {
                Some(token) => token,
                None => return Err(ReceiverError::NoToken { server, user }),
            },
        };
        Ok(Account {
            server,
            user,
            token,
        })
    }

    /// Runs `work` on the settings file off the async workers.
    pub(crate) async fn with_settings<T: Send + 'static>(
        &self,
        work: impl FnOnce(&std::path::Path) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ReceiverError> {
        let path = self.settings.clone();
        tokio::task::spawn_blocking(move || work(&path))
            .await
            .map_err(|e| ReceiverError::Settings(e.to_string()))?
            .map_err(ReceiverError::Settings)
    }
}

/// A relay's base URL as given, checked: `http://HOST:PORT` or `https://HOST[:PORT]`, and what to
/// give instead when it is not.
pub fn relay_url(given: &str) -> Result<String, String> {
    let url = given.trim().trim_end_matches('/');
    for ws in ["ws://", "wss://"] {
        if let Some(rest) = url.strip_prefix(ws) {
            let http = if ws == "ws://" { "http" } else { "https" };
            return Err(format!(
                "{url} is a WebSocket address: give the relay's base URL instead, {http}://{}",
                rest.split('/').next().unwrap_or(rest)
            ));
        }
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "no scheme in {url:?}: use http://HOST:PORT (e.g. http://{url}), or https://HOST for a relay with TLS"
        ));
    }
    if crate::tls::host_of(url).is_empty() {
        return Err(format!(
            "no host in {url:?}: use http://HOST:PORT or https://HOST"
        ));
    }
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_are_checked_with_what_to_give_instead() {
        assert_eq!(
            relay_url("http://relay:8851/").unwrap(),
            "http://relay:8851"
        );
        assert!(
            relay_url("ws://relay:8851/ws/d1")
                .unwrap_err()
                .contains("http://relay:8851")
        );
        assert!(relay_url("relay:8851").unwrap_err().contains("no scheme"));
        assert!(relay_url("https://:8851").unwrap_err().contains("no host"));
    }
}
