//! The embedded broker: one relay node, no Redis, history in a SQLite file in the data dir, so a
//! single-node clinic survives restarts.
//!
//! Every write goes through one connection behind a mutex on a blocking thread. Ids are assigned,
//! stored and handed to the hub under that mutex, so live delivery is in id order, and a subscriber
//! that reads history after subscribing misses nothing in between (see `subscribe`).

use super::tracking::{
    Chain, ChainState, ClaimedStep, MAX_TRAIL_DEVICES_PER_USER, Step, TrailEvent,
};
use super::{
    Broker, BrokerError, BrokerHealth, ChannelEnd, HistoryPage, Live, LiveSender, Publish,
    Published, Receipt, Retention, StoredMessage, now_ms,
};
use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use wardline_protocol::{Channel, Cursor, Priority, ReceiptKind};

/// Each migration moves the schema one version up; `PRAGMA user_version` says where a file is.
/// Version 1 uses `IF NOT EXISTS`: files written before versioning already have its tables.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    priority TEXT NOT NULL,
    ttl_ms INTEGER,
    idempotency_key TEXT,
    payload BLOB NOT NULL,
    PRIMARY KEY (channel, ms, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency
    ON messages (channel, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS trimmed (
    channel TEXT PRIMARY KEY,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (channel, ms, seq, user, kind)
) WITHOUT ROWID;
",
    "
-- One row, rewritten by the readiness probe: can a publish be stored now?
CREATE TABLE IF NOT EXISTS write_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
-- The history's epoch, named when this file is made: a history file replaced by a new one has
-- another, and devices resuming with the old one hear that what they missed may be lost.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(8))));
",
    "
-- Escalation chains (see broker::tracking): one per notification published with a policy.
CREATE TABLE chains (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    policy TEXT NOT NULL,
    priority TEXT NOT NULL,
    state TEXT NOT NULL,
    acknowledged_by TEXT,
    expires INTEGER,
    PRIMARY KEY (channel, ms, seq)
) WITHOUT ROWID;
CREATE INDEX chains_state ON chains (state, ms);
-- Their steps still to come, by due time (a claimed step's is moved a lease ahead).
CREATE TABLE steps (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    step TEXT NOT NULL,
    due INTEGER NOT NULL,
    PRIMARY KEY (channel, ms, seq, step)
) WITHOUT ROWID;
CREATE INDEX steps_due ON steps (due);
-- Every notification's trail, one JSON event per row, in the order they happened.
CREATE TABLE trail (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX trail_message ON trail (channel, ms, seq);
-- The first receipt of each kind per device: what goes into the trail.
CREATE TABLE device_receipts (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (channel, ms, seq, user, device, kind)
) WITHOUT ROWID;
-- Escalations and the notification each one escalated.
CREATE TABLE origins (
    channel TEXT NOT NULL,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    origin_channel TEXT NOT NULL,
    origin_ms INTEGER NOT NULL,
    origin_seq INTEGER NOT NULL,
    PRIMARY KEY (channel, ms, seq)
) WITHOUT ROWID;
",
];

/// Tables whose rows belong to one notification (`channel, ms, seq`): trimmed with it.
const PER_MESSAGE_TABLES: &[&str] = &[
    "messages",
    "receipts",
    "chains",
    "steps",
    "trail",
    "device_receipts",
    "origins",
];

/// Brings a history file to the current schema, in one transaction per version; refuses a file
/// written by a newer relay rather than guess.
fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(format!(
            "schema version {version} is newer than this relay knows ({known}): run the newer relay, or move the file away to start a new history"
        ));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        if index == 0 {
            receipts_with_kinds(&tx).map_err(|e| e.to_string())?;
        }
        tx.execute_batch(migration).map_err(|e| e.to_string())?;
        tx.pragma_update(None, "user_version", index as i64 + 1)
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Receipts from before they had kinds (one `acked_at` per user) become `acknowledged` receipts.
fn receipts_with_kinds(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let has_acked_at: bool = tx.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('receipts') WHERE name = 'acked_at'",
        [],
        |row| row.get(0),
    )?;
    if has_acked_at {
        tx.execute_batch(
            "ALTER TABLE receipts RENAME TO receipts_without_kinds;
             CREATE TABLE receipts (
                 channel TEXT NOT NULL, ms INTEGER NOT NULL, seq INTEGER NOT NULL,
                 user TEXT NOT NULL, kind TEXT NOT NULL, at INTEGER NOT NULL,
                 PRIMARY KEY (channel, ms, seq, user, kind)
             ) WITHOUT ROWID;
             INSERT INTO receipts SELECT channel, ms, seq, user, 'acknowledged', acked_at
                 FROM receipts_without_kinds;
             DROP TABLE receipts_without_kinds;",
        )?;
    }
    Ok(())
}

struct Store {
    conn: Connection,
    epoch: String,
    last_id: Cursor,
    writes_since_trim: HashMap<Channel, u64>,
}

/// A broker for a single relay node, on SQLite.
pub struct EmbeddedBroker {
    store: Arc<Mutex<Store>>,
    subscribed: Arc<Mutex<HashSet<Channel>>>,
    live: LiveSender,
    health: watch::Sender<BrokerHealth>,
    retention: Retention,
    /// Receipts are written one write at a time (waiting here, in turn, not on the store's lock):
    /// however many devices send receipts at once, a publish waits for at most one of them.
    receipt_writer: tokio::sync::Semaphore,
}

/// The device a receipt names in the trail: `device`, unless the user's receipts already named
/// [`MAX_TRAIL_DEVICES_PER_USER`] others for this notification (then none).
fn trail_device<'d>(
    tx: &rusqlite::Transaction<'_>,
    channel: &Channel,
    id: Cursor,
    user: &str,
    device: Option<&'d str>,
) -> rusqlite::Result<Option<&'d str>> {
    let Some(device) = device else {
        return Ok(None);
    };
    let named: Vec<String> = tx
        .prepare_cached(
            "SELECT DISTINCT device FROM device_receipts
             WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND user = ?4 AND device != ''",
        )?
        .query_map(params![channel.as_str(), id.ms, id.seq, user], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    let known = named.iter().any(|d| d == device);
    Ok((known || named.len() < MAX_TRAIL_DEVICES_PER_USER).then_some(device))
}

/// Records `user`'s receipts in one transaction (see [`Broker::record_receipts`]).
fn record_receipts(
    store: &mut Store,
    channel: &Channel,
    ids: &[Cursor],
    user: &str,
    device: Option<&str>,
    kind: ReceiptKind,
) -> Result<Vec<Cursor>, BrokerError> {
    let tx = store.conn.transaction().map_err(storage)?;
    let now = now_ms();
    let mut recorded = Vec::with_capacity(ids.len());
    {
        // Prepared once per connection, not per id: a write of a hundred ids holds the store (and
        // the publishes waiting for it) for as short a time as it can.
        let mut is_stored = tx
            .prepare_cached("SELECT 1 FROM messages WHERE channel = ?1 AND ms = ?2 AND seq = ?3")
            .map_err(storage)?;
        let mut insert_receipt = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO receipts (channel, ms, seq, user, kind, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(storage)?;
        let mut insert_device_receipt = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO device_receipts (channel, ms, seq, user, device, kind)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(storage)?;
        for &id in ids {
            let stored = is_stored
                .query_row(params![channel.as_str(), id.ms, id.seq], |_| Ok(()))
                .optional()
                .map_err(storage)?
                .is_some();
            if !stored {
                continue;
            }
            insert_receipt
                .execute(params![
                    channel.as_str(),
                    id.ms,
                    id.seq,
                    user,
                    kind.as_str(),
                    now
                ])
                .map_err(storage)?;
            let device = trail_device(&tx, channel, id, user, device).map_err(storage)?;
            let first_on_device = insert_device_receipt
                .execute(params![
                    channel.as_str(),
                    id.ms,
                    id.seq,
                    user,
                    device.unwrap_or_default(),
                    kind.as_str()
                ])
                .map_err(storage)?
                > 0;
            if first_on_device {
                let event = TrailEvent {
                    at_ms: now,
                    event: kind.into(),
                    user: Some(user.to_owned()),
                    device: device.map(str::to_owned),
                    detail: None,
                };
                append_trail(&tx, channel, id, &event).map_err(storage)?;
            }
            recorded.push(id);
        }
    }
    tx.commit().map_err(storage)?;
    Ok(recorded)
}

fn storage(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

/// A failed write: a full disk, a read-only or vanished file is the history being unavailable
/// (503: retry later; `/readyz` says so too), anything else a storage error.
fn write_failed(e: rusqlite::Error) -> BrokerError {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DiskFull | ReadOnly | CannotOpen | SystemIoFailure) => {
            BrokerError::Unavailable(format!("the history cannot be written: {e}"))
        }
        _ => storage(e),
    }
}

/// Writes the probe row: what `/readyz` and the start check ask, "could a publish be stored?".
fn probe_write(conn: &Connection) -> Result<(), BrokerError> {
    conn.execute(
        "INSERT INTO write_probe (id, at) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        [now_ms()],
    )
    .map(|_| ())
    .map_err(write_failed)
}

/// Copies the embedded broker's history in `data_dir` into `to`, consistent as of one moment,
/// while a relay keeps running on it (SQLite's `VACUUM INTO` through a read-only connection: it
/// neither blocks nor is blocked by the relay's writes). `to` must not exist; it is created
/// readable by its owner only (it holds patient details). Returns its size in bytes.
/// To restore: stop the relay, put the copy in the data dir as `history.sqlite3` (removing any
/// `history.sqlite3-wal` and `-shm` beside it), start the relay.
pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<u64> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let from = data_dir.join("history.sqlite3");
    anyhow::ensure!(
        from.exists(),
        "no history at {} (is this the relay's data dir?)",
        from.display()
    );
    let conn = Connection::open_with_flags(&from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", from.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Created empty and private first, so the copy is never readable by others, even for a moment.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let target = to.to_str().context("a backup path that is not UTF-8")?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [target]) {
        let _ = std::fs::remove_file(to);
        return Err(e).with_context(|| format!("copying {} into {}", from.display(), to.display()));
    }
    Ok(std::fs::metadata(to)?.len())
}

impl EmbeddedBroker {
    /// Opens (or creates) `history.sqlite3` in `data_dir`.
    pub fn open(
        data_dir: &Path,
        retention: Retention,
        live: LiveSender,
    ) -> Result<EmbeddedBroker, BrokerError> {
        crate::data_dir::make_private(data_dir).map_err(|e| storage(format!("{e:#}")))?;
        crate::data_dir::check_writable(data_dir).map_err(|e| storage(format!("{e:#}")))?;
        let path = data_dir.join("history.sqlite3");
        crate::data_dir::create_private_file(&path)
            .map_err(|e| storage(format!("{}: {e}", path.display())))?;
        let mut conn =
            Connection::open(&path).map_err(|e| storage(format!("{}: {e}", path.display())))?;
        // FULL: a publish answered "published" must survive a power cut, not only a crash.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )
        .map_err(|e| e.to_string())
        .and_then(|_| migrate(&mut conn))
        .map_err(|e| storage(format!("{}: {e}", path.display())))?;
        let last_id = conn
            .query_row(
                "SELECT ms, seq FROM messages ORDER BY ms DESC, seq DESC LIMIT 1",
                [],
                |row| Ok(Cursor::new(row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(storage)?
            .unwrap_or_default();
        // A full disk may clear: the relay starts, not ready until it does.
        if let Err(e) = probe_write(&conn) {
            tracing::warn!(error = %e, "the history cannot be written now; /readyz answers 503 until it can");
        }
        let epoch: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
                row.get(0)
            })
            .map_err(storage)?;
        let store = Store {
            conn,
            epoch,
            last_id,
            writes_since_trim: HashMap::new(),
        };
        let broker = EmbeddedBroker {
            store: Arc::new(Mutex::new(store)),
            subscribed: Arc::new(Mutex::new(HashSet::new())),
            live,
            health: watch::Sender::new(BrokerHealth::Up),
            retention,
            receipt_writer: tokio::sync::Semaphore::new(1),
        };
        broker.spawn_age_trimmer();
        Ok(broker)
    }

    /// Trims every channel by age once a minute, so quiet channels age out too.
    fn spawn_age_trimmer(&self) {
        let store = Arc::downgrade(&self.store);
        let retention = self.retention;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(store) = store.upgrade() else { return };
                let result = tokio::task::spawn_blocking(move || {
                    let mut store = store.lock().expect("store lock");
                    let channels: Vec<String> = {
                        let mut stmt = store
                            .conn
                            .prepare("SELECT DISTINCT channel FROM messages")?;
                        stmt.query_map([], |row| row.get(0))?
                            .collect::<Result<_, _>>()?
                    };
                    for name in channels {
                        if let Ok(channel) = Channel::parse(&name) {
                            trim(&mut store, &channel, retention)?;
                        }
                    }
                    Ok::<_, rusqlite::Error>(())
                })
                .await;
                if let Ok(Err(e)) = result {
                    tracing::error!(error = %e, "trimming history failed");
                }
            }
        });
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&mut store.lock().expect("store lock")))
            .await
            .map_err(storage)?
    }
}

/// Deletes what is older than the retention or beyond its length, remembering the newest deleted id
/// so that a cursor before it is reported as a gap.
fn trim(store: &mut Store, channel: &Channel, retention: Retention) -> Result<(), rusqlite::Error> {
    let cutoff_ms = now_ms().saturating_sub(retention.max_age.as_millis() as u64);
    let by_age: Option<(u64, u64)> = store
        .conn
        .query_row(
            "SELECT ms, seq FROM messages WHERE channel = ?1 AND ms < ?2 ORDER BY ms DESC, seq DESC LIMIT 1",
            params![channel.as_str(), cutoff_ms],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let by_len: Option<(u64, u64)> = store
        .conn
        .query_row(
            "SELECT ms, seq FROM messages WHERE channel = ?1 ORDER BY ms DESC, seq DESC LIMIT 1 OFFSET ?2",
            params![channel.as_str(), retention.max_len],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some(through) = by_age
        .into_iter()
        .chain(by_len)
        .map(|(ms, seq)| Cursor::new(ms, seq))
        .max()
    else {
        return Ok(());
    };
    let tx = store.conn.transaction()?;
    for table in PER_MESSAGE_TABLES {
        tx.execute(
            &format!(
                "DELETE FROM {table} WHERE channel = ?1 AND (ms < ?2 OR (ms = ?2 AND seq <= ?3))"
            ),
            params![channel.as_str(), through.ms, through.seq],
        )?;
    }
    tx.execute(
        "INSERT INTO trimmed (channel, ms, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel) DO UPDATE SET ms = excluded.ms, seq = excluded.seq
         WHERE excluded.ms > trimmed.ms OR (excluded.ms = trimmed.ms AND excluded.seq > trimmed.seq)",
        params![channel.as_str(), through.ms, through.seq],
    )?;
    tx.commit()
}

/// Stores a new notification's escalation chain and its first steps, due after its id's time.
fn start_chain(
    conn: &Connection,
    publish: &Publish,
    id: Cursor,
    policy: &super::tracking::Policy,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO chains (channel, ms, seq, policy, priority, state, expires)
         VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6)",
        params![
            publish.channel.as_str(),
            id.ms,
            id.seq,
            serde_json::to_string(policy).expect("policies serialize"),
            publish.priority.as_str(),
            publish.ttl.map(|ttl| id.ms + ttl.as_millis() as u64),
        ],
    )?;
    for (step, after) in policy.first_steps() {
        conn.execute(
            "INSERT INTO steps (channel, ms, seq, step, due) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                publish.channel.as_str(),
                id.ms,
                id.seq,
                step.to_string(),
                id.ms + after.as_millis() as u64
            ],
        )?;
    }
    Ok(())
}

fn append_trail(
    conn: &Connection,
    channel: &Channel,
    id: Cursor,
    event: &TrailEvent,
) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO trail (channel, ms, seq, event) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![channel.as_str(), id.ms, id.seq, event.to_json()])
        .map(|_| ())
}

/// Closes a chain if it is open; answers whether it was.
fn close_chain(conn: &Connection, channel: &str, id: Cursor, user: &str) -> rusqlite::Result<bool> {
    conn.execute(
        "UPDATE chains SET state = 'acknowledged', acknowledged_by = ?4
         WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND state = 'open'",
        params![channel, id.ms, id.seq, user],
    )
    .map(|n| n > 0)
}

fn row_to_message(channel: &Channel, row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let priority: String = row.get(2)?;
    let ttl_ms: Option<u64> = row.get(3)?;
    let payload: Vec<u8> = row.get(4)?;
    Ok(StoredMessage {
        id: Cursor::new(row.get(0)?, row.get(1)?),
        channel: channel.clone(),
        priority: Priority::parse(&priority).unwrap_or(Priority::Normal),
        ttl: ttl_ms.map(Duration::from_millis),
        payload: Bytes::from(payload),
    })
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError> {
        let subscribed = self.subscribed.clone();
        let live = self.live.clone();
        let retention = self.retention;
        self.blocking(move |store| {
            if let Some(key) = &publish.idempotency_key {
                let existing = store
                    .conn
                    .query_row(
                        "SELECT ms, seq, priority, ttl_ms, payload FROM messages
                         WHERE channel = ?1 AND idempotency_key = ?2",
                        params![publish.channel.as_str(), key],
                        |row| {
                            let same = row.get::<_, String>(2)? == publish.priority.as_str()
                                && row.get::<_, Option<u64>>(3)? == publish.ttl.map(|t| t.as_millis() as u64)
                                && row.get_ref(4)?.as_blob()? == publish.payload.as_ref();
                            Ok((Cursor::new(row.get(0)?, row.get(1)?), same))
                        },
                    )
                    .optional()
                    .map_err(storage)?;
                match existing {
                    Some((id, true)) => return Ok(Published { id, live_relays: 0, duplicate: true }),
                    Some((id, false)) => return Err(BrokerError::IdempotencyConflict(id)),
                    None => {}
                }
            }
            let now = now_ms();
            let id = if now > store.last_id.ms { Cursor::new(now, 0) } else { store.last_id.next() };
            store
                .conn
                .execute(
                    "INSERT INTO messages (channel, ms, seq, priority, ttl_ms, idempotency_key, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        publish.channel.as_str(),
                        id.ms,
                        id.seq,
                        publish.priority.as_str(),
                        publish.ttl.map(|ttl| ttl.as_millis() as u64),
                        publish.idempotency_key,
                        publish.payload.as_ref(),
                    ],
                )
                .map_err(write_failed)?;
            if let Some(policy) = publish.escalation.as_ref().filter(|p| !p.is_empty()) {
                start_chain(&store.conn, &publish, id, policy).map_err(write_failed)?;
            }
            store.last_id = id;
            let writes = store.writes_since_trim.entry(publish.channel.clone()).or_default();
            *writes += 1;
            if *writes >= (retention.max_len / 100).max(1) {
                *writes = 0;
                // The notification is stored: a trim that fails (a full disk) is retried with a
                // later publish or by the minute's trimmer, and does not make the publish a failure.
                if let Err(e) = trim(store, &publish.channel, retention) {
                    tracing::warn!(error = %e, channel = ?publish.channel.as_str(), "trimming history failed");
                }
            }
            let message = StoredMessage {
                id,
                channel: publish.channel,
                priority: publish.priority,
                ttl: publish.ttl,
                payload: publish.payload,
            };
            let is_live = subscribed.lock().expect("subscribed lock").contains(&message.channel);
            // Handed over under the store lock, so live delivery follows id order.
            if is_live && live.blocking_send(Live::Message(message)).is_err() {
                return Err(BrokerError::Unavailable("the relay is shutting down".into()));
            }
            Ok(Published { id, live_relays: u64::from(is_live), duplicate: false })
        })
        .await
    }

    async fn history(
        &self,
        channel: &Channel,
        after: Cursor,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            let trimmed_through: Option<Cursor> = store
                .conn
                .query_row(
                    "SELECT ms, seq FROM trimmed WHERE channel = ?1",
                    params![channel.as_str()],
                    |row| Ok(Cursor::new(row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(storage)?;
            let mut stmt = store
                .conn
                .prepare_cached(
                    "SELECT ms, seq, priority, ttl_ms, payload FROM messages
                     WHERE channel = ?1 AND (ms > ?2 OR (ms = ?2 AND seq > ?3))
                     ORDER BY ms, seq LIMIT ?4",
                )
                .map_err(storage)?;
            let mut messages = stmt
                .query_map(
                    params![channel.as_str(), after.ms, after.seq, limit as u64 + 1],
                    |row| row_to_message(&channel, row),
                )
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?;
            let more = messages.len() > limit;
            messages.truncate(limit);
            let through = messages.last().map(|m| m.id);
            let now = now_ms();
            messages.retain(|m| !m.expired_at(now));
            // From zero too: a device that first subscribed to an empty channel holds cursor 0-0, and
            // must hear that what it missed since was trimmed.
            let gap = trimmed_through.is_some_and(|t| after < t);
            let newest = store
                .conn
                .query_row(
                    "SELECT ms, seq FROM messages WHERE channel = ?1 ORDER BY ms DESC, seq DESC LIMIT 1",
                    params![channel.as_str()],
                    |row| Ok(Cursor::new(row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(storage)?;
            Ok(HistoryPage {
                messages,
                gap,
                more,
                through,
                end: newest.max(trimmed_through),
                epoch: store.epoch.clone(),
            })
        })
        .await
    }

    async fn channel_end(&self, channel: &Channel) -> Result<ChannelEnd, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            let newest = |sql: &str| {
                store
                    .conn
                    .query_row(sql, params![channel.as_str()], |row| Ok(Cursor::new(row.get(0)?, row.get(1)?)))
                    .optional()
                    .map_err(storage)
            };
            let stored = newest("SELECT ms, seq FROM messages WHERE channel = ?1 ORDER BY ms DESC, seq DESC LIMIT 1")?;
            let trimmed = newest("SELECT ms, seq FROM trimmed WHERE channel = ?1")?;
            Ok(ChannelEnd { last: stored.max(trimmed), epoch: store.epoch.clone() })
        })
        .await
    }

    async fn subscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.subscribed
            .lock()
            .expect("subscribed lock")
            .insert(channel.clone());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &Channel) -> Result<(), BrokerError> {
        self.subscribed
            .lock()
            .expect("subscribed lock")
            .remove(channel);
        Ok(())
    }

    async fn record_receipts(
        &self,
        channel: &Channel,
        ids: &[Cursor],
        user: &str,
        device: Option<&str>,
        kind: ReceiptKind,
    ) -> Result<Vec<Cursor>, BrokerError> {
        let (channel, ids, user) = (channel.clone(), ids.to_vec(), user.to_owned());
        let device = device.map(str::to_owned);
        let _turn = self.receipt_writer.acquire().await.map_err(storage)?;
        self.blocking(move |store| {
            // Receipts commit without waiting for the disk (WAL, synchronous=NORMAL): the next
            // publish's commit syncs them, and a power cut in between forgets a receipt, never a
            // notification: an acknowledgement lost so makes the chain remind again, not go quiet.
            store
                .conn
                .execute_batch("PRAGMA synchronous=NORMAL")
                .map_err(storage)?;
            let recorded = record_receipts(store, &channel, &ids, &user, device.as_deref(), kind);
            store
                .conn
                .execute_batch("PRAGMA synchronous=FULL")
                .map_err(storage)?;
            recorded
        })
        .await
    }

    async fn receipts(&self, channel: &Channel, id: Cursor) -> Result<Vec<Receipt>, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            let mut stmt = store
                .conn
                .prepare_cached(
                    "SELECT user, kind, at FROM receipts WHERE channel = ?1 AND ms = ?2 AND seq = ?3 ORDER BY at",
                )
                .map_err(storage)?;
            stmt.query_map(params![channel.as_str(), id.ms, id.seq], |row| {
                let kind: String = row.get(1)?;
                Ok(Receipt {
                    user: row.get(0)?,
                    kind: ReceiptKind::parse(&kind).unwrap_or(ReceiptKind::Received),
                    at_ms: row.get(2)?,
                })
            })
            .map_err(storage)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)
        })
        .await
    }

    async fn message(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<StoredMessage>, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            store
                .conn
                .query_row(
                    "SELECT ms, seq, priority, ttl_ms, payload FROM messages
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3",
                    params![channel.as_str(), id.ms, id.seq],
                    |row| row_to_message(&channel, row),
                )
                .optional()
                .map_err(storage)
        })
        .await
    }

    async fn broadcast(&self, live: Live) -> Result<(), BrokerError> {
        self.live
            .send(live)
            .await
            .map_err(|_| BrokerError::Unavailable("the relay is shutting down".into()))
    }

    async fn chain(&self, channel: &Channel, id: Cursor) -> Result<Option<Chain>, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            store
                .conn
                .query_row(
                    "SELECT policy, priority, state, acknowledged_by, expires FROM chains
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3",
                    params![channel.as_str(), id.ms, id.seq],
                    |row| {
                        let policy: String = row.get(0)?;
                        let priority: String = row.get(1)?;
                        let state: String = row.get(2)?;
                        Ok((policy, priority, state, row.get(3)?, row.get(4)?))
                    },
                )
                .optional()
                .map_err(storage)?
                .map(|(policy, priority, state, acknowledged_by, expires_ms)| {
                    Ok(Chain {
                        policy: serde_json::from_str(&policy).map_err(storage)?,
                        priority: Priority::parse(&priority).unwrap_or(Priority::Critical),
                        state: ChainState::parse(&state).unwrap_or(ChainState::Open),
                        acknowledged_by,
                        expires_ms,
                    })
                })
                .transpose()
        })
        .await
    }

    async fn trail(&self, channel: &Channel, id: Cursor) -> Result<Vec<TrailEvent>, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            let mut stmt = store
                .conn
                .prepare_cached(
                    "SELECT event FROM trail WHERE channel = ?1 AND ms = ?2 AND seq = ?3 ORDER BY rowid",
                )
                .map_err(storage)?;
            let events = stmt
                .query_map(params![channel.as_str(), id.ms, id.seq], |row| {
                    row.get::<_, String>(0)
                })
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?;
            Ok(events
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect())
        })
        .await
    }

    async fn append_trail(
        &self,
        channel: &Channel,
        id: Cursor,
        event: TrailEvent,
    ) -> Result<(), BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            append_trail(&store.conn, &channel, id, &event).map_err(write_failed)
        })
        .await
    }

    async fn claim_steps(
        &self,
        now_ms: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStep>, BrokerError> {
        self.blocking(move |store| {
            let tx = store.conn.transaction().map_err(storage)?;
            tx.execute(
                "UPDATE chains SET state = 'expired' WHERE state = 'open' AND expires <= ?1",
                [now_ms],
            )
            .map_err(write_failed)?;
            tx.execute(
                "DELETE FROM steps WHERE due <= ?1 AND NOT EXISTS (
                     SELECT 1 FROM chains c WHERE c.channel = steps.channel AND c.ms = steps.ms
                     AND c.seq = steps.seq AND c.state = 'open')",
                [now_ms],
            )
            .map_err(write_failed)?;
            let due: Vec<(String, u64, u64, String, String)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT s.channel, s.ms, s.seq, s.step, c.policy FROM steps s
                         JOIN chains c ON c.channel = s.channel AND c.ms = s.ms AND c.seq = s.seq
                         WHERE s.due <= ?1 ORDER BY s.due LIMIT ?2",
                    )
                    .map_err(storage)?;
                stmt.query_map(params![now_ms, limit as u64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
                })
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?
            };
            let mut claimed = Vec::with_capacity(due.len());
            let lease_until_ms = now_ms + lease.as_millis() as u64;
            for (channel, ms, seq, step, policy) in due {
                tx.execute(
                    "UPDATE steps SET due = ?5 WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND step = ?4",
                    params![channel, ms, seq, step, lease_until_ms],
                )
                .map_err(write_failed)?;
                let parsed = (|| {
                    Some(ClaimedStep {
                        channel: Channel::parse(&channel).ok()?,
                        id: Cursor::new(ms, seq),
                        step: step.parse().ok()?,
                        policy: serde_json::from_str(&policy).ok()?,
                        lease_until_ms,
                    })
                })();
                match parsed {
                    Some(step) => claimed.push(step),
                    None => tracing::warn!(%channel, %step, "unreadable escalation step skipped"),
                }
            }
            tx.commit().map_err(write_failed)?;
            Ok(claimed)
        })
        .await
    }

    async fn renew_step(
        &self,
        step: &mut ClaimedStep,
        lease_until_ms: u64,
    ) -> Result<bool, BrokerError> {
        let claimed = step.clone();
        let renewed = self
            .blocking(move |store| {
                store
                    .conn
                    .execute(
                        "UPDATE steps SET due = ?6
                         WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND step = ?4 AND due = ?5",
                        params![
                            claimed.channel.as_str(),
                            claimed.id.ms,
                            claimed.id.seq,
                            claimed.step.to_string(),
                            claimed.lease_until_ms,
                            lease_until_ms
                        ],
                    )
                    .map(|changed| changed == 1)
                    .map_err(write_failed)
            })
            .await?;
        if renewed {
            step.lease_until_ms = lease_until_ms;
        }
        Ok(renewed)
    }

    async fn finish_step(
        &self,
        step: &ClaimedStep,
        event: Option<TrailEvent>,
        next: Option<(Step, u64)>,
    ) -> Result<(), BrokerError> {
        let step = step.clone();
        self.blocking(move |store| {
            let tx = store.conn.transaction().map_err(storage)?;
            let (channel, id) = (step.channel.as_str(), step.id);
            tx.execute(
                "DELETE FROM steps WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND step = ?4",
                params![channel, id.ms, id.seq, step.step.to_string()],
            )
            .map_err(write_failed)?;
            if let Some(event) = &event {
                append_trail(&tx, &step.channel, id, event).map_err(write_failed)?;
            }
            if let Some((next, due)) = next {
                tx.execute(
                    "INSERT OR REPLACE INTO steps (channel, ms, seq, step, due)
                     SELECT ?1, ?2, ?3, ?4, ?5 FROM chains
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND state = 'open'",
                    params![channel, id.ms, id.seq, next.to_string(), due],
                )
                .map_err(write_failed)?;
            }
            tx.commit().map_err(write_failed)
        })
        .await
    }

    async fn advance_step(
        &self,
        channel: &Channel,
        id: Cursor,
        step: Step,
        due_ms: u64,
    ) -> Result<(), BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            store
                .conn
                .execute(
                    "UPDATE steps SET due = ?5
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3 AND step = ?4 AND due > ?5",
                    params![channel.as_str(), id.ms, id.seq, step.to_string(), due_ms],
                )
                .map(|_| ())
                .map_err(write_failed)
        })
        .await
    }

    async fn acknowledge(
        &self,
        channel: &Channel,
        id: Cursor,
        user: &str,
    ) -> Result<Vec<(Channel, Cursor)>, BrokerError> {
        let (channel, user) = (channel.clone(), user.to_owned());
        self.blocking(move |store| {
            let tx = store.conn.transaction().map_err(storage)?;
            let mut closed = Vec::new();
            if close_chain(&tx, channel.as_str(), id, &user).map_err(write_failed)? {
                closed.push((channel.clone(), id));
            }
            let origin: Option<(String, u64, u64)> = tx
                .query_row(
                    "SELECT origin_channel, origin_ms, origin_seq FROM origins
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3",
                    params![channel.as_str(), id.ms, id.seq],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(storage)?;
            if let Some((origin, ms, seq)) = origin
                && close_chain(&tx, &origin, Cursor::new(ms, seq), &user).map_err(write_failed)?
                && let Ok(origin) = Channel::parse(&origin)
            {
                closed.push((origin, Cursor::new(ms, seq)));
            }
            tx.commit().map_err(write_failed)?;
            Ok(closed)
        })
        .await
    }

    async fn link_escalation(
        &self,
        channel: &Channel,
        id: Cursor,
        origin: &(Channel, Cursor),
    ) -> Result<(), BrokerError> {
        let (channel, origin) = (channel.clone(), origin.clone());
        self.blocking(move |store| {
            store
                .conn
                .execute(
                    "INSERT OR REPLACE INTO origins (channel, ms, seq, origin_channel, origin_ms, origin_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![channel.as_str(), id.ms, id.seq, origin.0.as_str(), origin.1.ms, origin.1.seq],
                )
                .map(|_| ())
                .map_err(write_failed)
        })
        .await
    }

    async fn escalation_origin(
        &self,
        channel: &Channel,
        id: Cursor,
    ) -> Result<Option<(Channel, Cursor)>, BrokerError> {
        let channel = channel.clone();
        self.blocking(move |store| {
            let origin: Option<(String, u64, u64)> = store
                .conn
                .query_row(
                    "SELECT origin_channel, origin_ms, origin_seq FROM origins
                     WHERE channel = ?1 AND ms = ?2 AND seq = ?3",
                    params![channel.as_str(), id.ms, id.seq],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()
                .map_err(storage)?;
            Ok(origin.and_then(|(channel, ms, seq)| {
                Some((Channel::parse(&channel).ok()?, Cursor::new(ms, seq)))
            }))
        })
        .await
    }

    async fn open_chains(&self, limit: usize) -> Result<Vec<(Channel, Cursor)>, BrokerError> {
        self.blocking(move |store| {
            let mut stmt = store
                .conn
                .prepare_cached(
                    "SELECT channel, ms, seq FROM chains WHERE state = 'open' ORDER BY ms, seq LIMIT ?1",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map([limit as u64], |row| {
                    Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
                })
                .map_err(storage)?
                .collect::<Result<Vec<(String, u64, u64)>, _>>()
                .map_err(storage)?;
            Ok(rows
                .into_iter()
                .filter_map(|(channel, ms, seq)| {
                    Some((Channel::parse(&channel).ok()?, Cursor::new(ms, seq)))
                })
                .collect())
        })
        .await
    }

    fn health(&self) -> watch::Receiver<BrokerHealth> {
        self.health.subscribe()
    }

    /// A write, not a read: a full disk or a data dir remounted read-only makes the relay not ready.
    async fn ping(&self) -> Result<(), BrokerError> {
        self.blocking(|store| probe_write(&store.conn)).await
    }

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn publish(channel: &Channel, n: u32) -> Publish {
        Publish {
            channel: channel.clone(),
            payload: Bytes::from(format!(r#"{{"type":"t","n":{n}}}"#)),
            priority: Priority::Normal,
            ttl: None,
            idempotency_key: None,
            escalation: None,
        }
    }

    fn retention(max_len: u64) -> Retention {
        Retention {
            max_age: Duration::from_secs(3600),
            max_len,
        }
    }

    #[tokio::test]
    async fn history_survives_a_reopen_and_ids_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let first = {
            let broker = EmbeddedBroker::open(dir.path(), retention(100), tx.clone()).unwrap();
            broker.publish(publish(&channel, 1)).await.unwrap().id
        };
        let broker = EmbeddedBroker::open(dir.path(), retention(100), tx).unwrap();
        let second = broker.publish(publish(&channel, 2)).await.unwrap().id;
        assert!(second > first);
        let page = broker.history(&channel, Cursor::ZERO, 10).await.unwrap();
        let ids: Vec<_> = page.messages.iter().map(|m| m.id).collect();
        assert_eq!(ids, [first, second]);
        assert!(!page.gap && !page.more);
    }

    #[tokio::test]
    async fn live_delivery_only_for_subscribed_channels() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let broker = EmbeddedBroker::open(dir.path(), retention(100), tx).unwrap();
        let channel = Channel::parse("patient:p1:notifications").unwrap();
        assert_eq!(
            broker
                .publish(publish(&channel, 1))
                .await
                .unwrap()
                .live_relays,
            0
        );
        broker.subscribe(&channel).await.unwrap();
        let published = broker.publish(publish(&channel, 2)).await.unwrap();
        assert_eq!(published.live_relays, 1);
        let Some(Live::Message(live)) = rx.recv().await else {
            panic!("no live notification")
        };
        assert_eq!(live.id, published.id);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn trimming_reports_a_gap_only_for_cursors_before_the_trim() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let broker = EmbeddedBroker::open(dir.path(), retention(3), tx).unwrap();
        let channel = Channel::parse("system:alerts").unwrap();
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(broker.publish(publish(&channel, n)).await.unwrap().id);
        }
        let page = broker.history(&channel, ids[0], 10).await.unwrap();
        assert!(page.gap);
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[3..]
        );
        let page = broker.history(&channel, ids[2], 10).await.unwrap();
        assert!(!page.gap);
        let page = broker.history(&channel, Cursor::ZERO, 10).await.unwrap();
        assert!(page.gap, "from zero, what was trimmed is missing too");
    }

    #[tokio::test]
    async fn idempotency_keys_store_once_and_receipts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let broker = EmbeddedBroker::open(dir.path(), retention(100), tx).unwrap();
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let keyed = Publish {
            idempotency_key: Some("k1".into()),
            ..publish(&channel, 1)
        };
        let first = broker.publish(keyed.clone()).await.unwrap();
        let again = broker.publish(keyed).await.unwrap();
        assert_eq!((again.id, again.duplicate), (first.id, true));
        assert_eq!(
            broker
                .history(&channel, Cursor::ZERO, 10)
                .await
                .unwrap()
                .messages
                .len(),
            1
        );
        broker
            .record_receipts(&channel, &[first.id], "d1", None, ReceiptKind::Acknowledged)
            .await
            .unwrap();
        broker
            .record_receipts(&channel, &[first.id], "d1", None, ReceiptKind::Acknowledged)
            .await
            .unwrap();
        let receipts = broker.receipts(&channel, first.id).await.unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].user, "d1");
    }

    #[tokio::test]
    async fn older_history_files_are_migrated_and_newer_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        // A file from before versioning, with receipts from before they had kinds.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE messages (channel TEXT NOT NULL, ms INTEGER NOT NULL, seq INTEGER NOT NULL,
                 priority TEXT NOT NULL, ttl_ms INTEGER, idempotency_key TEXT, payload BLOB NOT NULL,
                 PRIMARY KEY (channel, ms, seq)) WITHOUT ROWID;
             INSERT INTO messages VALUES ('doctor:d1:notifications', 5, 0, 'critical', NULL, NULL, X'7B7D');
             CREATE TABLE receipts (channel TEXT NOT NULL, ms INTEGER NOT NULL, seq INTEGER NOT NULL,
                 user TEXT NOT NULL, acked_at INTEGER NOT NULL,
                 PRIMARY KEY (channel, ms, seq, user)) WITHOUT ROWID;
             INSERT INTO receipts VALUES ('doctor:d1:notifications', 5, 0, 'd1', 77);",
        )
        .unwrap();
        drop(old);
        let (tx, _rx) = mpsc::channel(16);
        let broker = EmbeddedBroker::open(dir.path(), retention(100), tx.clone()).unwrap();
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let receipts = broker.receipts(&channel, Cursor::new(5, 0)).await.unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(
            (
                receipts[0].user.as_str(),
                receipts[0].kind,
                receipts[0].at_ms
            ),
            ("d1", ReceiptKind::Acknowledged, 77)
        );
        let next = broker.publish(publish(&channel, 2)).await.unwrap().id;
        assert!(
            next > Cursor::new(5, 0),
            "ids keep growing after the old ones"
        );
        drop(broker);

        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let refused = EmbeddedBroker::open(dir.path(), retention(100), tx)
            .err()
            .unwrap()
            .to_string();
        assert!(refused.contains("schema version 99 is newer"), "{refused}");
    }

    #[tokio::test]
    async fn expired_messages_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let broker = EmbeddedBroker::open(dir.path(), retention(100), tx).unwrap();
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let short = Publish {
            ttl: Some(Duration::ZERO),
            ..publish(&channel, 1)
        };
        broker.publish(short).await.unwrap();
        let kept = broker.publish(publish(&channel, 2)).await.unwrap();
        let page = broker.history(&channel, Cursor::ZERO, 10).await.unwrap();
        assert_eq!(
            page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            [kept.id]
        );
    }
}
