//! Sessions in PostgreSQL (cargo feature `postgres`), and the worked example of a [`Store`]:
//! read this file to write your own.
//!
//! # The table
//!
//! One table, created by the first lock that finds it missing, or ahead of time by
//! [`PostgresStore::init`] (for a role that may not create tables at run time):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS pso_sessions (
//!     service    text        NOT NULL,
//!     id         text        NOT NULL,
//!     record     bytea,                -- the bytes a session file holds; NULL: ended while held
//!     expires_at timestamptz,          -- when collection may remove it; NULL: never
//!     generation bigint      NOT NULL, -- raised by every write: a save checks it
//!     PRIMARY KEY (service, id)
//! );
//! CREATE INDEX IF NOT EXISTS pso_sessions_expires_at
//!     ON pso_sessions (expires_at, service, id) WHERE expires_at IS NOT NULL;
//! ```
//!
//! `record` holds what [`Record::encode`] makes, the same bytes as a session file, so a
//! session reads the same whatever keeps it. `expires_at` is the earlier of the record's
//! deadline and its last use plus its idle limit ([`crate::Meta`]); a record with neither (a
//! user's "log out everywhere" record) never expires. It lives in a column, not only inside
//! the record, so that collection is one indexed `DELETE` that never reads a record.
//!
//! # The lock: a session-level advisory lock, not a row lock
//!
//! A request's lock is `pg_advisory_lock` on a 64-bit hash of its key,
//! `hashtextextended(service || '/' || id, 0)`, held by the connection the request took, from
//! [`Store::lock`] until the lock is released. Three things of the [`Store`] contract rule out
//! the row lock (`SELECT … FOR UPDATE`) of one transaction per request:
//!
//! - **A save is durable and visible while the lock is still held.** After
//!   [`LockedSession::save`] returns, a crash must lose nothing, and [`Store::peek`] from any
//!   other connection must see it, yet the lock stays held until release. A transaction's
//!   locks (row locks, `pg_advisory_xact_lock`) end at its `COMMIT`; a session-level advisory
//!   lock does not. So every statement here is its own transaction (autocommit), and each
//!   save is committed when it returns.
//! - **[`Store::delete`] must not wait for a holder.** A row locked `FOR UPDATE` for a whole
//!   request makes any `DELETE` or `UPDATE` of it wait for that request. Here no request holds
//!   a row lock longer than one statement, so ending a session never waits.
//! - **A key with no row must lock too**, and leave nothing behind if unused: an advisory lock
//!   needs no row. [`LockOptions::create`] is ignored, as the trait allows.
//!
//! Whoever else holds a lock loses nothing but time: a hash shared by two keys (or by a lock
//! your application takes with `pg_advisory_lock(bigint)` in the same database) only makes
//! their holders wait for each other.
//!
//! The bounded wait is `SET LOCAL lock_timeout`: past it PostgreSQL fails the wait with
//! SQLSTATE 55P03, which is [`ErrorKind::LockTimeout`] (a 503). A process that dies (even by
//! `SIGKILL`) closes its connection, and its backend lets go of every lock it held: the
//! server's connection handling frees the lock within milliseconds. The lease
//! ([`LockOptions::lease`]) is `idle_session_timeout` while the lock is held (PostgreSQL 14
//! and later): a holder that sends nothing for that long, hung or cut off by the network, has
//! its connection closed by the server and its lock freed; its next save fails.
//!
//! **Poolers:** a session-level lock lives on one server connection. Through PgBouncer in
//! *session* mode (its default) every CGI process keeps one server connection from its start
//! to its exit, and the lock works; PgBouncer's `server_reset_query` (`DISCARD ALL`) frees
//! the locks of a client that died. *Transaction* mode hands each statement to any server
//! connection: the lock stays on one and the unlock goes to another, and a lock asked on the
//! connection that already holds it (for another client) is granted at once. A save answered
//! by another server process than its lock's fails and says so, and the generation check
//! below keeps two holders from losing each other's writes, but sessions stay locked until
//! their timeouts: do not use transaction mode. Every statement is unnamed (`query_typed`,
//! one round trip), so nothing prepared outlives a call through any pooler.
//!
//! # Saves check a generation
//!
//! The lock reads the row's `generation` with the record. A save writes only over that
//! generation, and raises it:
//!
//! ```sql
//! UPDATE pso_sessions SET record = $3, expires_at = $4, generation = generation + 1
//!  WHERE service = $1 AND id = $2 AND generation = $5 RETURNING generation
//! ```
//!
//! or, where the lock found no row, `INSERT … ON CONFLICT DO NOTHING RETURNING generation`.
//! No row back means someone who does not hold the lock changed the row: [`Store::delete`]
//! ended the session meanwhile. The save then fails with [`ErrorKind::LockLost`] and writes
//! nothing, so an ended session never comes back.
//!
//! [`Store::delete`] tries the key's lock without waiting (`pg_try_advisory_xact_lock`). Free,
//! it deletes the row. Held, it leaves a tombstone: the row with `record` NULL and its
//! generation raised, which fails the holder's next save whether or not the holder saw a row.
//! Every read takes a tombstone for "no session"; collection removes it once it is not held.
//!
//! # Each method's SQL
//!
//! | method | SQL | why |
//! | --- | --- | --- |
//! | [`Store::lock`] | `BEGIN; SET LOCAL lock_timeout …; SET idle_session_timeout …`, `pg_advisory_lock` (and `pg_backend_pid()`, to know the connection again), `COMMIT`, then the read below | the `SET LOCAL`s end with the transaction, the lock does not; the read is a statement of its own, after the wait, so that it sees what the holder it waited for saved (a statement sees the data as of its start) |
//! | [`LockedSession::load`] | `SELECT length(record), CASE WHEN length(record) <= $3 THEN record END, generation …` | a record over `PSOSessionMaxBytes` is [`ErrorKind::Corrupt`] without being sent |
//! | [`LockedSession::save`] | the `UPDATE` or `INSERT` above | one statement, committed when it returns |
//! | [`LockedSession::delete`] | `DELETE … WHERE service = $1 AND id = $2` | the lock is ours: whatever is there goes |
//! | [`LockedSession::renew`] | `SELECT 1` | any statement restarts `idle_session_timeout` |
//! | [`LockedSession::release`] | `pg_advisory_unlock`, `RESET idle_session_timeout` | `false` from the unlock means the lock was not on this connection any more |
//! | [`Store::peek`] | the read, without the lock | one statement sees one committed state, whole |
//! | [`Store::exists`] | `SELECT EXISTS (… AND record IS NOT NULL)` | |
//! | [`Store::delete`] | the try-lock, then `DELETE` or the tombstone, one statement | never waits for a holder |
//! | [`Store::keys`] | `… WHERE (service, id) > ($1, $2) ORDER BY service, id LIMIT 1000` | a page at a time in key order, along the primary key: bounded memory |
//! | [`Store::collect_garbage`] | expired candidates in `expires_at` order, those whose lock `pg_try_advisory_xact_lock` gets, and one `DELETE` of those, 200 rows a statement | a held session is skipped; the try-lock keeps a request from taking one while it goes; pages go on past skipped rows |
//!
//! # Connections, timeouts, errors
//!
//! A connection costs a server process (a fork): 4.5–10 ms. Connections that worked are kept
//! for the next call (under FastCGI, one per busy thread); one that failed is dropped, and the
//! idle ones with it (a restarted server closed them all), and a call that failed on a
//! reused connection is tried once more on a new one (not one that went unanswered: a server
//! that said nothing in time would not answer a new connection sooner). A lock keeps its
//! connection until it is released.
//!
//! Every wait is bounded, on pso's side as well as the server's, because a server that stops
//! answering (its process stopped by `SIGSTOP`, a hung disk, a paused machine, a pooler or
//! proxy that took a query and says nothing more) enforces none of its own timeouts, and TCP
//! sees no fault while the peer's kernel still acknowledges:
//!
//! | what | the server's bound | pso gives up after |
//! | --- | --- | --- |
//! | opening the socket | | [`CONNECT_TIMEOUT`], 200 ms (the URL's `connect_timeout` if it sets one) |
//! | the whole connection: the host name's lookup, the socket, the login (a password check; a PgBouncer whose server is down) | | [`LOGIN_TIMEOUT`], 2 s |
//! | each statement | [`STATEMENT_TIMEOUT`], 500 ms (`statement_timeout`, set on each new connection) | 1 s: the server's bound and a margin of 500 ms |
//! | the lock's wait | the request's `PSOSessionLockTimeout` (`lock_timeout`) | that wait, 500 ms for the statement, and the margin |
//! | creating the table (three statements) | 500 ms each | 2 s |
//! | a server cut off by the network, between calls | TCP keepalives and `tcp_user_timeout` (a few seconds) | |
//!
//! A connection is `tokio_postgres`'s client on a single-threaded tokio runtime of its own,
//! which drives its socket only while a call waits for its answer (the way the `postgres`
//! crate makes its blocking client, plus the deadline; it costs no measurable time a call).
//! A call past its deadline closes the connection at once (it may be half-way through an
//! answer, so it is never kept), the server lets go of a lock it held when it sees the
//! connection closed (at once, or once it goes on), and the request gets a 503 that says `no answer within 1000 ms`. A statement the server
//! received before it froze may still run and commit once it goes on: a 503 for a save
//! means "not known to be saved", never "lost what was saved before".
//!
//! A server that cannot be reached or answer in time (refused, closed, shutting down or
//! starting, out of connections, a statement cancelled by its timeout, a read-only standby)
//! is [`ErrorKind::Unavailable`], a 503 that names the server by its URL without the
//! password. Anything else (a wrong password, a missing database, no right to the table) is
//! [`ErrorKind::Io`], a 500: it needs a person.
//!
//! Only plain connections are made (`NoTls`): use a unix socket, loopback, or a private
//! network.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Config, Row};

use crate::error::{Error, ErrorKind, Result};
use crate::expiry::from_unix_secs;
use crate::id::{ServiceId, SessionId};
use crate::record::{MAX_RECORD_BYTES, Meta, Record};
use crate::store::admin::{Admin, Finding, Listed, Severity, listed_record};
use crate::store::lease::{Lease, Renewal};
use crate::store::{
    GcOutcome, GcReport, LockOptions, LockedSession, ServerKind, ServerUrl, SessionKey, Store,
    deleted_error,
};

mod connection;

use connection::{Connection, Fault, MARGIN};

/// What a call on a connection returns.
type PgResult<T> = std::result::Result<T, Fault>;

/// What asking for a session's lock came to.
enum Taken {
    /// Held, by this server process.
    Held(i32),
    /// Another request held it past the wait.
    Busy,
    /// [`MAX_WAITERS`] requests waited for it already: refused at once.
    Crowded,
}

/// The most requests that wait for one session's lock at once; more get a 503 at once. Each
/// waiter holds a connection (under CGI, a server process of PostgreSQL's), which a site runs
/// out of long before Redis's waiters cost anything: one client's requests on its own session
/// must leave connections for everyone else.
pub const MAX_WAITERS: i64 = 8;

/// Where a pass of collection goes on: after this row, in (expires_at, service, id) order.
type Position = (SystemTime, String, String);

/// The longest a connection may take to open its socket (unless the URL sets
/// `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest a connection may take from its socket to the end of its login (a password
/// check included): past it, the request gets a 503.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one statement may run (`statement_timeout`), the lock's wait aside.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_millis(500);
/// The table's name.
pub const TABLE: &str = "pso_sessions";
/// Idle connections kept for the next request (under FastCGI, one per busy thread).
const MAX_IDLE_CONNECTIONS: usize = 64;
/// Rows a collection statement looks at.
const GC_BATCH: i64 = 200;
/// Keys a listing statement reads.
const KEYS_BATCH: i64 = 1000;
/// TCP keepalives and user timeout: a server cut off by the network is noticed in seconds,
/// not the system's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates the table and its index. Several processes may run it at once: the transaction
/// lock (a constant key, "pso" in ASCII) makes them take turns, since `CREATE … IF NOT EXISTS`
/// alone can fail when two run together. Sent as one simple query, so it is one transaction.
const CREATE: &str = "
SELECT pg_advisory_xact_lock(7368559);
CREATE TABLE IF NOT EXISTS pso_sessions (
    service    text        NOT NULL,
    id         text        NOT NULL,
    record     bytea,
    expires_at timestamptz,
    generation bigint      NOT NULL,
    PRIMARY KEY (service, id)
);
CREATE INDEX IF NOT EXISTS pso_sessions_expires_at
    ON pso_sessions (expires_at, service, id) WHERE expires_at IS NOT NULL;
";

/// Takes a key's lock, waiting as long as `lock_timeout` lets it, unless $3 requests wait
/// for it already: each waits on a connection of its own (under CGI, a server process), and
/// those are what a site runs out of first. $1 service, $2 id. Returns 1 (taken) or 0 (too
/// many wait), and the server process.
const LOCK: &str = "
SELECT CASE
         WHEN pg_try_advisory_lock(key.k) THEN 1
         WHEN (SELECT count(*) FROM pg_locks
                WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = ((key.k >> 32) & 4294967295)::oid
                  AND objid = (key.k & 4294967295)::oid) >= $3 THEN 0
         ELSE (SELECT 1 FROM (SELECT pg_advisory_lock(key.k)) AS waited)
       END,
       pg_backend_pid()
  FROM (SELECT hashtextextended($1 || '/' || $2, 0) AS k) AS key";

/// Takes a key's lock if it is free (a wait of zero): 1 if it did, 2 if not, and the server
/// process. $1 service, $2 id.
const TRY_LOCK: &str = "
SELECT CASE WHEN pg_try_advisory_lock(hashtextextended($1 || '/' || $2, 0)) THEN 1 ELSE 2 END,
       pg_backend_pid()";

/// Lets go of a key's lock; `false` if this connection did not hold it. $1 service, $2 id.
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1 || '/' || $2, 0))";

/// Reads a record no larger than $3 bytes: its length, the record (NULL if too large, or a
/// tombstone), its generation. No row: nothing under the key.
const READ: &str = "
SELECT length(record), CASE WHEN length(record) <= $3 THEN record END, generation
  FROM pso_sessions WHERE service = $1 AND id = $2";

/// A first save, where the lock found no row. $3 record, $4 expiry.
const INSERT: &str = "
INSERT INTO pso_sessions (service, id, record, expires_at, generation)
VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (service, id) DO NOTHING
RETURNING generation";

/// A save over the generation the lock last saw ($5).
const UPDATE: &str = "
UPDATE pso_sessions SET record = $3, expires_at = $4, generation = generation + 1
 WHERE service = $1 AND id = $2 AND generation = $5
RETURNING generation";

/// The holder's own delete.
const DELETE: &str = "DELETE FROM pso_sessions WHERE service = $1 AND id = $2";

/// Ends a session without waiting for its holder, in one statement. If the key's lock is
/// free (taken here until the statement commits), the row goes; if a request holds it, the
/// row becomes a tombstone with a new generation (inserted if there was no row), which fails
/// that request's next save. $3 the tombstone's expiry (now: collection may take it once it
/// is not held).
const END: &str = "
WITH free AS MATERIALIZED (
    SELECT pg_try_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0)) AS free
), gone AS (
    DELETE FROM pso_sessions WHERE service = $1 AND id = $2 AND (SELECT free FROM free)
)
INSERT INTO pso_sessions (service, id, record, expires_at, generation)
SELECT $1, $2, NULL, $3, 1 WHERE NOT (SELECT free FROM free)
ON CONFLICT (service, id) DO UPDATE
   SET record = NULL, expires_at = EXCLUDED.expires_at, generation = pso_sessions.generation + 1";

const EXISTS: &str = "
SELECT EXISTS (SELECT 1 FROM pso_sessions
                WHERE service = $1 AND id = $2 AND record IS NOT NULL)";

/// A page of keys after ($1, $2), in key order.
const KEYS: &str = "
SELECT service, id FROM pso_sessions
 WHERE (service, id) > ($1, $2) AND record IS NOT NULL
 ORDER BY service, id LIMIT $3";

/// One batch of collection: at most $5 rows expired at $1, after ($2, $3, $4) in
/// (expires_at, service, id) order (all of them if $2 is NULL); those whose lock is free are
/// locked until the statement commits and deleted, unless a save made them live meanwhile.
/// Returns the rows looked at, those deleted, and the last one looked at (where the next
/// batch starts); no row once nothing is left. A row pso did not write, at `-infinity`, is
/// left alone: a time that far cannot be handed back as where the next batch starts.
const COLLECT: &str = "
WITH candidates AS MATERIALIZED (
    SELECT service, id, expires_at FROM pso_sessions
     WHERE expires_at <= $1 AND isfinite(expires_at)
       AND ($2::timestamptz IS NULL OR (expires_at, service, id) > ($2, $3, $4))
     ORDER BY expires_at, service, id LIMIT $5
), free AS MATERIALIZED (
    SELECT service, id FROM candidates
     WHERE pg_try_advisory_xact_lock(hashtextextended(service || '/' || id, 0))
), removed AS (
    DELETE FROM pso_sessions s USING free f
     WHERE s.service = f.service AND s.id = f.id AND s.expires_at <= $1
    RETURNING 1
)
SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM removed),
       last.expires_at, last.service, last.id
  FROM (SELECT * FROM candidates
         ORDER BY expires_at DESC, service DESC, id DESC LIMIT 1) AS last";

/// Sessions kept in one PostgreSQL database. Clones share its connections.
///
/// ```no_run
/// # fn main() -> pso::Result<()> {
/// use pso::store::{PostgresStore, StoreLocation};
/// let StoreLocation::Server(url) = StoreLocation::parse("postgres://app@127.0.0.1/app")? else { unreachable!() };
/// let store = PostgresStore::open(&url, None)?;
/// store.init()?; // optional: the first lock creates the table
/// let service = pso::Service::from_process().with_store(std::sync::Arc::new(store));
/// # Ok(()) }
/// ```
///
/// Programs seldom build one: `PSOSessionStore=postgres://…` makes [`crate::run`] use it.
#[derive(Clone)]
pub struct PostgresStore {
    server: Arc<Server>,
    max_bytes: u64,
    renew_leases: bool,
}

/// One server: how to reach it, and its idle connections.
struct Server {
    /// Its `Debug` prints `password: Some(_)`, never the password.
    config: Config,
    /// The URL as it may be shown (no password).
    shown: String,
    idle: Mutex<Vec<Connection>>,
}

impl PostgresStore {
    /// The store at `url` (`postgres://` or `postgresql://`, as libpq reads them: a socket
    /// directory as `host=/run/postgresql` or a percent-encoded host), with `password` if the
    /// URL has none (from `PSOSessionStorePasswordFile`). Nothing is connected yet: the first
    /// request that needs the store connects, so a server that is down fails requests (503),
    /// not the program's start.
    pub fn open(url: &ServerUrl, password: Option<&str>) -> Result<PostgresStore> {
        if url.kind() != ServerKind::Postgres {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{url}: not a PostgreSQL URL"),
            ));
        }
        let mut config: Config = url.expose().parse().map_err(|e| {
            // The crate's messages about a URL name options, never their values.
            Error::with_source(
                ErrorKind::Invalid,
                format!("{url}: not a PostgreSQL URL"),
                e,
            )
        })?;
        if let Some(password) = password {
            if config.get_password().is_some() {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{url}: the URL has a password and PSOSessionStorePasswordFile names another; keep one"
                    ),
                ));
            }
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("pso");
        }
        if config.get_keepalives_interval().is_none() {
            config
                .keepalives_idle(KEEPALIVE_IDLE)
                .keepalives_interval(KEEPALIVE_INTERVAL)
                .keepalives_retries(KEEPALIVE_RETRIES);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        Ok(PostgresStore {
            server: Arc::new(Server {
                config,
                shown: url.to_string(),
                idle: Mutex::new(Vec::new()),
            }),
            max_bytes: MAX_RECORD_BYTES,
            renew_leases: true,
        })
    }

    /// Reads and writes records of at most `max_bytes` (`PSOSessionMaxBytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> PostgresStore {
        self.max_bytes = max_bytes;
        self
    }

    /// Whether the locks this store takes keep their leases while they are held (the
    /// default), or let them lapse as a stalled process would: for tests of what a lapsed
    /// lease does.
    pub fn with_lease_renewal(mut self, renew: bool) -> PostgresStore {
        self.renew_leases = renew;
        self
    }

    /// Creates the table and its index if they are missing (`pso sessions init`): for a
    /// database role that may create them now but not at run time. Safe to run while
    /// requests are served, and by several processes at once.
    pub fn init(&self) -> Result<()> {
        self.server.run("creating the sessions table", create_table)
    }

    /// Connects (or reuses a connection) and asks the server's version: for `pso config`.
    pub fn server_version(&self) -> Result<String> {
        self.server.run("asking its version", |client| {
            let row = client.query_typed_one("SELECT current_setting('server_version')", &[])?;
            Ok(row.try_get(0)?)
        })
    }

    fn decode(&self, key: &SessionKey, read: Read) -> Result<Option<Record>> {
        match read {
            Read::Missing | Read::Tombstone => Ok(None),
            Read::TooLarge(length) => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "session {key:?}: its record of {length} bytes is larger than PSOSessionMaxBytes"
                ),
            )),
            Read::Record(bytes) => Record::decode_owned(bytes, self.max_bytes)
                .map(Some)
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Corrupt,
                        format!("session {key:?}: its record in PostgreSQL does not read"),
                        e,
                    )
                }),
        }
    }

    /// The lock of `key` on `client`: the server process that holds it, or why not.
    fn take_lock(
        client: &mut Connection,
        key: &SessionKey,
        options: &LockOptions,
    ) -> PgResult<Taken> {
        // Whole milliseconds, formatted by us: no text from outside enters these statements.
        let lease = millis(options.lease);
        // The server bounds the wait and the statement; this side gives up a little later,
        // on a server that answers nothing.
        let (lock, limits, deadline) = if options.timeout.is_zero() {
            (TRY_LOCK, String::new(), connection::ROUND_TRIP)
        } else {
            match u32::try_from(options.timeout.as_millis()) {
                // Past 24 days PostgreSQL takes no timeout: no limit (0), as Duration::MAX.
                Ok(wait) if wait <= i32::MAX as u32 - 1_000 => (
                    LOCK,
                    format!(
                        "SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {};",
                        wait.max(1),
                        wait.max(1) + millis(STATEMENT_TIMEOUT)
                    ),
                    Duration::from_millis(u64::from(wait.max(1))) + connection::ROUND_TRIP,
                ),
                _ => (
                    LOCK,
                    "SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0;".to_owned(),
                    Duration::MAX,
                ),
            }
        };
        client.batch_execute(&format!(
            "BEGIN; {limits} SET idle_session_timeout = {lease};"
        ))?;
        let key = KeyParams::of(key);
        let [service, id] = key.params();
        let params = [service, id, (&MAX_WAITERS, Type::INT8)];
        let params = if lock == LOCK {
            &params[..]
        } else {
            &params[..2]
        };
        let taken = match client.within(deadline, async |client| {
            client.query_typed_one(lock, params).await
        }) {
            Ok(row) => match row.try_get::<_, i32>(0)? {
                1 => Taken::Held(row.try_get::<_, i32>(1)?),
                0 => Taken::Crowded,
                _ => Taken::Busy,
            },
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Taken::Busy,
            Err(e) => return Err(e),
        };
        // Taken, the lock outlives the transaction; refused, the ROLLBACK undoes the lease.
        client.batch_execute(if matches!(taken, Taken::Held(_)) {
            "COMMIT"
        } else {
            "ROLLBACK"
        })?;
        Ok(taken)
    }

    fn crowded(key: &SessionKey) -> Error {
        Error::new(
            ErrorKind::LockTimeout,
            format!("session {key:?}: {MAX_WAITERS} requests already wait for it"),
        )
    }

    fn busy(key: &SessionKey) -> Error {
        Error::new(
            ErrorKind::LockTimeout,
            format!("session {key:?} stayed locked past PSOSessionLockTimeout"),
        )
    }
}

impl Server {
    /// Runs `f` on a connection: an idle one, or a new one. One that worked is kept for the
    /// next call. One that failed is dropped (it may be half-way through an answer); if the
    /// connection itself failed, so are the idle ones, and a reused connection's call is tried
    /// once more on a new one (a restarted server closed every old connection). A table that
    /// does not exist yet holds no session: reads see none (`missing`).
    fn run<T>(&self, doing: &str, mut f: impl FnMut(&mut Connection) -> PgResult<T>) -> Result<T> {
        let (mut client, mut reused) = self.connection()?;
        loop {
            match f(&mut client) {
                Ok(value) => {
                    self.keep(client);
                    return Ok(value);
                }
                Err(e) if broken(&e) => {
                    drop(client);
                    self.forget_idle();
                    // A server that answered nothing in time would not answer a new
                    // connection sooner: not tried again.
                    if !reused || matches!(e, Fault::NoAnswer(_)) {
                        return Err(self.error(doing, e));
                    }
                    client = self.connect()?;
                    reused = false;
                }
                Err(e) => {
                    // An error from the server leaves the connection in step.
                    self.keep(client);
                    return Err(self.error(doing, e));
                }
            }
        }
    }

    /// An idle connection (`true`) or a new one.
    fn connection(&self) -> Result<(Connection, bool)> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                Some(client) if client.is_closed() => continue,
                Some(client) => return Ok((client, true)),
                None => return Ok((self.connect()?, false)),
            }
        }
    }

    fn connect(&self) -> Result<Connection> {
        // The crate bounds only the socket's connect, not the login after it (a PgBouncer
        // whose server is down answers after its client_login_timeout, 60 s; a listener that
        // never answers, never), nor a host name's lookup: the whole is given up past
        // LOGIN_TIMEOUT, and a late connection is closed.
        let mut client = match Connection::open(&self.config, LOGIN_TIMEOUT) {
            Ok(client) => client,
            Err(Fault::NoAnswer(_)) => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "PostgreSQL at {}: connecting: no login within {} ms",
                        self.shown,
                        LOGIN_TIMEOUT.as_millis()
                    ),
                ));
            }
            Err(e) => return Err(self.error("connecting", e)),
        };
        // Every statement bounded; the lock's wait sets its own for its transaction.
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                millis(STATEMENT_TIMEOUT)
            ))
            .map_err(|e| self.error("setting statement_timeout", e))?;
        Ok(client)
    }

    fn keep(&self, client: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS && !client.is_closed() {
            idle.push(client);
        }
    }

    fn forget_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
    }

    /// pso's error for a failed call: a server that cannot be reached or answer now is
    /// [`ErrorKind::Unavailable`] (a 503), one that refused what was asked is
    /// [`ErrorKind::Io`] (a 500).
    fn error(&self, doing: &str, e: Fault) -> Error {
        let kind = if unavailable(&e) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Io
        };
        Error::with_source(
            kind,
            format!("PostgreSQL at {}: {doing}", self.shown),
            Cause::from(e),
        )
    }
}

/// Whether the connection itself failed (closed, reset, cut off, silent), rather than a
/// statement.
fn broken(e: &Fault) -> bool {
    match e {
        Fault::Postgres(e) => connection_failed(e),
        Fault::NoAnswer(_) | Fault::Runtime(_) => true,
    }
}

fn connection_failed(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_none()
            && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code().is_some_and(|code| {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::IDLE_SESSION_TIMEOUT,
                    SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                ]
                .contains(code)
        })
}

/// Whether the server could not be reached or did not answer in time: worth a 503 and a retry.
fn unavailable(e: &Fault) -> bool {
    let e = match e {
        Fault::Postgres(e) => e,
        Fault::NoAnswer(_) => return true,
        // This process's trouble (out of file descriptors), not the server's.
        Fault::Runtime(_) => return false,
    };
    if connection_failed(e) {
        return true;
    }
    match e.code() {
        Some(code) => {
            // The code is the server's: never trusted to be five ASCII characters.
            let class = code.code().get(..2).unwrap_or("");
            // 53: out of connections, memory or disk; 57014: statement_timeout; 25006: a
            // read-only standby (a failover under way); 40P01: a deadlock, rolled back.
            class == "53"
                || [
                    SqlState::QUERY_CANCELED,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                    SqlState::T_R_DEADLOCK_DETECTED,
                ]
                .contains(code)
        }
        // Not a server's answer: the socket (refused, timed out) or the protocol.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// A failed call as the log shows it: one line, the SQLSTATE and the server's message,
/// without the DETAIL a server may add (it can quote a key, a session id among them).
#[derive(Debug)]
struct Cause {
    text: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// The socket's error, kept as the cause (its kind tells refused from reset).
    fn io(text: String, io: &std::io::Error) -> Cause {
        Cause {
            text,
            source: Some(Box::new(std::io::Error::new(io.kind(), io.to_string()))),
        }
    }
}

impl From<Fault> for Cause {
    fn from(fault: Fault) -> Cause {
        let e = match fault {
            Fault::Postgres(e) => e,
            Fault::NoAnswer(limit) => {
                return Cause {
                    text: format!("no answer within {} ms", limit.as_millis()),
                    source: None,
                };
            }
            Fault::Runtime(io) => {
                return Cause::io("cannot make the runtime for its connection".into(), &io);
            }
        };
        match e.as_db_error() {
            Some(db) => Cause {
                text: format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
                source: None,
            },
            None => match std::error::Error::source(&e) {
                Some(cause) => match cause.downcast_ref::<std::io::Error>() {
                    Some(io) => Cause::io(e.to_string(), io),
                    // A type or protocol mismatch: its own words.
                    None => Cause {
                        text: format!("{e}: {cause}"),
                        source: None,
                    },
                },
                None => Cause {
                    text: e.to_string(),
                    source: None,
                },
            },
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn create_table(client: &mut Connection) -> PgResult<()> {
    // Three statements, each bounded by statement_timeout.
    client.within(3 * STATEMENT_TIMEOUT + MARGIN, async |client| {
        client.batch_execute(CREATE).await
    })
}

fn undefined_table(e: &Fault) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

/// What a read found under a key.
enum Read {
    Missing,
    /// Ended while a request held it: no session (but a generation a save must not pass).
    Tombstone,
    TooLarge(i64),
    Record(Vec<u8>),
}

/// Reads the row of `key`: what it holds, and its generation (`None`: no row).
fn read(
    client: &mut Connection,
    key: &SessionKey,
    max_bytes: u64,
) -> PgResult<(Read, Option<i64>)> {
    let max = i32::try_from(max_bytes).unwrap_or(i32::MAX);
    let key = KeyParams::of(key);
    let [service, id] = key.params();
    let Some(row) = client.query_typed_opt(READ, &[service, id, (&max, Type::INT4)])? else {
        return Ok((Read::Missing, None));
    };
    let length: Option<i32> = row.try_get(0)?;
    let record: Option<Vec<u8>> = row.try_get(1)?;
    let generation: i64 = row.try_get(2)?;
    let found = match (length, record) {
        (None, _) => Read::Tombstone,
        (Some(_), Some(bytes)) => Read::Record(bytes),
        (Some(length), None) => Read::TooLarge(i64::from(length)),
    };
    Ok((found, Some(generation)))
}

/// A read that takes a missing table for a missing session.
fn read_or_missing(
    client: &mut Connection,
    key: &SessionKey,
    max_bytes: u64,
) -> PgResult<(Read, Option<i64>)> {
    match read(client, key, max_bytes) {
        Err(e) if undefined_table(&e) => Ok((Read::Missing, None)),
        other => other,
    }
}

/// A key's service and id, as the text parameters $1 and $2 of every statement.
struct KeyParams<'a>(&'a str, &'a str);

impl<'a> KeyParams<'a> {
    fn of(key: &'a SessionKey) -> KeyParams<'a> {
        KeyParams(key.service.as_str(), key.id.as_str())
    }

    fn params(&self) -> [(&(dyn ToSql + Sync), Type); 2] {
        [(&self.0, Type::TEXT), (&self.1, Type::TEXT)]
    }
}

/// Whole milliseconds, at least one, at most what PostgreSQL's settings take.
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis())
        .unwrap_or(u32::MAX)
        .clamp(1, i32::MAX as u32)
}

/// When collection may remove a record: the earlier of its deadline and the end of its idle
/// limit (as [`Meta::is_expired`] counts them); `None` for a record that never expires.
fn expires_at(meta: &Meta) -> Option<SystemTime> {
    let idle_end = meta
        .max_idle
        .map(|idle| meta.last_access.saturating_add(idle).saturating_add(1));
    let end = match (meta.deadline, idle_end) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(from_unix_secs(end))
}

impl Store for PostgresStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let server = &self.server;
        let (mut client, mut reused) = server.connection()?;
        let backend = loop {
            match PostgresStore::take_lock(&mut client, key, &options) {
                Ok(Taken::Held(backend)) => break backend,
                Ok(Taken::Busy) => {
                    server.keep(client);
                    return Err(PostgresStore::busy(key));
                }
                Ok(Taken::Crowded) => {
                    server.keep(client);
                    return Err(PostgresStore::crowded(key));
                }
                Err(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                    let _ = client.batch_execute("ROLLBACK");
                    server.keep(client);
                    return Err(PostgresStore::busy(key));
                }
                Err(e) => {
                    // Whatever state it is in (a transaction, perhaps the lock), it goes.
                    drop(client);
                    // A server that answered nothing in time is not asked again.
                    if !broken(&e) || !reused || matches!(e, Fault::NoAnswer(_)) {
                        return Err(server.error("taking a session's lock", e));
                    }
                    server.forget_idle();
                    client = server.connect()?;
                    reused = false;
                }
            }
        };
        let read = match read(&mut client, key, self.max_bytes) {
            Err(e) if undefined_table(&e) => {
                create_table(&mut client).and_then(|()| read(&mut client, key, self.max_bytes))
            }
            other => other,
        };
        let (found, generation) = match read {
            Ok(done) => done,
            // Dropping the connection lets go of the lock.
            Err(e) => return Err(server.error("reading a locked session", e)),
        };
        let saw_record = matches!(found, Read::Record(_) | Read::TooLarge(_));
        let loaded = self.decode(key, found);
        let client = Arc::new(Mutex::new(Some(client)));
        let lease = PostgresLease {
            store: self.clone(),
            session: key.clone(),
            client: Arc::downgrade(&client),
        };
        let renewal = self
            .renew_leases
            .then(|| Renewal::start(Arc::new(lease), options.lease));
        Ok(Box::new(PostgresLock {
            store: self.clone(),
            key: key.clone(),
            client,
            renewal,
            backend,
            generation,
            first_load: Some(loaded),
            saw_record,
            ended: false,
            deleted: false,
            released: false,
        }))
    }

    fn exists(&self, key: &SessionKey) -> Result<bool> {
        self.server.run("looking for a session", |client| {
            match client.query_typed_one(EXISTS, &KeyParams::of(key).params()) {
                Ok(row) => Ok(row.try_get(0)?),
                Err(e) if undefined_table(&e) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        let (found, _) = self.server.run("reading a session", |client| {
            read_or_missing(client, key, self.max_bytes)
        })?;
        self.decode(key, found)
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        let now = SystemTime::now();
        self.server.run("ending a session", |client| {
            let key = KeyParams::of(key);
            let [service, id] = key.params();
            match client.execute_typed(END, &[service, id, (&now, Type::TIMESTAMPTZ)]) {
                Ok(_) => Ok(()),
                Err(e) if undefined_table(&e) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        Ok(Box::new(Listing {
            store: self,
            after: Some((String::new(), String::new())),
            batch: Vec::new(),
        }))
    }

    fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
        let started = Instant::now();
        let mut report = GcReport::default();
        let mut after: Option<Position> = None;
        loop {
            if started.elapsed() >= budget {
                report.incomplete = true;
                return Ok(report);
            }
            let batch = self.server.run("collecting expired sessions", |client| {
                let (at, service, id) = match &after {
                    Some((at, service, id)) => (Some(*at), service.as_str(), id.as_str()),
                    None => (None, "", ""),
                };
                let params: [(&(dyn ToSql + Sync), Type); 5] = [
                    (&now, Type::TIMESTAMPTZ),
                    (&at, Type::TIMESTAMPTZ),
                    (&service, Type::TEXT),
                    (&id, Type::TEXT),
                    (&GC_BATCH, Type::INT8),
                ];
                match client.query_typed_opt(COLLECT, &params) {
                    Ok(row) => row.map(|row| collected(&row)).transpose(),
                    Err(e) if undefined_table(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })?;
            let Some((looked, removed, last)) = batch else {
                return Ok(report);
            };
            report.listed += looked;
            report.examined += looked;
            report.removed += removed;
            // Held, or saved live again between the look and the delete.
            report.busy += looked - removed;
            if looked < GC_BATCH as u64 {
                return Ok(report);
            }
            after = Some(last);
        }
    }
}

impl Admin for PostgresStore {
    fn prepare(&self) -> Result<Option<String>> {
        self.init()?;
        Ok(Some(
            "the table pso_sessions and its index pso_sessions_expires_at".to_owned(),
        ))
    }

    fn place(&self) -> String {
        self.server.shown.clone()
    }

    fn inspect(&self, key: &SessionKey) -> Result<Option<Listed>> {
        let (found, _) = self.server.run("looking at a session", |client| {
            read_or_missing(client, key, MAX_RECORD_BYTES)
        })?;
        let bytes = match found {
            Read::Missing | Read::Tombstone => return Ok(None),
            Read::TooLarge(length) => {
                return Ok(Some(Listed::Unreadable {
                    key: key.clone(),
                    error: Error::new(
                        ErrorKind::Corrupt,
                        format!("a record of {length} bytes, larger than any pso reads"),
                    ),
                }));
            }
            Read::Record(bytes) => bytes,
        };
        Ok(Some(listed_record(key, &bytes)))
    }

    /// One `DELETE` per batch removes what expired: the outcome of each row is not known
    /// one by one, so `observe` hears of none; the report counts them.
    fn collect(
        &self,
        now: SystemTime,
        service: Option<&ServiceId>,
        _observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        if service.is_some() {
            // Its DELETE takes every service's expired rows: saying so beats removing more
            // than was asked.
            return Err(Error::new(
                ErrorKind::Invalid,
                "the PostgreSQL store collects every service's expired sessions at once: run gc without --service",
            ));
        }
        self.collect_garbage(now, Duration::MAX)
    }

    fn check(&self) -> Vec<Finding> {
        match self.server_version() {
            Ok(version) => vec![Finding::new(
                Severity::Note,
                format!("PostgreSQL {version}, reachable"),
            )],
            Err(e) => vec![Finding::new(
                Severity::Error,
                format!("cannot be used: {}", crate::ErrorChain(&e)),
            )],
        }
    }
}

/// One batch's counts and where the next starts.
fn collected(row: &Row) -> PgResult<(u64, u64, Position)> {
    let looked: i64 = row.try_get(0)?;
    let removed: i64 = row.try_get(1)?;
    let last = (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
    Ok((
        u64::try_from(looked).unwrap_or(0),
        u64::try_from(removed).unwrap_or(0),
        last,
    ))
}

/// The sessions of a store, a page at a time in key order: bounded memory however many.
struct Listing<'a> {
    store: &'a PostgresStore,
    /// The last key read; `None` once a page came back short.
    after: Option<(String, String)>,
    /// The page, last key first.
    batch: Vec<(String, String)>,
}

impl Iterator for Listing<'_> {
    type Item = Result<SessionKey>;

    fn next(&mut self) -> Option<Result<SessionKey>> {
        loop {
            while let Some((service, id)) = self.batch.pop() {
                // A row that names no session pso could have made is not pso's: skipped.
                if let (Ok(service), Ok(id)) = (service.parse::<ServiceId>(), SessionId::named(&id))
                {
                    return Some(Ok(SessionKey::new(service, id)));
                }
            }
            let (service, id) = self.after.take()?;
            let page = self.store.server.run("listing sessions", |client| {
                let params: [(&(dyn ToSql + Sync), Type); 3] = [
                    (&service, Type::TEXT),
                    (&id, Type::TEXT),
                    (&KEYS_BATCH, Type::INT8),
                ];
                let rows = match client.query_typed(KEYS, &params) {
                    Ok(rows) => rows,
                    Err(e) if undefined_table(&e) => Vec::new(),
                    Err(e) => return Err(e),
                };
                rows.iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<PgResult<Vec<(String, String)>>>()
            });
            match page {
                Ok(mut page) => {
                    if page.len() as i64 == KEYS_BATCH {
                        self.after = page.last().cloned();
                    }
                    page.reverse();
                    self.batch = page;
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A session's lock in PostgreSQL: an advisory lock held by this connection.
struct PostgresLock {
    store: PostgresStore,
    key: SessionKey,
    /// The connection that holds the lock; `None` once released, or lost with its connection.
    /// Shared with the renewing thread, which keeps the connection from idling out (its
    /// `idle_session_timeout` is the lock's lease) while the request runs.
    client: Arc<Mutex<Option<Connection>>>,
    /// Keeps the lease while the lock is held; `None` once it is let go.
    renewal: Option<Renewal>,
    /// The server process that took the lock: a statement answered by another one went
    /// through a pooler in transaction mode, which cannot keep this lock.
    backend: i32,
    /// The generation of the row as this lock last read or wrote it; `None`: no row.
    generation: Option<i64>,
    /// What the lock read, for the first load.
    first_load: Option<Result<Option<Record>>>,
    /// Whether the last read found a record.
    saw_record: bool,
    /// The session was ended by someone else while this lock held it.
    ended: bool,
    deleted: bool,
    released: bool,
}

impl PostgresLock {
    fn lost(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::LockLost,
            format!("session {:?}: {what}", self.key),
        )
    }

    /// Runs `f` on the lock's connection. A connection that failed is dropped, and the
    /// lock with it (the server lets go of it when the connection closes).
    fn run<T>(&mut self, doing: &str, f: impl FnOnce(&mut Connection) -> PgResult<T>) -> Result<T> {
        let shared = self.client.clone();
        let mut client = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(connection) = client.as_mut() else {
            return Err(self.lost(&format!(
                "{doing}: the connection that held its lock was lost"
            )));
        };
        match f(connection) {
            Ok(value) => Ok(value),
            Err(e) => {
                let timed_out = e.code().is_some_and(|code| {
                    [
                        SqlState::IDLE_SESSION_TIMEOUT,
                        SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                    ]
                    .contains(code)
                });
                if broken(&e) {
                    *client = None;
                    self.store.server.forget_idle();
                }
                if timed_out {
                    Err(self.lost(&format!(
                        "{doing}: its lock's lease (idle_session_timeout) ran out"
                    )))
                } else {
                    Err(self.store.server.error(doing, e))
                }
            }
        }
    }

    /// Why a write found another generation: the session was ended meanwhile, unless this
    /// connection is not the one that holds the lock (a pooler in transaction mode).
    fn overtaken(&mut self, what: &str) -> Error {
        let backend = self.run("checking the lock's connection", |client| {
            let row = client.query_typed_one("SELECT pg_backend_pid()", &[])?;
            Ok(row.try_get::<_, i32>(0)?)
        });
        match backend {
            Ok(backend) if backend != self.backend => Error::new(
                ErrorKind::Io,
                format!(
                    "session {:?}: {what}: its lock was taken by another server connection (a pooler in transaction mode? use session mode)",
                    self.key
                ),
            ),
            _ => self.lost(&format!(
                "{what}: the session was ended while this request held it"
            )),
        }
    }

    fn let_go(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        // No renewal may come between the unlock and the connection's return to the pool.
        self.renewal = None;
        if self.holds_no_connection() {
            return Err(self.lost("its lock went with its connection before it was released"));
        }
        let key = self.key.clone();
        let unlocked = self.run("releasing a session's lock", |client| {
            let unlocked: bool = client
                .query_typed_one(UNLOCK, &KeyParams::of(&key).params())?
                .try_get(0)?;
            client.batch_execute("RESET idle_session_timeout")?;
            Ok(unlocked)
        });
        let client = self
            .client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match unlocked {
            Ok(true) => {
                if let Some(client) = client {
                    self.store.server.keep(client);
                }
                Ok(())
            }
            Ok(false) => Err(self.lost(
                "the lock was no longer held by its connection when released (a pooler in transaction mode?)",
            )),
            Err(e) => Err(e),
        }
    }
}

impl PostgresLock {
    fn holds_no_connection(&self) -> bool {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

/// A PostgreSQL lock as the renewing thread sees it: a statement on the connection that holds
/// it resets the connection's idle time, whose limit (`idle_session_timeout`) is the lease.
struct PostgresLease {
    store: PostgresStore,
    session: SessionKey,
    client: std::sync::Weak<Mutex<Option<Connection>>>,
}

impl Lease for PostgresLease {
    fn session(&self) -> &SessionKey {
        &self.session
    }

    fn renew(&self) -> Result<bool> {
        let Some(shared) = self.client.upgrade() else {
            return Ok(false);
        };
        // A request using its connection right now renews the lease itself.
        let mut client = match shared.try_lock() {
            Ok(client) => client,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(true),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        let Some(connection) = client.as_mut() else {
            return Ok(false);
        };
        match connection.batch_execute("SELECT 1") {
            Ok(()) => Ok(true),
            Err(e) => {
                // It may be half-way through an answer: the lock goes with it, and the
                // request's next statement says so.
                *client = None;
                Err(self.store.server.error("renewing a session's lock", e))
            }
        }
    }
}

impl LockedSession for PostgresLock {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn load(&mut self) -> Result<Option<Record>> {
        if self.deleted {
            return Ok(None);
        }
        if let Some(first) = self.first_load.take() {
            return first;
        }
        let (key, max_bytes) = (self.key.clone(), self.store.max_bytes);
        let (found, generation) = self.run("reading a locked session", |client| {
            read(client, &key, max_bytes)
        })?;
        // A tombstone, or no row where this lock saw one: ended by Store::delete while held.
        // Loading again must not make a save bring it back.
        if matches!(found, Read::Tombstone) || (self.saw_record && matches!(found, Read::Missing)) {
            self.ended = true;
        }
        self.saw_record = matches!(found, Read::Record(_) | Read::TooLarge(_));
        self.generation = generation;
        self.store.decode(&self.key, found)
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        if self.deleted {
            return Err(deleted_error(&self.key));
        }
        if self.ended {
            return Err(self.lost("the session was ended while this request held it"));
        }
        let bytes = record.encode()?;
        let expires = expires_at(&record.meta);
        let key = self.key.clone();
        let seen = self.generation;
        let saved = self.run("saving a session", |client| {
            let key = KeyParams::of(&key);
            let [service, id] = key.params();
            let record: (&(dyn ToSql + Sync), Type) = (&bytes, Type::BYTEA);
            let expires: (&(dyn ToSql + Sync), Type) = (&expires, Type::TIMESTAMPTZ);
            let row = match &seen {
                Some(generation) => client.query_typed_opt(
                    UPDATE,
                    &[service, id, record, expires, (generation, Type::INT8)],
                )?,
                None => client.query_typed_opt(INSERT, &[service, id, record, expires])?,
            };
            Ok(row.map(|row| row.try_get::<_, i64>(0)).transpose()?)
        })?;
        match saved {
            Some(generation) => {
                self.generation = Some(generation);
                self.first_load = None;
                Ok(())
            }
            None => Err(self.overtaken("not saved")),
        }
    }

    fn delete(&mut self) -> Result<()> {
        let key = self.key.clone();
        self.run("deleting a session", |client| {
            client.execute_typed(DELETE, &KeyParams::of(&key).params())
        })?;
        self.deleted = true;
        self.first_load = None;
        self.generation = None;
        Ok(())
    }

    fn lock_sibling(&self, id: SessionId, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        self.store
            .lock(&SessionKey::new(self.key.service.clone(), id), options)
    }

    fn renew(&mut self) -> Result<()> {
        self.run("renewing a session's lock", |client| {
            client.batch_execute("SELECT 1")
        })
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        self.let_go()
    }
}

impl Drop for PostgresLock {
    fn drop(&mut self) {
        // A connection lost earlier failed the call that lost it, which said so.
        if self.holds_no_connection() {
            return;
        }
        if let Err(e) = self.let_go() {
            log::warn!("{}", crate::error::ErrorChain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_expire_at_their_deadline_or_idle_limit() {
        let at = |secs| Some(from_unix_secs(secs));
        let mut meta = Meta::new(1_000);
        assert_eq!(expires_at(&meta), None);
        meta.deadline = Some(5_000);
        assert_eq!(expires_at(&meta), at(5_000));
        meta.max_idle = Some(60);
        // Expired once more than 60 s went unused, as Meta::is_expired counts.
        assert_eq!(expires_at(&meta), at(1_061));
        assert!(!meta.is_expired(1_060) && meta.is_expired(1_061));
        meta.deadline = None;
        meta.max_idle = Some(u64::MAX);
        assert_eq!(expires_at(&meta), Some(from_unix_secs(u64::MAX)));
    }

    #[test]
    fn timeouts_fit_postgresql_settings() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), i32::MAX as u32);
    }

    fn url(text: &str) -> ServerUrl {
        match crate::store::StoreLocation::parse(text).unwrap() {
            crate::store::StoreLocation::Server(url) => url,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn passwords_stay_out_of_errors_and_debug() {
        let store =
            PostgresStore::open(&url("postgres://app:s3cret@127.0.0.1:1/db"), None).unwrap();
        let shown = format!("{:?} {}", store.server.config, store.server.shown);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(store.server.shown.contains("app:***@"), "{shown}");
        // Two passwords: refused, neither printed.
        let err = PostgresStore::open(&url("postgres://app:s3cret@h/db"), Some("pw-from-file"))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        let text = crate::error::ErrorChain(&err).to_string();
        assert!(
            !text.contains("s3cret") && !text.contains("pw-from-file"),
            "{text}"
        );
        // A URL the crate cannot read names the option, not its value.
        let err = PostgresStore::open(&url("postgres://app:s3cret@h:port/db"), None)
            .err()
            .unwrap();
        let text = crate::error::ErrorChain(&err).to_string();
        assert!(!text.contains("s3cret"), "{text}");
        // Nobody listens on port 1: a 503 that names the server without the password.
        let key = SessionKey::new("svc".parse().unwrap(), SessionId::generate().unwrap());
        let err = store
            .lock(&key, LockOptions::new(Duration::from_secs(1)))
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let text = crate::error::ErrorChain(&err).to_string();
        assert!(text.contains("postgres://app:***@127.0.0.1:1/db"), "{text}");
        assert!(!text.contains("s3cret") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn the_password_file_fills_a_url_without_one() {
        let store = PostgresStore::open(&url("postgres://app@h/db"), Some("from-file")).unwrap();
        assert_eq!(store.server.config.get_password(), Some(&b"from-file"[..]));
        assert!(!format!("{:?}", store.server.config).contains("from-file"));
    }

    #[test]
    fn a_url_of_another_kind_is_refused() {
        let err = PostgresStore::open(&url("redis://h"), None).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn a_server_that_never_answers_the_login_is_given_up() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, and says nothing: the login never ends.
        let held = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(5));
            drop(stream);
        });
        let store = PostgresStore::open(&url(&format!("postgres://pso@127.0.0.1:{port}/db")), None)
            .unwrap();
        let err = store.exists(&SessionKey::new(
            "svc".parse().unwrap(),
            SessionId::generate().unwrap(),
        ));
        assert_eq!(err.unwrap_err().kind(), ErrorKind::Unavailable);
        held.join().unwrap();
    }
}
