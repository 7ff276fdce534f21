//! The receiver's events, carried to the window and the tray at a pace the app's main thread can
//! keep while it also carries the window's commands.
//!
//! A catch-up stores thousands of notifications a second. The window refreshes on any event and
//! reads the rows itself, so it is told of stored notifications at most once per [`WINDOW_PACE`]
//! (the last of them); every other event (connection, gaps, alert settings, an alert clicked) goes
//! at once. For stored notifications the tray is repainted at most once per [`TRAY_PACE`]; for
//! anything else at once. Both always get the last word: what was held back is sent when the pace
//! allows. Measured with `cargo xtask bench app` (a
//! catch-up of 10,000): told per stored burst, the window refreshed back to back and its commands
//! waited 23–54 ms at the median, up to 100 ms; paced, 5 ms at the median.

use crate::EVENT;
use std::time::Duration;
use tauri::{AppHandle, Emitter};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use wardline_client::Event;

/// The shortest time between two refreshes of the window for stored notifications. The first
/// notification after a quiet spell goes at once; in a burst the list moves twice a second, which
/// a person can follow. The OS alert, raised by the receiver, never waits for it.
pub const WINDOW_PACE: Duration = Duration::from_millis(500);

/// The shortest time between two repaints of the tray (its icon and the counts in its menu) for
/// stored notifications.
pub const TRAY_PACE: Duration = Duration::from_secs(1);

/// Forwards `events` until the receiver is gone.
pub fn spawn(handle: AppHandle, events: broadcast::Receiver<Event>) {
    tauri::async_runtime::spawn(forward(handle, events));
}

async fn forward(handle: AppHandle, mut events: broadcast::Receiver<Event>) {
    let mut held = Held::default();
    let mut window_told = Instant::now() - WINDOW_PACE;
    let mut tray_painted = Instant::now() - TRAY_PACE;
    loop {
        let due = held.due(window_told, tray_painted);
        let received = match due {
            Some(due) => tokio::select! {
                received = events.recv() => Some(received),
                () = tokio::time::sleep_until(due) => None,
            },
            None => Some(events.recv().await),
        };
        match received {
            Some(Ok(event)) => held.take(&handle, event),
            // Fell behind (unlikely: this loop only waits for the tray): what was missed is in the
            // inbox, which the next event makes the window read; the tray reads it now.
            Some(Err(RecvError::Lagged(_))) => held.tray_now = true,
            Some(Err(RecvError::Closed)) => return,
            None => {}
        }
        // Whatever else is queued belongs to the same burst.
        while let Ok(event) = events.try_recv() {
            held.take(&handle, event);
        }
        let now = Instant::now();
        if now >= window_told + WINDOW_PACE
            && let Some(stored) = held.stored.take()
        {
            let _ = handle.emit(EVENT, stored);
            window_told = now;
        }
        if held.tray_now || (held.tray && now >= tray_painted + TRAY_PACE) {
            let for_tray = std::mem::take(&mut held.for_tray);
            #[cfg(desktop)]
            crate::tray::reflect(&handle, &for_tray).await;
            #[cfg(mobile)]
            let _ = for_tray;
            (held.tray, held.tray_now) = (false, false);
            tray_painted = Instant::now();
        }
    }
}

/// What the window and the tray have not been told yet.
#[derive(Default)]
struct Held {
    /// The last notification stored since the window was last told of one.
    stored: Option<Event>,
    /// The tray's counts need repainting (notifications were stored).
    tray: bool,
    /// The tray needs repainting now (the connection, the alert settings or the sign-in changed).
    tray_now: bool,
    /// Events since the last repaint that change more than the tray's icon and counts.
    for_tray: Vec<Event>,
}

impl Held {
    /// Takes in one event: a stored notification is held, anything else goes to the window now.
    fn take(&mut self, handle: &AppHandle, event: Event) {
        match event {
            Event::NotificationStored { .. } => {
                self.stored = Some(event);
                self.tray = true;
            }
            other => {
                self.tray_now = true;
                if let Event::AlertOpened { .. } = other {
                    crate::commands::show_main_window(handle);
                }
                let _ = handle.emit(EVENT, &other);
                if let Event::AlertSettingsChanged { .. } = other {
                    self.for_tray.push(other);
                }
            }
        }
    }

    /// When something held back may go, if anything is.
    fn due(&self, window_told: Instant, tray_painted: Instant) -> Option<Instant> {
        let window = self.stored.as_ref().map(|_| window_told + WINDOW_PACE);
        let tray = self.tray.then_some(tray_painted + TRAY_PACE);
        match (window, tray) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
