//! The SQLite schema (versioned with `PRAGMA user_version`), connection setup, and row ↔ record
//! mapping.

use crate::{SessionRecord, SessionStatus, StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags, Row};
use std::path::Path;
use std::time::Duration;

/// The schema version this build writes and understands.
pub(super) const SCHEMA_VERSION: i64 = 3;

/// How long a connection waits for a lock held by another connection before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY NOT NULL,
    route               TEXT NOT NULL,
    upstream            TEXT NOT NULL,
    upstream_session_id TEXT,
    protocol_version    TEXT,
    client_info         TEXT,
    client_capabilities TEXT,
    principal           TEXT,
    owner               TEXT,
    status              TEXT NOT NULL,
    created_ms          INTEGER NOT NULL,
    last_active_ms      INTEGER NOT NULL
);
CREATE INDEX sessions_upstream ON sessions (upstream_session_id)
    WHERE upstream_session_id IS NOT NULL;
CREATE INDEX sessions_last_active ON sessions (last_active_ms);
CREATE INDEX sessions_owner ON sessions (owner, status);
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    stream  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    data    BLOB NOT NULL
);
CREATE INDEX events_stream ON events (session, stream, id);
";

/// Version 2: shared documents (tool pins).
const SCHEMA_V2: &str = "
CREATE TABLE docs (
    ns    TEXT NOT NULL,
    key   TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
";

/// Version 3: a composite session's state (its members' upstream sessions, the client's
/// `initialize`), so another replica can continue it.
const SCHEMA_V3: &str = "ALTER TABLE sessions ADD COLUMN composite TEXT;";

/// What a read-only connection to a database of an older version (1 or 2) reads `sessions`
/// through: a view of its own (in the connection's temporary schema, which is searched before
/// the file's) that adds the columns of later versions, as `NULL`. Nothing is written to the
/// file.
const OLDER_SESSIONS_VIEW: &str =
    "CREATE TEMP VIEW IF NOT EXISTS sessions AS SELECT *, NULL AS composite FROM main.sessions;";

/// The columns of `sessions`, in the order [`record_from_row`] reads them.
pub(super) const SESSION_COLUMNS: &str = "id, route, upstream, upstream_session_id, \
    protocol_version, client_info, client_capabilities, principal, owner, status, created_ms, \
    last_active_ms, composite";

pub(super) fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

/// Opens the write connection: WAL, `synchronous=NORMAL`, schema created or checked.
pub(super) fn open_writer(path: &Path) -> StoreResult<Connection> {
    let mut conn = Connection::open(path).map_err(sql_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(sql_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "sqlite: could not enable WAL (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a read-only connection (after the writer has set the database up).
pub(super) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(sql_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_err)?;
    if version == 1 || version == 2 {
        conn.execute_batch(OLDER_SESSIONS_VIEW).map_err(sql_err)?;
    }
    Ok(conn)
}

/// Checks that a database opened read-only is a Shadowcat store of this schema version.
pub(super) fn check_version(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_err)?;
    match version {
        // Version 1 has the sessions, not the documents (read-only tools look at sessions);
        // versions 1 and 2 are read through a view that adds the later columns.
        1 | 2 | SCHEMA_VERSION => Ok(()),
        0 => Err(StoreError::Backend(
            "sqlite: the file is not a Shadowcat session store (no schema)".into(),
        )),
        v => Err(StoreError::Backend(format!(
            "sqlite: schema version {v} is not the one this build reads ({SCHEMA_VERSION})"
        ))),
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction().map_err(sql_err)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sql_err)?;
    match version {
        0..=2 => {
            if version == 0 {
                tx.execute_batch(SCHEMA_V1).map_err(sql_err)?;
            }
            if version < 2 {
                tx.execute_batch(SCHEMA_V2).map_err(sql_err)?;
            }
            tx.execute_batch(SCHEMA_V3).map_err(sql_err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql_err)?;
        }
        SCHEMA_VERSION => {}
        v => {
            return Err(StoreError::Backend(format!(
                "sqlite: schema version {v} is not supported (this build knows {SCHEMA_VERSION})"
            )));
        }
    }
    tx.commit().map_err(sql_err)
}

pub(super) fn to_i64(v: u64) -> StoreResult<i64> {
    i64::try_from(v)
        .map_err(|_| StoreError::Backend(format!("sqlite: {v} does not fit an INTEGER")))
}

fn to_u64(v: i64, what: &str) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Integer,
            format!("negative {what}: {v}").into(),
        )
    })
}

pub(super) fn status_str(s: SessionStatus) -> &'static str {
    match s {
        SessionStatus::Active => "active",
        SessionStatus::Ended => "ended",
    }
}

fn json_text(v: &Option<serde_json::Value>) -> StoreResult<Option<String>> {
    v.as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Backend(format!("sqlite: encoding json: {e}")))
}

/// A record as SQL parameters, in [`SESSION_COLUMNS`] order.
pub(super) struct RecordParams {
    pub(super) values: Vec<rusqlite::types::Value>,
}

impl RecordParams {
    pub(super) fn new(rec: &SessionRecord) -> StoreResult<Self> {
        use rusqlite::types::Value;
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
        let values = vec![
            Value::Text(rec.id.clone()),
            Value::Text(rec.route.clone()),
            Value::Text(rec.upstream.clone()),
            text(&rec.upstream_session_id),
            text(&rec.protocol_version),
            text(&json_text(&rec.client_info)?),
            text(&json_text(&rec.client_capabilities)?),
            text(&rec.principal),
            text(&rec.owner),
            Value::Text(status_str(rec.status).to_owned()),
            Value::Integer(to_i64(rec.created_ms)?),
            Value::Integer(to_i64(rec.last_active_ms)?),
            text(&json_text(&rec.composite)?),
        ];
        Ok(Self { values })
    }
}

/// Decodes a row selected with [`SESSION_COLUMNS`]. Conversion problems surface as
/// `FromSqlConversionFailure`, mapped to `Corrupt` by [`row_err`].
pub(super) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let json = |idx: usize| -> rusqlite::Result<Option<serde_json::Value>> {
        let s: Option<String> = row.get(idx)?;
        s.map(|s| {
            serde_json::from_str(&s).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    idx,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })
        })
        .transpose()
    };
    let status: String = row.get(9)?;
    let status = match status.as_str() {
        "active" => SessionStatus::Active,
        "ended" => SessionStatus::Ended,
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                9,
                rusqlite::types::Type::Text,
                format!("unknown status `{other}`").into(),
            ));
        }
    };
    Ok(SessionRecord {
        id: row.get(0)?,
        route: row.get(1)?,
        upstream: row.get(2)?,
        upstream_session_id: row.get(3)?,
        protocol_version: row.get(4)?,
        client_info: json(5)?,
        client_capabilities: json(6)?,
        principal: row.get(7)?,
        owner: row.get(8)?,
        status,
        created_ms: to_u64(row.get(10)?, "created_ms")?,
        last_active_ms: to_u64(row.get(11)?, "last_active_ms")?,
        composite: json(12)?,
    })
}

/// Maps row-decoding failures to `Corrupt`, everything else to `Backend`.
pub(super) fn row_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(format!("sqlite: {e}"))
        }
        e => sql_err(e),
    }
}
