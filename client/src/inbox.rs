//! The local inbox: every notification the device received, in SQLite (WAL), with the cursor of
//! each channel stored in the same transaction as the rows it covers.
//!
//! That transaction is the receiver's promise: after a crash at any point, either a notification and
//! the cursor past it are both on disk, or neither is, so resuming from the stored cursor loses
//! nothing and (with the unique key on channel and id) stores nothing twice. Receipts go to the relay
//! only for committed rows, and are remembered until the relay confirms them.

use crate::inbox_key::{self, InboxKey};
use crate::private;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use std::path::Path;
use std::time::Duration;
use wardline_protocol::message::describe;
use wardline_protocol::{Channel, Cursor, Notification, Priority, ReceiptKind};

/// Each migration moves the schema one version up; `PRAGMA user_version` says where a file is.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE notifications (
    rowid INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    id_ms INTEGER NOT NULL,
    id_seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    priority TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    message TEXT NOT NULL,
    sent_at TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    read_at INTEGER,
    acked_at INTEGER,
    received_synced INTEGER NOT NULL DEFAULT 0,
    ack_synced INTEGER NOT NULL DEFAULT 0,
    UNIQUE (channel, id_ms, id_seq)
);
CREATE INDEX notifications_by_time ON notifications (received_at);
CREATE INDEX notifications_unsynced ON notifications (received_synced, ack_synced);
CREATE VIRTUAL TABLE notifications_fts USING fts5(
    title, body, message, content = 'notifications', content_rowid = 'rowid'
);
CREATE TRIGGER notifications_fts_insert AFTER INSERT ON notifications BEGIN
    INSERT INTO notifications_fts (rowid, title, body, message) VALUES (new.rowid, new.title, new.body, new.message);
END;
CREATE TRIGGER notifications_fts_delete AFTER DELETE ON notifications BEGIN
    INSERT INTO notifications_fts (notifications_fts, rowid, title, body, message)
    VALUES ('delete', old.rowid, old.title, old.body, old.message);
END;
CREATE TABLE cursors (
    channel TEXT PRIMARY KEY,
    ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TABLE gaps (
    rowid INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    since TEXT,
    detected_at INTEGER NOT NULL
);
CREATE TABLE state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE counts (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    total INTEGER NOT NULL,
    unread INTEGER NOT NULL,
    unacked_critical INTEGER NOT NULL
);
INSERT INTO counts
SELECT 1, count(*), count(*) FILTER (WHERE read_at IS NULL),
       count(*) FILTER (WHERE priority = 'critical' AND acked_at IS NULL)
FROM notifications;
CREATE TRIGGER counts_insert AFTER INSERT ON notifications BEGIN
    UPDATE counts SET total = total + 1,
        unread = unread + (new.read_at IS NULL),
        unacked_critical = unacked_critical + (new.priority = 'critical' AND new.acked_at IS NULL)
    WHERE id = 1;
END;
CREATE TRIGGER counts_delete AFTER DELETE ON notifications BEGIN
    UPDATE counts SET total = total - 1,
        unread = unread - (old.read_at IS NULL),
        unacked_critical = unacked_critical - (old.priority = 'critical' AND old.acked_at IS NULL)
    WHERE id = 1;
END;
CREATE TRIGGER counts_update AFTER UPDATE OF read_at, acked_at, priority ON notifications BEGIN
    UPDATE counts SET
        unread = unread - (old.read_at IS NULL) + (new.read_at IS NULL),
        unacked_critical = unacked_critical
            - (old.priority = 'critical' AND old.acked_at IS NULL)
            + (new.priority = 'critical' AND new.acked_at IS NULL)
    WHERE id = 1;
END;
"#,
    r#"
-- Acknowledgements not yet confirmed by the relay, looked up at every acknowledgement: a small
-- index of just those rows instead of a scan of the inbox.
CREATE INDEX notifications_ack_unsynced ON notifications (rowid)
WHERE acked_at IS NOT NULL AND ack_synced = 0;
"#,
    r#"
-- "Not me / cannot now": the person declined it; the relay escalates at once when told.
ALTER TABLE notifications ADD COLUMN declined_at INTEGER;
ALTER TABLE notifications ADD COLUMN decline_synced INTEGER NOT NULL DEFAULT 0;
CREATE INDEX notifications_decline_unsynced ON notifications (rowid)
WHERE declined_at IS NOT NULL AND decline_synced = 0;
"#,
    r#"
-- The full-text index merges its segments when 16 of a level have piled up instead of FTS5's 4:
-- every stored batch writes a segment, and merging them was most of the time spent storing.
-- Measured with `cargo xtask bench client`: filling 1,000,000 took 50 s instead of 70 s, search
-- p99 2.8 ms instead of 0.6 ms (target 20 ms).
INSERT INTO notifications_fts (notifications_fts, rank) VALUES ('automerge', 16);
"#,
];

/// The state key of this installation's id: made once per inbox, sent as `?device=` when
/// connecting and with receipts, so the relay's trail says which device did what.
pub const DEVICE_ID: &str = "device_id";

/// Why the inbox failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The file is not a Wardline inbox (or not SQLite at all).
    #[error("{path} is not a usable inbox: {reason}. Move it away to start a new one")]
    Corrupt {
        /// The file.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// Another process holds the database locked for longer than the busy timeout.
    #[error("the inbox is locked by another process ({0}); close it or try again")]
    Locked(String),
    /// Written by a newer Wardline.
    #[error("the inbox {path} has schema version {found}; this wardline knows up to {known}")]
    TooNew {
        /// The file.
        path: String,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// Any other SQLite failure.
    #[error("inbox: {0}")]
    Sqlite(rusqlite::Error),
    /// An id given on the command line matches nothing, or more than one notification.
    #[error("{0}")]
    NotFound(String),
    /// The inbox cannot be reached any more (a call on it panicked).
    #[error("the inbox stopped working: {0}")]
    Gone(String),
    /// The inbox's encryption key cannot be had (see [`crate::inbox_key`]).
    #[error("{0}")]
    Key(String),
}

/// A stored notification, as listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    /// Its id (its cursor in its channel).
    pub id: Cursor,
    /// Its channel.
    pub channel: Channel,
    /// The payload's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its priority.
    pub priority: Priority,
    /// A readable title.
    pub title: String,
    /// A readable body.
    pub body: String,
    /// The publisher's payload.
    pub message: serde_json::Value,
    /// When the relay stored it.
    pub sent_at: String,
    /// When this device stored it, Unix ms.
    pub received_at: u64,
    /// When the user read it, Unix ms.
    pub read_at: Option<u64>,
    /// When the user acknowledged it, Unix ms.
    pub acked_at: Option<u64>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only unread ones.
    pub unread: bool,
    /// Only this type.
    pub kind: Option<String>,
    /// Only this priority.
    pub priority: Option<Priority>,
    /// Only this channel.
    pub channel: Option<String>,
    /// Full-text search over title, body and payload: the words as typed (every word must match,
    /// the last one as a prefix); no input is an error.
    pub search: Option<String>,
    /// Received at or after, Unix ms.
    pub since_ms: Option<u64>,
    /// Received before, Unix ms.
    pub until_ms: Option<u64>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// A history gap the relay reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// The channel.
    pub channel: String,
    /// The cursor the client resumed from.
    pub since: Option<String>,
    /// When, Unix ms.
    pub detected_at: u64,
}

/// Counts for `wardline status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Notifications stored.
    pub total: u64,
    /// Not read yet.
    pub unread: u64,
    /// Critical and not acknowledged.
    pub unacked_critical: u64,
    /// When the newest arrived, Unix ms.
    pub last_received_at: Option<u64>,
}

/// Receipts the relay has not confirmed yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingReceipts {
    /// Per channel, ids stored but not confirmed as received.
    pub received: Vec<(Channel, Vec<Cursor>)>,
    /// Per channel, ids acknowledged but not confirmed.
    pub acknowledged: Vec<(Channel, Vec<Cursor>)>,
    /// Per channel, ids declined but not confirmed.
    pub declined: Vec<(Channel, Vec<Cursor>)>,
}

pub use wardline_protocol::now_ms;

/// A row of `SELECT id_ms, id_seq, channel, type, priority, title, body, message, sent_at,
/// received_at, read_at, acked_at`.
fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let channel: String = r.get(2)?;
    let priority: String = r.get(4)?;
    let message: String = r.get(7)?;
    Ok(Row {
        id: Cursor::new(r.get(0)?, r.get(1)?),
        channel: Channel::parse(&channel).unwrap_or_else(|_| Channel::system_alerts()),
        kind: r.get(3)?,
        priority: Priority::parse(&priority).unwrap_or(Priority::Normal),
        title: r.get(5)?,
        body: r.get(6)?,
        message: serde_json::from_str(&message).unwrap_or(serde_json::Value::String(message)),
        sent_at: r.get(8)?,
        received_at: r.get(9)?,
        read_at: r.get(10)?,
        acked_at: r.get(11)?,
    })
}

/// The local inbox.
pub struct Inbox {
    conn: Connection,
    path: String,
    key: InboxKey,
}

/// The first bytes of an unencrypted SQLite file.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What the file at `path` holds: nothing yet, a plain SQLite database, or (anything else) an
/// encrypted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contents {
    Empty,
    Plain,
    Encrypted,
}

fn contents(path: &Path) -> std::io::Result<Contents> {
    use std::io::Read;
    let mut header = [0u8; 16];
    let read = match std::fs::File::open(path) {
        Ok(mut file) => file.read(&mut header)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok(match read {
        0 => Contents::Empty,
        _ if &header == PLAIN_HEADER => Contents::Plain,
        _ => Contents::Encrypted,
    })
}

/// A connection to the inbox at `path`, keyed: the key is the first thing said to SQLCipher.
fn keyed_connection(path: &Path, key: &InboxKey) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // SQLCipher's own log goes to stderr; a key that does not open the file is reported by the
    // inbox's error instead. Silenced by source: SQLCipher resets a log level of NONE to WARN
    // whenever it is activated again, but leaves the source filter alone.
    conn.execute_batch(&format!(
        "PRAGMA cipher_log_source = NONE; PRAGMA key = {};",
        key.sql_literal()
    ))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Encrypts a plain inbox (written before inboxes were encrypted) in place: copied into a new
/// encrypted file with SQLCipher's export, its schema version with it, then moved over the old
/// one. A crash leaves the old file whole (the copy is only renamed once complete).
fn encrypt_in_place(path: &Path, key: &InboxKey) -> rusqlite::Result<()> {
    let plain = Connection::open(path)?;
    plain.busy_timeout(Duration::from_secs(5))?;
    plain.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let version: i64 = plain.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut copy = path.as_os_str().to_owned();
    copy.push(".encrypting");
    let copy = std::path::PathBuf::from(copy);
    let _ = std::fs::remove_file(&copy);
    private::private_file(&copy).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    let quoted = copy.display().to_string().replace('\'', "''");
    plain.execute_batch(&format!(
        "ATTACH DATABASE '{quoted}' AS encrypted KEY {key};
         SELECT sqlcipher_export('encrypted');
         PRAGMA encrypted.user_version = {version};
         DETACH DATABASE encrypted;",
        key = key.sql_literal(),
    ))?;
    drop(plain);
    std::fs::rename(&copy, path).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        let _ = std::fs::remove_file(std::path::PathBuf::from(companion));
    }
    tracing::info!(inbox = %path.display(), "the inbox is now encrypted at rest");
    Ok(())
}

fn classify(path: &str, e: rusqlite::Error) -> InboxError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            InboxError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }
        }
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            InboxError::Locked(format!("{path}: {e}"))
        }
        _ => InboxError::Sqlite(e),
    }
}

impl From<rusqlite::Error> for InboxError {
    fn from(e: rusqlite::Error) -> InboxError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                InboxError::Locked(e.to_string())
            }
            _ => InboxError::Sqlite(e),
        }
    }
}

impl Inbox {
    /// Opens (or creates) the inbox at `path`, encrypted with its key from the OS keychain (see
    /// [`crate::inbox_key`]), and brings its schema up to date; a plain inbox from before is
    /// encrypted first.
    pub fn open(path: &Path) -> Result<Inbox, InboxError> {
        let display = path.display().to_string();
        let encrypted = contents(path).map_err(|e| InboxError::Corrupt {
            path: display.clone(),
            reason: e.to_string(),
        })? == Contents::Encrypted;
        let (key, _) =
            inbox_key::for_inbox(path, encrypted).map_err(|e| InboxError::Key(e.to_string()))?;
        Inbox::open_encrypted(path, &key)
    }

    /// Opens (or creates) the inbox at `path` encrypted with `key`.
    pub fn open_encrypted(path: &Path, key: &InboxKey) -> Result<Inbox, InboxError> {
        let display = path.display().to_string();
        let unusable = |e: std::io::Error| InboxError::Corrupt {
            path: display.clone(),
            reason: e.to_string(),
        };
        // Patient details: the user's alone. SQLite gives its WAL and shared-memory files the
        // database file's mode; ones left from before with wider modes are tightened too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            private::private_dir(dir).map_err(unusable)?;
        }
        private::private_file(path).map_err(unusable)?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut companion = path.as_os_str().to_owned();
            companion.push(suffix);
            private::tighten_if_present(Path::new(&companion)).map_err(unusable)?;
        }
        if contents(path).map_err(unusable)? == Contents::Plain {
            encrypt_in_place(path, key).map_err(|e| classify(&display, e))?;
        }
        let conn = keyed_connection(path, key).map_err(|e| classify(&display, e))?;
        let mut inbox = Inbox {
            conn,
            path: display,
            key: key.clone(),
        };
        inbox.migrate().map_err(|e| match e {
            // An encrypted file that does not open with this key reads as no database at all.
            InboxError::Corrupt { path, reason } => InboxError::Corrupt {
                path,
                reason: format!("{reason} (damaged, or encrypted with another key)"),
            },
            other => other,
        })?;
        Ok(inbox)
    }

    /// A second connection to this inbox for reading only: in WAL mode it reads while the first
    /// writes, so listing and counting never wait for a catch-up's transactions.
    pub fn reader(&self) -> Result<Inbox, InboxError> {
        let conn = keyed_connection(Path::new(&self.path), &self.key)
            .map_err(|e| classify(&self.path, e))?;
        conn.execute_batch("PRAGMA query_only = ON;")
            .map_err(|e| classify(&self.path, e))?;
        Ok(Inbox {
            conn,
            path: self.path.clone(),
            key: self.key.clone(),
        })
    }

    fn migrate(&mut self) -> Result<(), InboxError> {
        let path = self.path.clone();
        let wrap = |e| classify(&path, e);
        self.conn
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(wrap)?;
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(wrap)?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(wrap)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(InboxError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (index, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction().map_err(wrap)?;
            tx.execute_batch(migration).map_err(wrap)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)
                .map_err(wrap)?;
            tx.commit().map_err(wrap)?;
        }
        // Reading the schema back tells a damaged file apart from a healthy one now, not later.
        self.conn
            .query_row("SELECT count(*) FROM notifications", [], |_| Ok(()))
            .map_err(wrap)?;
        Ok(())
    }

    /// The stored cursor of each channel.
    pub fn cursors(&self) -> Result<Vec<(Channel, Cursor)>, InboxError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT channel, ms, seq FROM cursors")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, Cursor::new(r.get(1)?, r.get(2)?)))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, cursor) = row?;
            if let Ok(channel) = Channel::parse(&name) {
                out.push((channel, cursor));
            }
        }
        Ok(out)
    }

    /// Moves a channel's cursor forward (never back), e.g. to where a live-only subscription began.
    pub fn advance_cursor(&mut self, channel: &Channel, cursor: Cursor) -> Result<(), InboxError> {
        let tx = self.conn.transaction()?;
        advance(&tx, channel, cursor)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores notifications and moves their channels' cursors in one transaction; returns those
    /// that were new (a replayed duplicate is stored once).
    pub fn store(&mut self, notifications: &[Notification]) -> Result<Vec<Row>, InboxError> {
        let tx = self.conn.transaction()?;
        let now = now_ms();
        let mut stored = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO notifications
                 (channel, id_ms, id_seq, type, priority, title, body, message, sent_at, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for n in notifications {
                let (title, body) = describe(&n.message);
                let message = n.message.to_string();
                let inserted = insert.execute(params![
                    n.channel.as_str(),
                    n.id.ms,
                    n.id.seq,
                    n.kind,
                    n.priority.as_str(),
                    title,
                    body,
                    message,
                    n.sent_at,
                    now
                ])?;
                if inserted == 1 {
                    stored.push(Row {
                        id: n.id,
                        channel: n.channel.clone(),
                        kind: n.kind.clone(),
                        priority: n.priority,
                        title,
                        body,
                        message: n.message.clone(),
                        sent_at: n.sent_at.clone(),
                        received_at: now,
                        read_at: None,
                        acked_at: None,
                    });
                }
            }
        }
        for n in notifications {
            advance(&tx, &n.channel, n.id)?;
        }
        tx.commit()?;
        Ok(stored)
    }

    /// Records a gap the relay reported on resuming a channel.
    pub fn record_gap(
        &mut self,
        channel: &Channel,
        since: Option<Cursor>,
    ) -> Result<(), InboxError> {
        self.conn.execute(
            "INSERT INTO gaps (channel, since, detected_at) VALUES (?1, ?2, ?3)",
            params![channel.as_str(), since.map(|c| c.to_string()), now_ms()],
        )?;
        Ok(())
    }

    /// Every gap recorded, newest first.
    pub fn gaps(&self) -> Result<Vec<Gap>, InboxError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT channel, since, detected_at FROM gaps ORDER BY rowid DESC")?;
        let rows = stmt.query_map([], |r| {
            Ok(Gap {
                channel: r.get(0)?,
                since: r.get(1)?,
                detected_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Lists notifications, newest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Row>, InboxError> {
        // Newest first is insertion order (rowid). With a search, the full-text index drives the
        // query in that order, so a common word over a million rows stops at the limit instead of
        // collecting every match first.
        let search = filter.search.as_deref().map(search_query);
        let query = match search {
            None | Some(Search::Everything) => None,
            Some(Search::Words { exact, prefix }) => {
                // The typed words as whole words first: the index walks them newest first and
                // stops at the limit. Only if they fill less than a page is the last word taken
                // as a prefix, which FTS5 answers by merging every match first (54 ms for
                // `Wilson*` over a million rows).
                let rows = self.list_matching(filter, Some(exact))?;
                if rows.len() >= page_size(filter) {
                    return Ok(rows);
                }
                Some(prefix)
            }
        };
        self.list_matching(filter, query)
    }

    /// Lists notifications matching the filter and an FTS5 query, newest first.
    fn list_matching(
        &self,
        filter: &Filter,
        search: Option<String>,
    ) -> Result<Vec<Row>, InboxError> {
        let mut args: Vec<Box<dyn rusqlite::ToSql>> = Vec::new();
        let (mut sql, order) = match search {
            Some(search) => {
                args.push(Box::new(search));
                (
                    String::from(
                        "SELECT n.id_ms, n.id_seq, n.channel, n.type, n.priority, n.title, n.body, n.message, n.sent_at,
                                n.received_at, n.read_at, n.acked_at
                         FROM notifications_fts f JOIN notifications n ON n.rowid = f.rowid
                         WHERE notifications_fts MATCH ?1",
                    ),
                    "f.rowid",
                )
            }
            None => (
                String::from(
                    "SELECT n.id_ms, n.id_seq, n.channel, n.type, n.priority, n.title, n.body, n.message, n.sent_at,
                            n.received_at, n.read_at, n.acked_at
                     FROM notifications n WHERE 1 = 1",
                ),
                "n.rowid",
            ),
        };
        if filter.unread {
            sql.push_str(" AND n.read_at IS NULL");
        }
        if let Some(kind) = &filter.kind {
            args.push(Box::new(kind.clone()));
            sql.push_str(&format!(" AND n.type = ?{}", args.len()));
        }
        if let Some(priority) = filter.priority {
            args.push(Box::new(priority.as_str()));
            sql.push_str(&format!(" AND n.priority = ?{}", args.len()));
        }
        if let Some(channel) = &filter.channel {
            args.push(Box::new(channel.clone()));
            sql.push_str(&format!(" AND n.channel = ?{}", args.len()));
        }
        if let Some(since) = filter.since_ms {
            args.push(Box::new(since));
            sql.push_str(&format!(" AND n.received_at >= ?{}", args.len()));
        }
        if let Some(until) = filter.until_ms {
            args.push(Box::new(until));
            sql.push_str(&format!(" AND n.received_at < ?{}", args.len()));
        }
        args.push(Box::new(page_size(filter) as u64));
        sql.push_str(&format!(" ORDER BY {order} DESC LIMIT ?{}", args.len()));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(
            rusqlite::params_from_iter(args.iter().map(|a| a.as_ref())),
            row_from,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Finds the channel of each id (ids are unique within a channel; an id found in two channels
    /// must be given as `channel/id`).
    pub fn resolve(&self, ids: &[String]) -> Result<Vec<(Channel, Cursor)>, InboxError> {
        let mut out = Vec::new();
        for text in ids {
            let (channel, id) = match text.rsplit_once('/') {
                Some((channel, id)) => (Some(channel), id),
                None => (None, text.as_str()),
            };
            let cursor: Cursor = id.parse().map_err(|_| {
                InboxError::NotFound(format!(
                    "{text} is not a notification id (they look like 1764500000000-0): see `wardline list`"
                ))
            })?;
            let mut stmt = self.conn.prepare_cached(
                "SELECT channel FROM notifications WHERE id_ms = ?1 AND id_seq = ?2",
            )?;
            let found: Vec<String> = stmt
                .query_map(params![cursor.ms, cursor.seq], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let found: Vec<String> = found
                .into_iter()
                .filter(|c| channel.is_none_or(|want| want == c))
                .collect();
            match &found[..] {
                [one] => out.push((
                    Channel::parse(one).map_err(|e| InboxError::NotFound(e.to_string()))?,
                    cursor,
                )),
                [] => {
                    return Err(InboxError::NotFound(format!(
                        "no notification {text} in the inbox: see `wardline list`"
                    )));
                }
                many => {
                    return Err(InboxError::NotFound(format!(
                        "{text} is in several channels ({}); give it as channel/id",
                        many.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Marks notifications read.
    pub fn mark_read(&mut self, ids: &[(Channel, Cursor)]) -> Result<(), InboxError> {
        let tx = self.conn.transaction()?;
        for (channel, id) in ids {
            tx.execute(
                "UPDATE notifications SET read_at = coalesce(read_at, ?4) WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3",
                params![channel.as_str(), id.ms, id.seq, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks notifications acknowledged (and read); the relay is told when it can be.
    pub fn mark_acked(&mut self, ids: &[(Channel, Cursor)]) -> Result<(), InboxError> {
        let tx = self.conn.transaction()?;
        for (channel, id) in ids {
            tx.execute(
                "UPDATE notifications SET acked_at = coalesce(acked_at, ?4), read_at = coalesce(read_at, ?4)
                 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3",
                params![channel.as_str(), id.ms, id.seq, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks notifications declined by the person ("not me / cannot now"); the relay is told when
    /// it can be, and escalates them at once.
    pub fn mark_declined(&mut self, ids: &[(Channel, Cursor)]) -> Result<(), InboxError> {
        let tx = self.conn.transaction()?;
        for (channel, id) in ids {
            tx.execute(
                "UPDATE notifications SET declined_at = coalesce(declined_at, ?4), read_at = coalesce(read_at, ?4)
                 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3",
                params![channel.as_str(), id.ms, id.seq, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Declines the relay has not confirmed yet, grouped by channel.
    pub fn pending_declines(&self) -> Result<Vec<(Channel, Vec<Cursor>)>, InboxError> {
        self.unsynced(
            "SELECT channel, id_ms, id_seq FROM notifications WHERE declined_at IS NOT NULL AND decline_synced = 0 ORDER BY rowid LIMIT 1000",
        )
    }

    /// Applies what the user did on another device (the relay's `receipt`): acknowledged there is
    /// acknowledged here (already known to the relay), read there is read here. Answers the ids that
    /// changed here (whose alerts to withdraw), among those this inbox holds.
    pub fn apply_remote_receipt(
        &mut self,
        kind: ReceiptKind,
        channel: &Channel,
        ids: &[Cursor],
    ) -> Result<Vec<Cursor>, InboxError> {
        let sql = match kind {
            ReceiptKind::Acknowledged => {
                "UPDATE notifications SET acked_at = coalesce(acked_at, ?4), read_at = coalesce(read_at, ?4), ack_synced = 1
                 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3 AND acked_at IS NULL"
            }
            ReceiptKind::Read => {
                "UPDATE notifications SET read_at = ?4
                 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3 AND read_at IS NULL"
            }
            ReceiptKind::Declined => {
                "UPDATE notifications SET declined_at = coalesce(declined_at, ?4), decline_synced = 1
                 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3 AND declined_at IS NULL"
            }
            ReceiptKind::Received | ReceiptKind::Displayed => return Ok(Vec::new()),
        };
        let tx = self.conn.transaction()?;
        let mut changed = Vec::new();
        {
            let mut update = tx.prepare_cached(sql)?;
            for id in ids {
                if update.execute(params![channel.as_str(), id.ms, id.seq, now_ms()])? > 0 {
                    changed.push(*id);
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The notifications among `ids` nobody has acknowledged on this device: what a reminder
    /// alerts for again.
    pub fn unacknowledged(
        &self,
        channel: &Channel,
        ids: &[Cursor],
    ) -> Result<Vec<Row>, InboxError> {
        let mut rows = Vec::new();
        for id in ids {
            let mut stmt = self.conn.prepare_cached(
                "SELECT id_ms, id_seq, channel, type, priority, title, body, message, sent_at, received_at, read_at, acked_at
                 FROM notifications WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3 AND acked_at IS NULL AND declined_at IS NULL",
            )?;
            let found = stmt
                .query_row(params![channel.as_str(), id.ms, id.seq], row_from)
                .optional()?;
            rows.extend(found);
        }
        Ok(rows)
    }

    /// This installation's id, made on first use.
    pub fn device_id(&mut self) -> Result<String, InboxError> {
        if let Some(id) = self.state(DEVICE_ID)? {
            return Ok(id);
        }
        let id = format!("{:016x}", rand::random::<u64>());
        self.set_state(DEVICE_ID, &id)?;
        Ok(id)
    }

    /// Receipts not yet confirmed by the relay.
    pub fn pending_receipts(&self) -> Result<PendingReceipts, InboxError> {
        Ok(PendingReceipts {
            received: self.unsynced(
                "SELECT channel, id_ms, id_seq FROM notifications WHERE received_synced = 0 ORDER BY rowid LIMIT 1000",
            )?,
            acknowledged: self.pending_acknowledgements()?,
            declined: self.pending_declines()?,
        })
    }

    /// Acknowledgements the relay has not confirmed yet, grouped by channel.
    pub fn pending_acknowledgements(&self) -> Result<Vec<(Channel, Vec<Cursor>)>, InboxError> {
        self.unsynced(
            "SELECT channel, id_ms, id_seq FROM notifications WHERE acked_at IS NOT NULL AND ack_synced = 0 ORDER BY rowid LIMIT 1000",
        )
    }

    /// The rows a query selects (channel, id), grouped by channel.
    fn unsynced(&self, sql: &str) -> Result<Vec<(Channel, Vec<Cursor>)>, InboxError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, Cursor::new(r.get(1)?, r.get(2)?)))
        })?;
        let mut grouped: Vec<(Channel, Vec<Cursor>)> = Vec::new();
        for row in rows {
            let (name, id) = row?;
            let Ok(channel) = Channel::parse(&name) else {
                continue;
            };
            match grouped.iter_mut().find(|(c, _)| *c == channel) {
                Some((_, ids)) => ids.push(id),
                None => grouped.push((channel, vec![id])),
            }
        }
        Ok(grouped)
    }

    /// Notes that the relay confirmed receipts.
    pub fn mark_synced(
        &mut self,
        kind: ReceiptKind,
        channel: &Channel,
        ids: &[Cursor],
    ) -> Result<(), InboxError> {
        let column = match kind {
            ReceiptKind::Received => "received_synced",
            ReceiptKind::Acknowledged => "ack_synced",
            ReceiptKind::Declined => "decline_synced",
            // Told as they happen, never queued.
            ReceiptKind::Displayed | ReceiptKind::Read => return Ok(()),
        };
        let tx = self.conn.transaction()?;
        {
            let mut update = tx.prepare_cached(&format!(
                "UPDATE notifications SET {column} = 1 WHERE channel = ?1 AND id_ms = ?2 AND id_seq = ?3"
            ))?;
            for id in ids {
                update.execute(params![channel.as_str(), id.ms, id.seq])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Counts for the status line: kept by triggers as rows come, change and go, so that the
    /// window and the tray read them at once however large the inbox (counting 110,000 rows on
    /// every refresh kept the window's commands waiting during a catch-up).
    pub fn counts(&self) -> Result<Counts, InboxError> {
        Ok(self.conn.query_row(
            "SELECT total, unread, unacked_critical,
                    (SELECT max(received_at) FROM notifications)
             FROM counts WHERE id = 1",
            [],
            |r| {
                Ok(Counts {
                    total: r.get(0)?,
                    unread: r.get(1)?,
                    unacked_critical: r.get(2)?,
                    last_received_at: r.get(3)?,
                })
            },
        )?)
    }

    /// Deletes notifications received longer ago than `keep` (default policy: 90 days).
    pub fn purge_older_than(&mut self, keep: Duration) -> Result<usize, InboxError> {
        let cutoff = now_ms().saturating_sub(keep.as_millis() as u64);
        Ok(self.conn.execute(
            "DELETE FROM notifications WHERE received_at <= ?1",
            params![cutoff],
        )?)
    }

    /// Saves a piece of listener state (for `wardline status` in another process).
    pub fn set_state(&mut self, key: &str, value: &str) -> Result<(), InboxError> {
        self.conn.execute(
            "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Reads a piece of listener state.
    pub fn state(&self, key: &str) -> Result<Option<String>, InboxError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM state WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// How many rows a filter asks for (50 when it does not say).
fn page_size(filter: &Filter) -> usize {
    if filter.limit == 0 { 50 } else { filter.limit }
}

/// What a search matches, as FTS5 queries that cannot fail.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Search {
    /// Nothing searchable was typed: every notification.
    Everything,
    /// Every typed word as a whole word, and the same with the last one as a prefix.
    Words {
        /// `"bob" AND "wil"`.
        exact: String,
        /// `"bob" AND "wil"*`.
        prefix: String,
    },
}

/// What a person typed, for the full-text index: each word a quoted term, so that FTS5
/// operators and punctuation lose their meaning (`BMP AND`, `K+`, `"Bob`, `(` are words or
/// nothing) and no input is an error; the last word also as a prefix, so that results follow the
/// typing. White space and control characters separate words (SQLite ends a query string at a
/// NUL); a word with no letter or digit is dropped.
fn search_query(typed: &str) -> Search {
    let typed: String = typed
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let words: Vec<String> = typed
        .split_whitespace()
        .filter(|word| word.chars().any(char::is_alphanumeric))
        .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return Search::Everything;
    }
    let exact = words.join(" AND ");
    let prefix = format!("{exact}*");
    Search::Words { exact, prefix }
}

fn advance(tx: &Transaction<'_>, channel: &Channel, cursor: Cursor) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO cursors (channel, ms, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel) DO UPDATE SET ms = excluded.ms, seq = excluded.seq
         WHERE excluded.ms > cursors.ms OR (excluded.ms = cursors.ms AND excluded.seq > cursors.seq)",
    )?
    .execute(params![channel.as_str(), cursor.ms, cursor.seq])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox_key::test_key;
    use serde_json::json;

    #[test]
    fn a_plain_inbox_is_encrypted_in_place_and_unreadable_without_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.sqlite3");
        // An inbox written before inboxes were encrypted: plain SQLite, the whole schema.
        let conn = Connection::open(&path).unwrap();
        for migration in MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        conn.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .unwrap();
        drop(conn);
        let mut inbox = Inbox::open_encrypted(&path, &test_key()).unwrap();
        inbox.store(&[critical(1)]).unwrap();
        drop(inbox);
        assert_eq!(contents(&path).unwrap(), Contents::Encrypted);
        let mut plain = Inbox::open_encrypted(&path, &test_key()).unwrap();
        assert_eq!(plain.counts().unwrap().total, 1, "rows survive");
        assert_eq!(
            plain.list(&Filter::default()).unwrap()[0].title,
            "Critical lab result — BMP for Bob Wilson"
        );
        plain.set_state("probe", "1").unwrap();
        drop(plain);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(6).any(|w| w == b"Wilson"),
            "patient names are not in the file"
        );
        let unkeyed = Connection::open(&path).unwrap();
        let refused = unkeyed.query_row("SELECT count(*) FROM notifications", [], |r| {
            r.get::<_, i64>(0)
        });
        assert!(refused.is_err(), "plain SQLite cannot read it");
        let other = crate::inbox_key::InboxKey::random();
        let err = Inbox::open_encrypted(&path, &other).err().expect("refused");
        assert!(
            err.to_string().contains("encrypted with another key"),
            "{err}"
        );
    }

    fn notification(channel: &str, ms: u64, message: serde_json::Value) -> Notification {
        Notification {
            id: Cursor::new(ms, 0),
            channel: Channel::parse(channel).unwrap(),
            kind: message["type"].as_str().unwrap_or("unknown").to_owned(),
            priority: Priority::default_for(&message),
            sent_at: "2026-11-23T10:00:00.000Z".into(),
            message,
            repeat: None,
        }
    }

    fn critical(ms: u64) -> Notification {
        notification(
            "doctor:d1:notifications",
            ms,
            json!({"type": "critical_lab_result", "patient_name": "Bob Wilson", "test_type": "BMP"}),
        )
    }

    #[test]
    fn rows_and_cursors_are_stored_together_and_duplicates_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        let stored = inbox.store(&[critical(1), critical(2)]).unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0].title, "Critical lab result — BMP for Bob Wilson");
        assert!(
            inbox.store(&[critical(2)]).unwrap().is_empty(),
            "a replayed duplicate is not stored again"
        );
        let cursors = inbox.cursors().unwrap();
        assert_eq!(
            cursors,
            vec![(
                Channel::parse("doctor:d1:notifications").unwrap(),
                Cursor::new(2, 0)
            )]
        );
        inbox
            .advance_cursor(&cursors[0].0, Cursor::new(1, 0))
            .unwrap();
        assert_eq!(
            inbox.cursors().unwrap()[0].1,
            Cursor::new(2, 0),
            "cursors never move back"
        );
        let counts = inbox.counts().unwrap();
        assert_eq!(
            (counts.total, counts.unread, counts.unacked_critical),
            (2, 2, 2)
        );
    }

    #[test]
    fn filters_and_full_text_search() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        inbox
            .store(&[
                critical(1),
                notification("patient:p1:notifications", 2, json!({"type": "new_prescription", "medication": "Amoxicillin", "doctor_name": "Dr. Smith"})),
            ])
            .unwrap();
        let search = |text: &str| Filter {
            search: Some(text.into()),
            ..Filter::default()
        };
        assert_eq!(inbox.list(&search("amoxicillin")).unwrap().len(), 1);
        assert_eq!(
            inbox.list(&search("Wilson")).unwrap()[0].kind,
            "critical_lab_result"
        );
        assert!(inbox.list(&search("nothing")).unwrap().is_empty());
        let critical_only = Filter {
            priority: Some(Priority::Critical),
            ..Filter::default()
        };
        assert_eq!(inbox.list(&critical_only).unwrap().len(), 1);
        let ids = inbox.resolve(&["1-0".into()]).unwrap();
        inbox.mark_acked(&ids).unwrap();
        let unread = Filter {
            unread: true,
            ..Filter::default()
        };
        assert_eq!(inbox.list(&unread).unwrap().len(), 1);
        assert_eq!(inbox.counts().unwrap().unacked_critical, 0);
        let pending = inbox.pending_receipts().unwrap();
        assert_eq!(
            pending.acknowledged,
            ids.iter()
                .map(|(c, i)| (c.clone(), vec![*i]))
                .collect::<Vec<_>>()
        );
        inbox
            .mark_synced(ReceiptKind::Acknowledged, &ids[0].0, &[ids[0].1])
            .unwrap();
        assert!(inbox.pending_receipts().unwrap().acknowledged.is_empty());
        assert!(matches!(
            inbox.resolve(&["9-0".into()]),
            Err(InboxError::NotFound(_))
        ));
    }

    #[test]
    fn what_people_type_is_never_an_fts_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        inbox.store(&[critical(1)]).unwrap();
        let search = |text: &str| {
            inbox.list(&Filter {
                search: Some(text.into()),
                ..Filter::default()
            })
        };
        for typed in [
            "\"Bob",
            "BMP AND",
            "K+",
            "(",
            "*",
            "zzzz-none",
            "NEAR(",
            "a:b",
            "\"\"",
            "-",
            "^x",
            "\u{0301}",
        ] {
            assert!(
                search(typed).is_ok(),
                "{typed:?}: {:?}",
                search(typed).err()
            );
        }
        assert_eq!(search("\"Bob").unwrap().len(), 1);
        assert_eq!(
            search("bmp AND").unwrap().len(),
            0,
            "AND is a word here, and not in the row"
        );
        assert_eq!(search("wil").unwrap().len(), 1, "the last word is a prefix");
        assert_eq!(search("Wilson bmp").unwrap().len(), 1);
        assert!(search("zzzz-none").unwrap().is_empty());
        assert_eq!(
            search("(").unwrap().len(),
            1,
            "nothing searchable typed: everything"
        );
    }

    #[test]
    fn whole_words_come_first_and_a_last_word_is_also_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        let rows: Vec<Notification> = (0..40u64)
            .map(|n| {
                notification(
                    "doctor:d1:notifications",
                    n + 1,
                    json!({"type": "system_alert", "message": format!("ward{n} check")}),
                )
            })
            .collect();
        inbox.store(&rows).unwrap();
        let found = |typed: &str, limit: usize| {
            inbox
                .list(&Filter {
                    search: Some(typed.into()),
                    limit,
                    ..Filter::default()
                })
                .unwrap()
                .len()
        };
        assert_eq!(found("ward3", 100), 11, "ward3 and ward30 to ward39");
        assert_eq!(found("check ward", 100), 40);
        assert_eq!(found("che", 10), 10, "a prefix fills the page");
        assert_eq!(found("wardx", 100), 0);
        assert_eq!(
            search_query("check  ward1"),
            Search::Words {
                exact: "\"check\" AND \"ward1\"".into(),
                prefix: "\"check\" AND \"ward1\"*".into(),
            }
        );
        assert_eq!(search_query(" ( * "), Search::Everything);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_search_string_is_answered_and_typed_words_find_their_row(
            typed in ".{0,40}",
            words in proptest::collection::vec("[a-zA-Z0-9äöüé]{1,12}", 1..6),
            picked in proptest::collection::vec(proptest::prelude::any::<proptest::sample::Index>(), 1..4),
            around in "[ \"()*+:^.,-]{0,3}",
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut inbox = Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
            let note = words.join(" ");
            inbox.store(&[notification(
                "doctor:d1:notifications",
                1,
                json!({"type": "system_alert", "message": note}),
            )]).unwrap();
            let filter = |search: String| Filter { search: Some(search), ..Filter::default() };
            proptest::prop_assert!(inbox.list(&filter(typed.clone())).is_ok(), "{:?}", typed);
            let query: Vec<String> = picked
                .iter()
                .map(|i| format!("{around}{}{around}", i.get(&words).to_uppercase()))
                .collect();
            let found = inbox.list(&filter(query.join(" "))).unwrap();
            proptest::prop_assert_eq!(found.len(), 1, "{:?} in {:?}", query, note);
        }
    }

    #[test]
    fn a_file_that_is_not_an_inbox_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inbox.sqlite3");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Inbox::open_encrypted(&path, &test_key())
            .err()
            .expect("refused");
        assert!(matches!(err, InboxError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a usable inbox"), "{err}");
    }

    #[test]
    fn counts_follow_rows_as_they_come_change_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        let counts = |inbox: &Inbox| {
            let c = inbox.counts().unwrap();
            (c.total, c.unread, c.unacked_critical)
        };
        assert_eq!(counts(&inbox), (0, 0, 0));
        let normal = notification(
            "doctor:d1:notifications",
            3,
            json!({"type": "system_alert"}),
        );
        inbox
            .store(&[critical(1), critical(2), normal.clone()])
            .unwrap();
        inbox.store(&[critical(2), normal]).unwrap();
        assert_eq!(counts(&inbox), (3, 3, 2), "duplicates are not counted");
        let first = inbox.resolve(&["1-0".into()]).unwrap();
        let third = inbox.resolve(&["3-0".into()]).unwrap();
        inbox.mark_read(&third).unwrap();
        inbox.mark_read(&third).unwrap();
        assert_eq!(counts(&inbox), (3, 2, 2));
        inbox.mark_acked(&first).unwrap();
        inbox.mark_acked(&first).unwrap();
        assert_eq!(counts(&inbox), (3, 1, 1), "acknowledged is read too");
        assert!(inbox.counts().unwrap().last_received_at.is_some());
        inbox.purge_older_than(Duration::ZERO).unwrap();
        assert_eq!(counts(&inbox), (0, 0, 0));
        drop(inbox);
        // A file from before the counts were kept gets them right when it is migrated.
        let older = dir.path().join("older.sqlite3");
        let conn = Connection::open(&older).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO notifications (channel, id_ms, id_seq, type, priority, title, body, message, sent_at, received_at)
             VALUES ('doctor:d1:notifications', 1, 0, 'critical_lab_result', 'critical', 't', 'b', '{}', '', 1)",
            [],
        )
        .unwrap();
        drop(conn);
        let inbox = Inbox::open_encrypted(&older, &test_key()).unwrap();
        assert_eq!(counts(&inbox), (1, 1, 1));
    }

    #[test]
    fn the_full_text_index_merges_less_often_in_new_and_migrated_inboxes() {
        let dir = tempfile::tempdir().unwrap();
        let automerge = |inbox: &Inbox| -> i64 {
            inbox
                .conn
                .query_row(
                    "SELECT v FROM notifications_fts_config WHERE k = 'automerge'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let new = Inbox::open_encrypted(&dir.path().join("new.sqlite3"), &test_key()).unwrap();
        assert_eq!(automerge(&new), 16);
        // An inbox of the version before: FTS5's default, and a notification already indexed.
        let older = dir.path().join("older.sqlite3");
        let mut inbox = Inbox::open_encrypted(&older, &test_key()).unwrap();
        inbox.store(&[critical(1)]).unwrap();
        inbox
            .conn
            .execute_batch(
                "DELETE FROM notifications_fts_config WHERE k = 'automerge';
                 PRAGMA user_version = 4;",
            )
            .unwrap();
        drop(inbox);
        let inbox = Inbox::open_encrypted(&older, &test_key()).unwrap();
        assert_eq!(automerge(&inbox), 16);
        let found = inbox
            .list(&Filter {
                search: Some("Wilson".into()),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1, "what it held is still found");
    }

    #[test]
    fn retention_deletes_old_rows_from_the_index_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut inbox =
            Inbox::open_encrypted(&dir.path().join("inbox.sqlite3"), &test_key()).unwrap();
        inbox.store(&[critical(1)]).unwrap();
        assert_eq!(inbox.purge_older_than(Duration::ZERO).unwrap(), 1);
        assert!(
            inbox
                .list(&Filter {
                    search: Some("Wilson".into()),
                    ..Filter::default()
                })
                .unwrap()
                .is_empty()
        );
    }
}
