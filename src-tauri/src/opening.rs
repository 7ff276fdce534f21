//! The receiver, opened off the main thread. Opening it reads the inbox's key from the OS keychain
//! and opens SQLite, either of which may take a while (a keychain waiting to be unlocked): on Tauri's
//! main thread that would freeze the window and the tray. The app manages an [`AppReceiver`] at once;
//! the receiver is opened on a blocking thread and put in it, commands wait for it, and the tray and
//! alert actions leave alone what comes before it.

use std::sync::Arc;
use tokio::sync::watch;
use wardline_client::{Receiver, Wardline};

/// The app's receiver once open, or why it could not be opened.
pub struct AppReceiver(watch::Sender<Option<Opened>>);

type Opened = Result<Arc<Receiver>, String>;

impl AppReceiver {
    /// Opens the receiver through `wardline` (off the async workers; an error making the door is
    /// an error opening); the returned slot holds it when open.
    pub fn open(wardline: Result<Wardline, String>) -> (AppReceiver, impl Future<Output = Opened>) {
        let (slot, _) = watch::channel(None);
        let sender = slot.clone();
        let opening = async move {
            let opened = match wardline {
                Ok(wardline) => wardline
                    .open()
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            sender.send_replace(Some(opened.clone()));
            opened
        };
        (AppReceiver(slot), opening)
    }

    /// The receiver, waiting while it opens.
    pub async fn get(&self) -> Opened {
        let mut opened = self.0.subscribe();
        let value = opened
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the app is closing".to_owned())?;
        value.clone().expect("waited for Some")
    }

    /// The receiver if it is open now.
    pub fn now(&self) -> Option<Arc<Receiver>> {
        self.0
            .borrow()
            .as_ref()
            .and_then(|opened| opened.clone().ok())
    }
}
