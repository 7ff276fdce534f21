//! The inbox as the rest of the receiver reaches it: an [`InboxHandle`] whose every call runs on a
//! blocking thread of the runtime, awaited, so that no async worker, and no UI thread, ever waits
//! on SQLite or the disk. The handle owns the inbox; nothing else can lock it, and calls run one
//! at a time (a task's calls in the order it makes them).
//!
//! Calls go to the runtime's blocking pool rather than to one thread of their own: tokio then
//! knows work is in flight, which keeps its paused clock (the deadline tests) from jumping ahead
//! while a row is being written.

use crate::inbox::{Inbox, InboxError};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A cheap, cloneable handle to one inbox.
#[derive(Clone)]
pub struct InboxHandle {
    inbox: Arc<Mutex<Inbox>>,
}

impl InboxHandle {
    /// Takes over an open inbox.
    pub fn new(inbox: Inbox) -> InboxHandle {
        InboxHandle {
            inbox: Arc::new(Mutex::new(inbox)),
        }
    }

    /// Opens (or creates) the inbox at `path` on a blocking thread.
    pub async fn open(path: &Path) -> Result<InboxHandle, InboxError> {
        let path = path.to_owned();
        let inbox = tokio::task::spawn_blocking(move || Inbox::open(&path))
            .await
            .map_err(|e| InboxError::Gone(e.to_string()))??;
        Ok(InboxHandle::new(inbox))
    }

    /// Runs `work` on the inbox off the async workers and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || {
            let mut inbox = inbox
                .lock()
                .map_err(|_| InboxError::Gone("an earlier inbox call panicked".into()))?;
            work(&mut inbox)
        })
        .await
        .map_err(|e| InboxError::Gone(e.to_string()))?
    }
}
