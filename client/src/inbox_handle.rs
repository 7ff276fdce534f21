//! The inbox as the rest of the receiver reaches it: an [`InboxHandle`] whose every call runs on a
//! blocking thread of the runtime, awaited, so that no async worker, and no UI thread, ever waits
//! on SQLite or the disk. The handle owns the inbox; nothing else can lock it. Writes run one at
//! a time (a task's calls in the order it makes them); reads that need not see a write in
//! progress go to a second connection ([`InboxHandle::read`]), so the window's list and counts
//! never wait behind a catch-up.
//!
//! Calls go to the runtime's blocking pool rather than to one thread of their own: tokio then
//! knows work is in flight, which keeps its paused clock (the deadline tests) from jumping ahead
//! while a row is being written.

use crate::inbox::{Inbox, InboxError};
use std::sync::{Arc, Mutex};

/// A cheap, cloneable handle to one inbox.
#[derive(Clone)]
pub struct InboxHandle {
    inbox: Arc<Mutex<Inbox>>,
    /// A second connection for reads (WAL lets it read while `inbox` writes); the writer's when
    /// none could be opened.
    reader: Arc<Mutex<Inbox>>,
}

impl InboxHandle {
    /// Takes over an open inbox (and opens a second connection to it for reading).
    pub fn new(inbox: Inbox) -> InboxHandle {
        let reader = inbox.reader();
        let inbox = Arc::new(Mutex::new(inbox));
        let reader = match reader {
            Ok(reader) => Arc::new(Mutex::new(reader)),
            Err(e) => {
                tracing::warn!(error = %e, "no second inbox connection: reads wait for writes");
                inbox.clone()
            }
        };
        InboxHandle { inbox, reader }
    }

    /// Runs `work` on the inbox off the async workers and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        run_on(self.inbox.clone(), work).await
    }

    /// Runs `work`, which only reads, on the reading connection: it does not wait for a write in
    /// progress (a catch-up storing thousands).
    pub async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        run_on(self.reader.clone(), move |inbox| work(inbox)).await
    }
}

async fn run_on<T: Send + 'static>(
    inbox: Arc<Mutex<Inbox>>,
    work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
) -> Result<T, InboxError> {
    tokio::task::spawn_blocking(move || {
        let mut inbox = inbox
            .lock()
            .map_err(|_| InboxError::Gone("an earlier inbox call panicked".into()))?;
        work(&mut inbox)
    })
    .await
    .map_err(|e| InboxError::Gone(e.to_string()))?
}
