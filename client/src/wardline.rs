//! `Wardline`: the one door to the receiver for the command line and the app. It knows where the
//! files are ([`Place`]), which relays are trusted and who a run acts as ([`Accounts`]: sign-in,
//! sign-out and the rule for the account, written once), and opens the [`Receiver`] (the inbox
//! and its subscription) on them.

use crate::account::{Account, Accounts, SignedIn};
use crate::error::ReceiverError;
use crate::place::Place;
use crate::receiver::Receiver;
use crate::tls::Trust;
use wardline_protocol::Sensitive;

/// The receiver's door: where its files are, which relays it trusts, and who it acts as.
#[derive(Debug, Clone)]
pub struct Wardline {
    place: Place,
    accounts: Accounts,
}

impl Wardline {
    /// The receiver at `place`, trusting `trust`, acting as the remembered account (or the one
    /// the environment gives).
    pub fn new(place: Place, trust: Trust) -> Wardline {
        let accounts = Accounts::new(place.settings().to_owned(), trust);
        Wardline { place, accounts }
    }

    /// Acts as this relay and user rather than the remembered ones, where given.
    pub fn with_account(self, server: Option<String>, user: Option<String>) -> Wardline {
        Wardline {
            accounts: self.accounts.with_account(server, user),
            ..self
        }
    }

    /// Where the files are.
    pub fn place(&self) -> &Place {
        &self.place
    }

    /// Checks `token` with the relay at `server`, keeps it in the OS keychain and remembers relay
    /// and user for later runs (see [`Accounts::sign_in`]).
    pub async fn sign_in(
        &self,
        server: &str,
        user: &str,
        token: &Sensitive<String>,
    ) -> Result<SignedIn, ReceiverError> {
        self.accounts.sign_in(server, user, token).await
    }

    /// Removes the account's token from the OS keychain; answers whose it was (relay, user).
    pub async fn sign_out(&self) -> Result<(String, String), ReceiverError> {
        self.accounts.sign_out().await
    }

    /// The account this run acts as, token included.
    pub async fn account(&self) -> Result<Account, ReceiverError> {
        self.accounts.account().await
    }

    /// Opens the receiver, making its inbox if there is none (off the async workers: opening
    /// reads the inbox's key from the OS keychain).
    pub async fn open(&self) -> Result<Receiver, ReceiverError> {
        let (place, accounts) = (self.place.clone(), self.accounts.clone());
        tokio::task::spawn_blocking(move || Receiver::open(place, accounts))
            .await
            .map_err(|e| ReceiverError::Settings(format!("opening the inbox: {e}")))?
    }

    /// Opens the receiver on the inbox a listener made; never makes an empty one.
    pub async fn open_existing(&self) -> Result<Receiver, ReceiverError> {
        if !self.place.inbox().exists() {
            return Err(ReceiverError::NoInbox(self.place.inbox().to_owned()));
        }
        self.open().await
    }
}
