//! Sessions in Redis (cargo feature `redis`), with a lock that holds across machines.
//!
//! Every key of one session shares one hash tag, `pso:{<service>:<id>}`, so that the scripts
//! below touch one slot and run unchanged on Redis Cluster:
//!
//! | key | holds |
//! | --- | --- |
//! | `pso:{svc:id}` | the record, the same bytes a session file holds, with a TTL |
//! | `pso:{svc:id}:lock` | the holder's 128-bit random token, with the lease as its TTL |
//! | `pso:{svc:id}:wake` | a list an unlock pushes to, so one waiter's `BLPOP` returns at once |
//! | `pso:{svc:id}:waiting` | how many requests wait, capped |
//!
//! The lock is a lease: taken with `SET NX PX` (and the record read, in the same script),
//! given back by a script that deletes it only if it still holds the holder's token. While a
//! lock is held, one thread of the process renews its lease every third of its term (every
//! save renews it too), so a request may run longer than its lease and keep
//! its session; a lock let go (saved and released, released, dropped) is renewed no more, and
//! a renewal checks the token, so it can never extend a lock that another request took. A
//! holder that dies renews nothing and blocks its session for at most the lease; one that
//! hangs in a live process keeps it while it hangs. A lease can still lapse under a holder
//! that is alive (its process stopped or starved, Redis away for a whole lease): every write
//! checks the token first, in the same script, so such a holder, whose session another
//! request may hold now, writes nothing: its save fails with [`ErrorKind::LockLost`] (unless
//! nobody took or changed the session meanwhile: then it takes the lock again and saves). A
//! save also refuses to bring back a record deleted while it was held ([`Store::delete`], or
//! its TTL).
//!
//! Waiting does not poll: a waiter blocks in `BLPOP` on the session's wake list, for at most
//! what is left of the holder's lease (a dead holder pushes nothing) and of its own timeout,
//! and an unlock pushes one wake-up. A session has at most [`MAX_WAITERS`] waiters; more fail
//! at once with [`ErrorKind::LockTimeout`] (a 503), as past the timeout.
//!
//! Redis removes a record by its TTL an hour after the session expires (until then, a
//! returning visitor is told why it ended, as with files), so collection has nothing to do.
//! A record without expiry (a user's "log out everywhere" record) has no TTL.

mod connection;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use redis::{ConnectionLike, IntoConnectionInfo, RedisError, Script};

use connection::{Connection, Endpoint};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{ServiceId, SessionId};
use crate::record::{MAX_RECORD_BYTES, Meta, Record};
use crate::store::admin::{self, Admin, Finding, Listed, Severity};
use crate::store::lease::{Lease, Renewal};
use crate::store::{
    GcOutcome, GcReport, LockOptions, LockedSession, ServerKind, ServerUrl, SessionKey, Store,
    deleted_error, lock_deadline, time_left,
};

/// The longest a connection may take to open (on one server: connecting, TLS and logging in).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest one command may take, from its write to the end of its reply (on a cluster:
/// each read or write of it).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// The most requests that wait for one session at once; more get a 503 at once.
pub const MAX_WAITERS: i64 = 64;
/// How long Redis keeps a record after its session expired, so that a returning visitor
/// learns why it ended (and its data can move to the new session, as the lifecycle rules say).
const KEPT_AFTER_EXPIRY: Duration = Duration::from_secs(3600);
/// A waiter that has not asked for this long is no longer counted among the waiters (it
/// asks again at least every [`MAX_WAIT_SLICE`] plus a command's time).
const STALE_WAITER: Duration = Duration::from_secs(3);
/// The longest single `BLPOP`: a waiter looks at the lock again at least this often.
const MAX_WAIT_SLICE: Duration = Duration::from_secs(1);
/// Idle connections kept for the next request (under FastCGI, one per busy thread).
const MAX_IDLE_CONNECTIONS: usize = 64;
/// The latest instant a TTL is set to (year 9999): Redis keeps milliseconds in 64 bits.
const LATEST_EXPIRY_MILLIS: u64 = 253_402_300_799_000;

/// Takes the lock and reads the record, in one round trip. Waiters are a sorted set of their
/// tokens by when each last asked: one that stops asking (killed, cut off) drops out after
/// [`STALE_WAITER`], so the count cannot leak. Taking a lock this token already holds (a
/// retry whose first try did run) is taking it. A lock that is free is taken with three
/// commands (the record's length, `SET NX`, the record): the clock, the waiters and the
/// holder are looked at only when the lock is held.
/// KEYS: record, lock, waiting. ARGV: token, lease ms, queue (1: wait, and count among the
/// waiters; 0: do not wait), max waiters, stale waiter ms, max record bytes, waited (1: this
/// token may be among the waiters).
/// Returns {1, 0, record or false, its SHA-1 or ''}, {0, lock's PTTL, …} (wait), {2, PTTL, …}
/// (too many waiters), {3, length, …} (record too large) or {4, …} (the key is not a record).
const ACQUIRE: &str = r"
local n = redis.pcall('STRLEN', KEYS[1])
if type(n) ~= 'number' then return {4, 0, false, false} end
local function read()
  if n > tonumber(ARGV[6]) then return {3, n, false, false} end
  local record = redis.call('GET', KEYS[1])
  return {1, 0, record, record and redis.sha1hex(record) or ''}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[7] == '1' then redis.call('ZREM', KEYS[3], ARGV[1]) end
  return read()
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return read()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))
local ttl = redis.call('PTTL', KEYS[2])
if ARGV[3] == '1' then
  if not redis.call('ZSCORE', KEYS[3], ARGV[1])
     and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
    return {2, ttl, false, false}
  end
  redis.call('ZADD', KEYS[3], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
return {0, ttl, false, false}
";

/// Saves the record if the lock is still ours, and renews the lease. A holder whose lease ran
/// out while nobody took the lock or changed the record (a long request of a session nobody
/// else wanted) takes the lock again and saves: nothing of anyone else's can be lost.
/// With ARGV[7] = 1 it also gives the lock back and wakes a waiter, as [`RELEASE`] does: the
/// last save of a request and its unlock are one round trip. A save that keeps the lock
/// answers the SHA-1 of what it wrote, for the next save to compare; a save that lets go
/// answers none (the lock can do nothing more), and a holder whose lease did not run out
/// never hashes anything.
/// KEYS: record, lock, wake, waiting. ARGV: token, record, expiry (unix ms, 0 for none),
/// whether a record must be there (1: this holder saw one, so its absence means it was
/// deleted), lease ms, the SHA-1 of the record as this holder last saw it ('' for none),
/// release (1) or keep (0), how long an unclaimed wake-up lasts (ms).
/// Returns {1, SHA-1 of the record saved or false}, {0} lock lost, {-1} deleted meanwhile.
const SAVE: &str = r"
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  if holder then return {0, false} end
  local record = redis.call('GET', KEYS[1])
  local now = record and redis.sha1hex(record) or ''
  -- A retry of a save that did run (its answer was lost): done already.
  if ARGV[7] == '1' and record and now == redis.sha1hex(ARGV[2]) then return {1, false} end
  if now ~= ARGV[6] then return {0, false} end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
end
local set = {'SET', KEYS[1], ARGV[2]}
if ARGV[3] ~= '0' then
  set[4] = 'PXAT'
  set[5] = ARGV[3]
end
-- A record this holder saw and that is gone was deleted meanwhile: XX keeps it gone.
if ARGV[4] == '1' then set[#set + 1] = 'XX' end
if not redis.call(unpack(set)) then return {-1, false} end
if ARGV[7] == '1' then
  redis.call('DEL', KEYS[2])
  if redis.call('ZCARD', KEYS[4]) > 0 then
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('LTRIM', KEYS[3], 0, 0)
    redis.call('PEXPIRE', KEYS[3], ARGV[8])
  end
  return {1, false}
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, redis.sha1hex(ARGV[2])}
";

/// Deletes the record if the lock is still ours. KEYS: record, lock. ARGV: token.
/// Returns 1 deleted, 0 lease lost.
const DELETE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// Renews the lease if the lock is still ours. KEYS: lock. ARGV: token, lease ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Gives the lock back if it is still ours, and wakes one waiter if any wait. KEYS: lock,
/// wake, waiting. ARGV: token, how long an unclaimed wake-up lasts (ms). The wake list keeps
/// at most one entry: a stale one only makes the next waiter look at the lock once more.
/// Returns 1 released, 2 nothing to release (the lease ran out, nobody took the lock), 0 held
/// by another.
const RELEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then return 2 end
if holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('ZCARD', KEYS[3]) == 0 then return 1 end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Leaves the waiters of a session, for a waiter that gives up. KEYS: waiting. ARGV: token.
const LEAVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
";

/// The length of a record and its first 4 KiB, for tools: enough for its metadata.
/// KEYS: record. Returns {length, prefix} ({0, false} for none).
const HEAD: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {0, false} end
if kind ~= 'string' then return {-1, false} end
return {redis.call('STRLEN', KEYS[1]), redis.call('GETRANGE', KEYS[1], 0, 4095)}
";

/// Reads a record no larger than the cap, with its SHA-1. KEYS: record. ARGV: max bytes.
/// {4, …} when the key holds something else than a record.
const READ: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'string' then return {4, 0, false, false} end
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return {3, n, false, false} end
local record = redis.call('GET', KEYS[1])
return {1, 0, record, record and redis.sha1hex(record) or ''}
";

/// Sessions kept in one Redis server. Clones share its connections.
///
/// ```no_run
/// # fn main() -> pso::Result<()> {
/// use pso::store::{RedisStore, StoreLocation};
/// let StoreLocation::Server(url) = StoreLocation::parse("redis://127.0.0.1:6379/0")? else { unreachable!() };
/// let store = RedisStore::open(&url, None)?;
/// let service = pso::Service::from_process().with_store(std::sync::Arc::new(store));
/// # Ok(()) }
/// ```
///
/// Programs seldom build one: `PSOSessionStore=redis://…` makes [`crate::run`] use it.
#[derive(Clone)]
pub struct RedisStore {
    server: Arc<Server>,
    max_bytes: u64,
    renew_leases: bool,
}

/// One server (or cluster): how to reach it, its idle connections, the scripts.
struct Server {
    target: Target,
    /// The URL as it may be shown (no password).
    shown: String,
    idle: Mutex<Vec<Conn>>,
    scripts: Scripts,
}

/// How to reach the server.
enum Target {
    Single(Endpoint),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A connection to a server, or to every primary of a cluster (which follows `MOVED` and
/// `ASK` itself).
enum Conn {
    Single(Connection),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Conn {
    fn like(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Conn::Single(con) => con,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(con) => con,
        }
    }

    /// How long each command may take from now on (on a cluster: each read).
    fn set_command_timeout(&mut self, timeout: Duration) -> redis::RedisResult<()> {
        match self {
            Conn::Single(con) => {
                con.set_timeout(timeout);
                Ok(())
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(con) => con.set_read_timeout(Some(timeout)),
        }
    }

    /// Sends `cmd` to run behind the last command, which timed out, on a connection about to
    /// be dropped. One server: not waiting for its reply; a cluster: waiting, as a command.
    fn send_behind(&mut self, cmd: &redis::Cmd) {
        match self {
            Conn::Single(con) => {
                let _ = con.send_behind(&cmd.get_packed_command());
            }
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(con) => {
                let _ = cmd.query::<redis::Value>(con.as_mut());
            }
        }
    }

    /// The primaries a `SCAN` must visit: `None` stands for the one server.
    fn primaries(&mut self) -> redis::RedisResult<Vec<Option<(String, u16)>>> {
        match self {
            Conn::Single(_) => Ok(vec![None]),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(con) => {
                let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(con)?;
                let mut primaries = Vec::new();
                for range in slots {
                    // [first slot, last slot, [host, port, id, …] of the primary, replicas…]
                    let range: Vec<redis::Value> =
                        redis::from_redis_value(range).map_err(RedisError::from)?;
                    let Some(primary) = range.into_iter().nth(2) else {
                        continue;
                    };
                    let primary: Vec<redis::Value> =
                        redis::from_redis_value(primary).map_err(RedisError::from)?;
                    let mut fields = primary.into_iter();
                    let (Some(host), Some(port)) = (fields.next(), fields.next()) else {
                        continue;
                    };
                    let host: String = redis::from_redis_value(host).map_err(RedisError::from)?;
                    let port: u16 = redis::from_redis_value(port).map_err(RedisError::from)?;
                    if !primaries.contains(&Some((host.clone(), port))) {
                        primaries.push(Some((host, port)));
                    }
                }
                Ok(primaries)
            }
        }
    }

    /// Runs `cmd` on `node` (one of [`Conn::primaries`]).
    fn query_on<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
        node: &Option<(String, u16)>,
    ) -> redis::RedisResult<T> {
        match (self, node) {
            #[cfg(feature = "redis-cluster")]
            (Conn::Cluster(con), Some((host, port))) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = con.route_command(cmd, routing)?;
                Ok(redis::from_redis_value(value).map_err(RedisError::from)?)
            }
            (con, _) => cmd.query(con.like()),
        }
    }
}

struct Scripts {
    acquire: Script,
    save: Script,
    delete: Script,
    renew: Script,
    release: Script,
    leave: Script,
    read: Script,
    head: Script,
}

impl RedisStore {
    /// The store at `url` (`redis://` or `redis+unix://`), with `password` if the URL has
    /// none (from `PSOSessionStorePasswordFile`). Nothing is connected yet: the first request
    /// that needs the store connects, so a server that is down fails requests (503), not the
    /// program's start.
    pub fn open(url: &ServerUrl, password: Option<&str>) -> Result<RedisStore> {
        let target = match url.kind() {
            ServerKind::Redis | ServerKind::RedisUnix => single(url, password)?,
            #[cfg(feature = "redis-tls")]
            ServerKind::RedisTls => {
                install_crypto_provider();
                single(url, password)?
            }
            #[cfg(feature = "redis-cluster")]
            ServerKind::RedisCluster => cluster(url, password)?,
            kind => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    format!(
                        "{url}: a {kind:?} store needs pso's `{}` feature, which this program was built without",
                        kind.feature()
                    ),
                ));
            }
        };
        Ok(RedisStore {
            server: Arc::new(Server {
                target,
                shown: url.to_string(),
                idle: Mutex::new(Vec::new()),
                scripts: Scripts {
                    acquire: Script::new(ACQUIRE),
                    save: Script::new(SAVE),
                    delete: Script::new(DELETE),
                    renew: Script::new(RENEW),
                    release: Script::new(RELEASE),
                    leave: Script::new(LEAVE),
                    read: Script::new(READ),
                    head: Script::new(HEAD),
                },
            }),
            max_bytes: MAX_RECORD_BYTES,
            renew_leases: true,
        })
    }

    /// Reads and writes records of at most `max_bytes` (`PSOSessionMaxBytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> RedisStore {
        self.max_bytes = max_bytes;
        self
    }

    /// Whether the locks this store takes keep their leases while they are held (the
    /// default), or let them lapse as a stalled process would: for tests of what a lapsed
    /// lease does.
    pub fn with_lease_renewal(mut self, renew: bool) -> RedisStore {
        self.renew_leases = renew;
        self
    }

    /// Connects (or reuses a connection) and asks the server's version: for `pso config`.
    pub fn server_version(&self) -> Result<String> {
        self.server.run("asking its version", |con| {
            let info: redis::InfoDict = redis::cmd("INFO").arg("server").query(con.like())?;
            Ok(info
                .get::<String>("redis_version")
                .unwrap_or_else(|| "unknown".to_owned()))
        })
    }
}

/// rustls needs a process-wide cryptography provider before its first connection: ring's.
/// (Installed once; a program that installed its own keeps it.) rustls now points to
/// aws-lc-rs for post-quantum key exchange; ring builds without cmake and links smaller, and
/// a session store's link is a private network's.
#[cfg(feature = "redis-tls")]
#[allow(deprecated)]
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `TCP_NODELAY`: a command is one write and its answer awaited, so Nagle's algorithm can only
/// hold back a command sent behind another (the release behind a timed-out acquire).
#[cfg(feature = "redis-cluster")]
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A single server's connection settings, the password from a file added.
fn single(url: &ServerUrl, password: Option<&str>) -> Result<Target> {
    let info = url.expose().into_connection_info().map_err(|e| {
        // redis' messages about a URL do not quote it, so no password can leak here.
        Error::with_source(ErrorKind::Invalid, format!("{url}: not a Redis URL"), e)
    })?;
    let mut settings = info.redis_settings().clone().set_skip_set_lib_name();
    if let Some(password) = password {
        if settings.password().is_some() {
            return Err(two_passwords(url));
        }
        settings = settings.set_password(password);
    }
    let endpoint = Endpoint::new(info.addr(), settings)
        .map_err(|why| Error::new(ErrorKind::Invalid, format!("{url}: {why}")))?;
    Ok(Target::Single(endpoint))
}

fn two_passwords(url: &ServerUrl) -> Error {
    Error::new(
        ErrorKind::Invalid,
        format!(
            "{url}: the URL has a password and PSOSessionStorePasswordFile names another; keep one"
        ),
    )
}

/// A cluster's client, from `redis+cluster://[user:password@]host:port,host:port,…`.
#[cfg(feature = "redis-cluster")]
fn cluster(url: &ServerUrl, password: Option<&str>) -> Result<Target> {
    let invalid = |why: &str| Error::new(ErrorKind::Invalid, format!("{url}: {why}"));
    let text = url.expose();
    let (_, rest) = text.split_once("://").unwrap_or(("", text));
    let rest = rest.trim_end_matches('/');
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, rest),
    };
    let (user, url_password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
        Some((user, password)) => (
            (!user.is_empty()).then_some(user),
            (!password.is_empty()).then_some(password),
        ),
        None => (None, None),
    };
    if url_password.is_some() && password.is_some() {
        return Err(two_passwords(url));
    }
    if hosts.is_empty() || hosts.contains(['/', '?', '#']) {
        return Err(invalid(
            "a cluster URL is redis+cluster://host:port,host:port,…",
        ));
    }
    let tls = text
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss+"));
    if tls && cfg!(not(feature = "redis-tls")) {
        return Err(invalid(
            "a cluster over TLS needs pso's `redis-tls` feature, which this program was built without",
        ));
    }
    #[cfg(feature = "redis-tls")]
    if tls {
        install_crypto_provider();
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(|node| format!("{scheme}://{node}"))
        .collect();
    let mut builder = redis::cluster::ClusterClient::builder(nodes)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        // The defaults wait seconds between retries, 16 times: a request has no such time.
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(200)
        .tcp_settings(tcp_settings());
    if let Some(user) = user {
        builder = builder.username(user);
    }
    if let Some(password) = password {
        builder = builder.password(password);
    } else if let Some(password) = url_password {
        builder = builder.password(percent_decoded(password));
    }
    let client = builder.build().map_err(|e| {
        Error::with_source(ErrorKind::Invalid, format!("{url}: not a cluster URL"), e)
    })?;
    Ok(Target::Cluster(Box::new(client)))
}

/// `%xx` escapes decoded, as in the password of a URL.
#[cfg(feature = "redis-cluster")]
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|b| hex(*b)),
            bytes.get(i + 2).and_then(|b| hex(*b)),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Server {
    /// Runs `f` on a connection: an idle one, or a new one. A connection that failed is
    /// dropped (it may hold half an answer); one that worked is kept for the next call.
    fn run<T>(&self, doing: &str, f: impl FnMut(&mut Conn) -> redis::RedisResult<T>) -> Result<T> {
        self.run_or_undo(doing, f, |_| ())
    }

    /// [`Server::run`], and when `f` timed out (its command may still run, late), `undo` on
    /// the same connection before it is dropped: the server runs commands of one connection
    /// in order, so `undo` runs after `f`'s command, whenever that does.
    fn run_or_undo<T>(
        &self,
        doing: &str,
        mut f: impl FnMut(&mut Conn) -> redis::RedisResult<T>,
        undo: impl FnOnce(&mut Conn),
    ) -> Result<T> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let (mut con, reused) = match idle {
            Some(con) => (con, true),
            None => (self.connect()?, false),
        };
        let mut outcome = f(&mut con);
        if reused && outcome.as_ref().is_err_and(closed_before_answering) {
            // A connection kept idle that the server closed meanwhile (a restart, its idle
            // timeout, CLIENT KILL): its siblings likely went too. The command never
            // reached the server, so it goes again, once, on a new connection; every
            // script is safe to run twice.
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            con = self.connect()?;
            outcome = f(&mut con);
        }
        match outcome {
            Ok(value) => {
                self.keep(con);
                Ok(value)
            }
            Err(e) => {
                if e.is_timeout() {
                    undo(&mut con);
                }
                // An error reply leaves the connection in step; anything else may not.
                if !e.is_io_error() && !e.is_timeout() && e.kind() != redis::ErrorKind::Parse {
                    self.keep(con);
                }
                Err(self.error(doing, e))
            }
        }
    }

    /// Extends the lock `lock` by `lease` if `token` still holds it; `false` if it does not.
    fn renew(&self, lock: &str, token: &str, lease: Duration) -> Result<bool> {
        let renewed: i64 = self.run("renewing a session's lock", |con| {
            self.scripts
                .renew
                .key(lock)
                .arg(token)
                .arg(millis(lease))
                .invoke(con.like())
        })?;
        Ok(renewed == 1)
    }

    fn keep(&self, con: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CONNECTIONS {
            idle.push(con);
        }
    }

    fn connect(&self) -> Result<Conn> {
        match &self.target {
            Target::Single(endpoint) => {
                Connection::open(endpoint, CONNECT_TIMEOUT, COMMAND_TIMEOUT)
                    .map(Conn::Single)
                    .map_err(|e| self.error("connecting", e))
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(client) => {
                let con = client
                    .get_connection()
                    .map_err(|e| self.error("connecting", e))?;
                // A connection's timeouts start unset: a stalled server would hang the request.
                con.set_read_timeout(Some(COMMAND_TIMEOUT))
                    .and_then(|()| con.set_write_timeout(Some(COMMAND_TIMEOUT)))
                    .map_err(|e| self.error("setting timeouts", e))?;
                Ok(Conn::Cluster(Box::new(con)))
            }
        }
    }

    /// pso's error for a failed call: a server that cannot be reached or answer now is
    /// [`ErrorKind::Unavailable`] (a 503), anything else an I/O error (a 500).
    fn error(&self, doing: &str, e: RedisError) -> Error {
        use redis::ServerErrorKind as Server;
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                redis::ErrorKind::Server(
                    Server::BusyLoading
                        | Server::TryAgain
                        | Server::ClusterDown
                        | Server::MasterDown
                        | Server::ReadOnly
                        | Server::Moved
                        | Server::Ask
                )
            )
            // Out of memory under noeviction, a replica demoted mid-command: for now.
            || matches!(e.code(), Some("OOM" | "UNBLOCKED" | "LOADING"));
        let kind = if unavailable {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Io
        };
        Error::with_source(kind, format!("Redis at {}: {doing}", self.shown), e)
    }
}

/// The release script as one command (`EVAL`, not `EVALSHA`: it must run even on a server
/// whose script cache is empty, without a second round trip).
fn release_command(keys: &Keys, token: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RELEASE)
        .arg(3)
        .arg(&keys.lock)
        .arg(&keys.wake)
        .arg(&keys.waiting)
        .arg(token)
        .arg(millis(MAX_WAIT_SLICE));
    cmd
}

/// A key that holds something else than a record (a list, a hash): put there by hand.
fn not_a_record(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("session {key:?}: its key in Redis holds something else than a record"),
    )
}

/// Whether a call failed because the connection was closed under it, not by a timeout: what
/// a connection kept idle meets when the server closed it meanwhile.
fn closed_before_answering(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

/// The keys of one session, all in one hash slot.
struct Keys {
    record: String,
    lock: String,
    wake: String,
    waiting: String,
}

impl Keys {
    fn of(key: &SessionKey) -> Keys {
        let tag = format!("pso:{{{}:{}}}", key.service, key.id);
        Keys {
            lock: format!("{tag}:lock"),
            wake: format!("{tag}:wake"),
            waiting: format!("{tag}:waiting"),
            record: tag,
        }
    }

    /// The session a record's key names; `None` for any other key.
    fn parse(name: &[u8]) -> Option<SessionKey> {
        let name = std::str::from_utf8(name).ok()?;
        let inner = name.strip_prefix("pso:{")?.strip_suffix('}')?;
        let (service, id) = inner.split_once(':')?;
        Some(SessionKey::new(
            service.parse::<ServiceId>().ok()?,
            SessionId::named(id).ok()?,
        ))
    }
}

/// A reply of the acquire and read scripts: a code, a number, and for code 1 the record and
/// its SHA-1.
type Reply = (i64, i64, Option<Vec<u8>>, Option<String>);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// When Redis should drop a record: some time after its session expires; `None` for a
/// record that never does.
fn expiry_millis(meta: &Meta) -> Option<u64> {
    let idle_end = meta
        .max_idle
        .map(|idle| meta.last_access.saturating_add(idle));
    let end = match (meta.deadline, idle_end) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(
        end.saturating_add(KEPT_AFTER_EXPIRY.as_secs())
            .saturating_mul(1000)
            .min(LATEST_EXPIRY_MILLIS),
    )
}

impl RedisStore {
    fn decode(&self, key: &SessionKey, reply: Reply) -> Result<Option<Record>> {
        match reply {
            (4, ..) => Err(not_a_record(key)),
            (3, length, ..) => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "session {key:?}: its record of {length} bytes is larger than PSOSessionMaxBytes"
                ),
            )),
            (_, _, None, _) => Ok(None),
            (_, _, Some(bytes), _) => Record::decode_owned(bytes, self.max_bytes)
                .map(Some)
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::Corrupt,
                        format!("session {key:?}: its record in Redis does not read"),
                        e,
                    )
                }),
        }
    }

    /// The record of `key` and its SHA-1, if there is one.
    fn read(&self, key: &SessionKey) -> Result<(Option<Record>, Option<String>)> {
        let record = Keys::of(key).record;
        let reply: Reply = self.server.run("reading a session", |con| {
            self.server
                .scripts
                .read
                .key(&record)
                .arg(self.max_bytes)
                .invoke(con.like())
        })?;
        let sha = reply.3.clone().filter(|sha| !sha.is_empty());
        Ok((self.decode(key, reply)?, sha))
    }

    /// Best effort, for a request that stops trying to take a lock: leaves the waiters and
    /// gives back the lock if the last try took it after all. Failures are the server's
    /// (the waiter drops out of the count within [`STALE_WAITER`], a lock at most at the
    /// end of its lease).
    fn give_up(&self, keys: &Keys, token: &str) {
        let scripts = &self.server.scripts;
        let _ = self.server.run("giving up a wait", |con| {
            scripts
                .leave
                .key(&keys.waiting)
                .arg(token)
                .invoke::<i64>(con.like())?;
            scripts
                .release
                .key(&keys.lock)
                .key(&keys.wake)
                .key(&keys.waiting)
                .arg(token)
                .arg(millis(MAX_WAIT_SLICE))
                .invoke::<i64>(con.like())
        });
    }

    fn too_many_waiters(key: &SessionKey) -> Error {
        Error::new(
            ErrorKind::LockTimeout,
            format!("session {key:?}: {MAX_WAITERS} requests already wait for it"),
        )
    }
}

impl Store for RedisStore {
    fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        let deadline = lock_deadline(options.timeout);
        let keys = Keys::of(key);
        let token = token()?;
        let lease = millis(options.lease);
        let queue = if options.timeout.is_zero() { 0 } else { 1 };
        let scripts = &self.server.scripts;
        // Whether this token may be among the session's waiters (it asked and was told to wait).
        let mut waited = 0;
        loop {
            let acquired: Result<Reply> = self.server.run_or_undo(
                "taking a session's lock",
                |con| {
                    scripts
                        .acquire
                        .key(&keys.record)
                        .key(&keys.lock)
                        .key(&keys.waiting)
                        .arg(&token)
                        .arg(lease)
                        .arg(queue)
                        .arg(MAX_WAITERS)
                        .arg(millis(STALE_WAITER))
                        .arg(self.max_bytes)
                        .arg(waited)
                        .invoke(con.like())
                },
                // A stalled server runs the script late, and would give the lock to a token
                // nobody holds for a whole lease: the release follows it on the same
                // connection (sent now, run right after it).
                |con| con.send_behind(&release_command(&keys, &token)),
            );
            let reply = match acquired {
                Ok(reply) => reply,
                Err(e) => {
                    self.give_up(&keys, &token);
                    return Err(e);
                }
            };
            match reply.0 {
                // Not a record: no lock was taken, and the session reads as damaged.
                4 => return Err(not_a_record(key)),
                1 | 3 => {
                    let seen = reply.3.clone().filter(|sha| !sha.is_empty());
                    let loaded = self.decode(key, reply);
                    let renewal = self.renew_leases.then(|| {
                        let lease = RedisLease {
                            server: self.server.clone(),
                            session: key.clone(),
                            lock: keys.lock.clone(),
                            token: token.clone(),
                            term: options.lease,
                        };
                        Renewal::start(Arc::new(lease), options.lease)
                    });
                    return Ok(Box::new(RedisLock {
                        store: self.clone(),
                        key: key.clone(),
                        keys,
                        token,
                        lease: options.lease,
                        seen,
                        ended: false,
                        first_load: Some(loaded),
                        deleted: false,
                        released: false,
                        renewal,
                    }));
                }
                2 => return Err(RedisStore::too_many_waiters(key)),
                _ => waited = queue,
            }
            let left = match time_left(deadline, key) {
                Ok(left) => left,
                Err(e) => {
                    self.give_up(&keys, &token);
                    return Err(e);
                }
            };
            // The holder's lease left (a dead holder pushes no wake-up), jittered so that
            // waiters of a dead holder do not all ask at the same instant.
            let lease_left = u64::try_from(reply.1).unwrap_or(0);
            let jitter = 0.75 + f64::from(getrandom::u32().unwrap_or(0) % 1000) / 4000.0;
            let mut wait = MAX_WAIT_SLICE.mul_f64(jitter);
            wait = wait.min(Duration::from_millis(lease_left + 1));
            if let Some(left) = left {
                wait = wait.min(left);
            }
            let wait = wait.max(Duration::from_millis(10));
            let waited = self.server.run("waiting for a session's lock", |con| {
                // The server answers after `wait`: the command must not time out first, or
                // the next command would queue behind the BLPOP still blocked there.
                con.set_command_timeout(wait + COMMAND_TIMEOUT)?;
                let woken: redis::RedisResult<Option<(Vec<u8>, Vec<u8>)>> = redis::cmd("BLPOP")
                    .arg(&keys.wake)
                    .arg(wait.as_secs_f64())
                    .query(con.like());
                con.set_command_timeout(COMMAND_TIMEOUT)?;
                woken.map(|_| ())
            });
            if let Err(e) = waited {
                self.give_up(&keys, &token);
                return Err(e);
            }
        }
    }

    fn exists(&self, key: &SessionKey) -> Result<bool> {
        let record = Keys::of(key).record;
        self.server.run("looking for a session", |con| {
            redis::cmd("EXISTS").arg(&record).query::<bool>(con.like())
        })
    }

    fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
        self.read(key).map(|(record, _)| record)
    }

    fn delete(&self, key: &SessionKey) -> Result<()> {
        let record = Keys::of(key).record;
        self.server.run("ending a session", |con| {
            redis::cmd("DEL")
                .arg(&record)
                .query::<i64>(con.like())
                .map(drop)
        })
    }

    fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
        Ok(Box::new(Scan {
            store: self,
            nodes: None,
            cursor: None,
            batch: Vec::new(),
        }))
    }

    /// Redis drops expired records by their TTL: nothing to do.
    fn collect_garbage(&self, _now: SystemTime, _budget: Duration) -> Result<GcReport> {
        Ok(GcReport::default())
    }
}

impl Admin for RedisStore {
    fn place(&self) -> String {
        self.server.shown.clone()
    }

    fn inspect(&self, key: &SessionKey) -> Result<Option<Listed>> {
        let record = Keys::of(key).record;
        let (length, prefix): (i64, Option<Vec<u8>>) =
            self.server.run("looking at a session", |con| {
                self.server.scripts.head.key(&record).invoke(con.like())
            })?;
        if length < 0 {
            return Ok(Some(admin::unreadable(
                key,
                Error::new(
                    ErrorKind::Corrupt,
                    "its key holds something else than a record",
                ),
            )));
        }
        let Some(prefix) = prefix else {
            return Ok(None);
        };
        if Record::is_other_version(&prefix) {
            return Ok(Some(Listed::OtherVersion { key: key.clone() }));
        }
        let meta = match Record::read_meta(&prefix) {
            Ok(Some(meta)) => meta,
            // Metadata longer than the head: read it whole.
            Ok(None) => match self.peek(key) {
                Ok(Some(record)) => record.meta,
                Ok(None) => return Ok(None),
                Err(error) => return Ok(Some(admin::unreadable(key, error))),
            },
            Err(error) => return Ok(Some(admin::unreadable(key, error))),
        };
        Ok(Some(Listed::Session {
            key: key.clone(),
            meta,
            bytes: length.unsigned_abs(),
            footprint: None,
        }))
    }

    fn collect(
        &self,
        _now: SystemTime,
        _service: Option<&ServiceId>,
        _observe: &mut dyn FnMut(GcOutcome),
    ) -> Result<GcReport> {
        Ok(GcReport::default())
    }

    fn expires_by_itself(&self) -> bool {
        true
    }

    fn check(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let version = match self.server_version() {
            Ok(version) => version,
            Err(e) => {
                findings.push(Finding::new(
                    Severity::Error,
                    format!("cannot be used: {}", crate::ErrorChain(&e)),
                ));
                return findings;
            }
        };
        findings.push(Finding::new(
            Severity::Note,
            format!("Redis {version}, reachable"),
        ));
        let setting = |name: &str| -> Result<String> {
            self.server.run("reading its settings", |con| {
                let pairs: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query(con.like())?;
                Ok(pairs.get(name).cloned().unwrap_or_default())
            })
        };
        match setting("maxmemory-policy") {
            Ok(policy) if policy.starts_with("allkeys-") || policy.starts_with("volatile-") => {
                findings.push(Finding::new(
                    Severity::Warning,
                    format!(
                        "maxmemory-policy {policy} evicts live sessions when memory runs out (every session has a TTL): use noeviction"
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => findings.push(Finding::new(
                Severity::Note,
                format!(
                    "cannot read its settings (CONFIG GET refused?), so cannot tell whether it may evict or lose sessions: {}",
                    crate::ErrorChain(&e)
                ),
            )),
        }
        if let (Ok(appendonly), Ok(save)) = (setting("appendonly"), setting("save")) {
            if appendonly != "yes" && save.trim().is_empty() {
                findings.push(Finding::new(
                    Severity::Warning,
                    "no persistence (appendonly no, no save points): a restart of Redis logs everyone out; use appendonly yes",
                ));
            } else if appendonly != "yes" {
                findings.push(Finding::new(
                    Severity::Note,
                    format!(
                        "snapshots only (save {save}): a crash loses the sessions changed since the last one; appendonly yes loses at most a second"
                    ),
                ));
            }
        }
        findings
    }
}

/// The sessions of a store, a `SCAN` batch at a time, primary after primary on a cluster:
/// bounded memory however many there are.
struct Scan<'a> {
    store: &'a RedisStore,
    /// The primaries still to scan (`None`: the one server); `None` until asked.
    nodes: Option<Vec<Option<(String, u16)>>>,
    /// Where the scan of the current primary stands; `None` when it is to start.
    cursor: Option<u64>,
    batch: Vec<Vec<u8>>,
}

impl Scan<'_> {
    /// The next batch of names, or `None` when every primary has been scanned.
    fn fetch(&mut self) -> Option<Result<Vec<Vec<u8>>>> {
        if self.nodes.is_none() {
            match self
                .store
                .server
                .run("listing the cluster's primaries", Conn::primaries)
            {
                Ok(mut nodes) => {
                    nodes.reverse();
                    self.nodes = Some(nodes);
                }
                Err(e) => {
                    self.nodes = Some(Vec::new());
                    return Some(Err(e));
                }
            }
        }
        let nodes = self.nodes.as_mut()?;
        let node = nodes.last()?.clone();
        let cursor = self.cursor.unwrap_or(0);
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg("pso:{*}")
            .arg("COUNT")
            .arg(1000)
            .arg("TYPE")
            .arg("string");
        let reply = self.store.server.run("listing sessions", |con| {
            con.query_on::<(u64, Vec<Vec<u8>>)>(&scan, &node)
        });
        match reply {
            Ok((next, names)) => {
                if next == 0 {
                    nodes.pop();
                    self.cursor = None;
                } else {
                    self.cursor = Some(next);
                }
                Some(Ok(names))
            }
            Err(e) => {
                nodes.clear();
                Some(Err(e))
            }
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<SessionKey>;

    fn next(&mut self) -> Option<Result<SessionKey>> {
        loop {
            while let Some(name) = self.batch.pop() {
                if let Some(key) = Keys::parse(&name) {
                    return Some(Ok(key));
                }
            }
            match self.fetch()? {
                Ok(names) => self.batch = names,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A 128-bit token from the OS CSPRNG: only its holder can release or write through a lock.
fn token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("the OS random number generator failed: {e}"),
        )
    })?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(32);
    for b in bytes {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(hex)
}

/// A session's lock in Redis: a lease that its token proves.
struct RedisLock {
    store: RedisStore,
    key: SessionKey,
    keys: Keys,
    token: String,
    lease: Duration,
    /// What the acquire script read, for the first load.
    first_load: Option<Result<Option<Record>>>,
    /// The SHA-1 of the record as this lock last read or wrote it (`None`: there was none).
    /// If the record then vanishes, someone deleted it, and a save must not bring it back; if
    /// the lease ran out, a save goes on only if the record is still this.
    seen: Option<String>,
    /// The session was ended by someone else while this lock held it.
    ended: bool,
    deleted: bool,
    released: bool,
    /// Keeps the lease while the lock is held; `None` once it is let go.
    renewal: Option<Renewal>,
}

/// A Redis lock as the renewing thread sees it: renewed by the renew script, which checks
/// the token.
struct RedisLease {
    server: Arc<Server>,
    session: SessionKey,
    lock: String,
    token: String,
    term: Duration,
}

impl Lease for RedisLease {
    fn session(&self) -> &SessionKey {
        &self.session
    }

    fn renew(&self) -> Result<bool> {
        self.server.renew(&self.lock, &self.token, self.term)
    }
}

impl RedisLock {
    fn lost(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::LockLost,
            format!(
                "session {:?}: {what} (the lock's lease of {:?} ran out, or the session was ended meanwhile)",
                self.key, self.lease
            ),
        )
    }

    /// Saves `record`, and with `release` gives the lock back in the same script.
    fn write(&mut self, record: &Record, release: bool) -> Result<()> {
        if self.ended {
            return Err(self.lost("not saved: the session was ended while this request held it"));
        }
        if self.deleted {
            return Err(deleted_error(&self.key));
        }
        if self.released {
            return Err(self.lost("not saved: the lock was already let go"));
        }
        let bytes = record.encode()?;
        let expiry = expiry_millis(&record.meta).unwrap_or(0);
        let server = &self.store.server;
        let saved: (i64, Option<String>) = server.run("saving a session", |con| {
            server
                .scripts
                .save
                .key(&self.keys.record)
                .key(&self.keys.lock)
                .key(&self.keys.wake)
                .key(&self.keys.waiting)
                .arg(&self.token)
                .arg(&bytes)
                .arg(expiry)
                .arg(u8::from(self.seen.is_some()))
                .arg(millis(self.lease))
                .arg(self.seen.as_deref().unwrap_or(""))
                .arg(u8::from(release))
                .arg(millis(MAX_WAIT_SLICE))
                .invoke(con.like())
        })?;
        match saved {
            (1, sha) => {
                self.seen = sha;
                self.released = release;
                if release {
                    self.renewal = None;
                }
                self.first_load = None;
                Ok(())
            }
            (-1, _) => {
                Err(self.lost("not saved: the session was ended while this request held it"))
            }
            _ => Err(self.lost("not saved")),
        }
    }

    fn let_go(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        self.renewal = None;
        let server = &self.store.server;
        let released: i64 = server.run("releasing a session's lock", |con| {
            server
                .scripts
                .release
                .key(&self.keys.lock)
                .key(&self.keys.wake)
                .key(&self.keys.waiting)
                .arg(&self.token)
                .arg(millis(MAX_WAIT_SLICE))
                .invoke(con.like())
        })?;
        if released != 0 {
            Ok(())
        } else {
            Err(self.lost("the lock was no longer held when released"))
        }
    }
}

impl LockedSession for RedisLock {
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
        let (loaded, sha) = self.store.read(&self.key)?;
        if self.seen.is_some() && sha.is_none() {
            // It was there and is gone while this lock holds it: ended by Store::delete (or
            // its TTL). Loading again must not make a save bring it back.
            self.ended = true;
        }
        self.seen = sha;
        Ok(loaded)
    }

    fn save(&mut self, record: &Record) -> Result<()> {
        self.write(record, false)
    }

    fn save_and_release(&mut self, record: &Record) -> Result<()> {
        self.write(record, true)
    }

    fn delete(&mut self) -> Result<()> {
        let server = &self.store.server;
        let deleted: i64 = server.run("deleting a session", |con| {
            server
                .scripts
                .delete
                .key(&self.keys.record)
                .key(&self.keys.lock)
                .arg(&self.token)
                .invoke(con.like())
        })?;
        self.deleted = true;
        self.first_load = None;
        if deleted == 1 {
            Ok(())
        } else {
            Err(self.lost("not deleted"))
        }
    }

    fn lock_sibling(&self, id: SessionId, options: LockOptions) -> Result<Box<dyn LockedSession>> {
        // A sibling lives as long as the request that takes it: never shorter than its lock.
        let options = options.with_lease(options.lease.max(self.lease));
        self.store
            .lock(&SessionKey::new(self.key.service.clone(), id), options)
    }

    fn renew(&mut self) -> Result<()> {
        let renewed = self
            .store
            .server
            .renew(&self.keys.lock, &self.token, self.lease)?;
        if renewed {
            Ok(())
        } else {
            Err(self.lost("the lock could not be renewed"))
        }
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        self.let_go()
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        if let Err(e) = self.let_go() {
            log::warn!("{}", crate::error::ErrorChain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_parse_back() {
        let key = SessionKey::new("shop".parse().unwrap(), SessionId::generate().unwrap());
        let keys = Keys::of(&key);
        let tag = &keys.record;
        for other in [&keys.lock, &keys.wake, &keys.waiting] {
            assert!(other.starts_with(tag.as_str()), "{other}");
        }
        assert_eq!(Keys::parse(tag.as_bytes()), Some(key));
        for other in [&keys.lock, &keys.wake, &keys.waiting] {
            assert_eq!(Keys::parse(other.as_bytes()), None);
        }
        for junk in ["pso:{}", "pso:{a}", "pso:{a:b/c}", "other", "pso:{:x}"] {
            assert_eq!(Keys::parse(junk.as_bytes()), None, "{junk}");
        }
    }

    #[test]
    fn records_expire_an_hour_after_their_session() {
        let mut meta = Meta::new(1_000);
        assert_eq!(expiry_millis(&meta), None);
        meta.deadline = Some(5_000);
        assert_eq!(expiry_millis(&meta), Some((5_000 + 3_600) * 1000));
        meta.max_idle = Some(60);
        assert_eq!(expiry_millis(&meta), Some((1_060 + 3_600) * 1000));
        meta.deadline = None;
        meta.max_idle = Some(u64::MAX);
        assert_eq!(expiry_millis(&meta), Some(LATEST_EXPIRY_MILLIS));
    }
}
