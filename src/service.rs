//! What lives for the process: the configuration from the process environment, the stores,
//! the logger. Built once; every request borrows it, on any thread.
//!
//! Under CGI the process serves one request, and its environment is the request's. Under
//! FastCGI one process serves many, each described by its own parameters: they configure pso
//! exactly as the process environment does (`SetEnv`, `fastcgi_param`, lighttpd's `setenv`),
//! layered over it. Two things a request cannot change: the log level (set once, from the
//! process environment) and a session directory the process environment names.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::environment::Environment;
use crate::error::ErrorChain;
use crate::request::Request;
use crate::response::Response;
use crate::runner::{Access, Answer, Handler, respond};
use crate::store::{FileStore, MovingStore, ServerUrl, Store, StoreLocation};

/// The longest a request spends collecting expired sessions.
const GC_BUDGET: Duration = Duration::from_millis(50);
/// The least time between two collection passes over one store in one process. A pass reads
/// the whole directory (within its budget); under FastCGI, a share of requests would be many
/// passes a second, over the same files, for nothing.
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// Distinct configurations remembered; past this the memory is cleared and starts again.
const MAX_CONFIGS: usize = 64;
/// Distinct session directories one process opens: requests that name more get a 500.
pub const MAX_SESSION_DIRS: usize = 16;
/// Distinct store servers (`PSOSessionStore`) one process opens: requests that name more get
/// a 500.
pub const MAX_STORE_SERVERS: usize = 16;

/// The process side of pso: built once, shared by every request.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir()?;
/// let process = pso::Environment::from_pairs([
///     ("PSOServiceId", "shop"),
///     ("PSOSessionFileLoader_Path", dir.path().join("sessions").to_str().unwrap()),
/// ]);
/// let service = pso::Service::new(process);
/// let handler = |cx: &mut pso::Context| {
///     cx.session.set("seen", &true)?;
///     write!(cx.response, "hi")?;
///     Ok(())
/// };
/// // Each request brings its own parameters, as under FastCGI.
/// let request = pso::Environment::from_pairs([("REQUEST_METHOD", "GET")]);
/// let mut output = Vec::new();
/// service.serve(&request, &mut std::io::empty(), &mut output, &handler, std::time::SystemTime::now())?;
/// assert!(String::from_utf8(output)?.contains("Set-Cookie: shop="));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Service {
    process: Environment,
    /// The configuration of a request that brings no PSO parameters of its own.
    base: Arc<Resolved>,
    /// `PSOSessionFileLoader_Path` from the process environment: requests cannot move it.
    fixed_dir: Option<PathBuf>,
    /// `PSOSessionStore` (and its password file) from the process environment: requests
    /// cannot point pso at another server.
    fixed_store: Option<FixedStore>,
    /// Configurations requests brought, by the parameters that shaped them.
    configs: Mutex<BTreeMap<ConfigKey, Arc<Resolved>>>,
    /// File stores by directory: each directory is opened and checked once.
    stores: Mutex<Stores>,
    /// A store given by the program, used for every request instead of files.
    custom: Option<Opened>,
    /// Whether requests read their session without its lock and cannot change it.
    access: Access,
}

/// The session directories of the process.
#[derive(Default)]
struct Stores {
    opened: BTreeMap<PathBuf, (FileStore, Arc<Pacing>)>,
    /// Directories requests named, other than the process's own, opened or not.
    tried: BTreeSet<PathBuf>,
    /// Servers by URL, password file and record cap.
    servers: BTreeMap<ServerKey, Arc<dyn Store>>,
    /// Servers requests named, other than the process's own, opened or not.
    tried_servers: BTreeSet<ServerUrl>,
}

type ServerKey = (ServerUrl, Option<PathBuf>, u64);

/// The store settings the process environment fixes: `PSOSessionStore`, its password file,
/// and `PSOSessionStoreMovingFrom`.
#[derive(PartialEq)]
struct FixedStore {
    store: StoreLocation,
    password_file: Option<PathBuf>,
    moving_from: Option<StoreLocation>,
}

impl FixedStore {
    fn of(config: &Config) -> FixedStore {
        FixedStore {
            store: config.store.clone(),
            password_file: config.store_password_file.clone(),
            moving_from: config.store_moving_from.clone(),
        }
    }
}

/// A configuration and, once opened, its store.
struct Resolved {
    config: Config,
    store: Mutex<Option<Opened>>,
}

/// A store and the pacing of its collection.
type Opened = (Arc<dyn Store>, Arc<Pacing>);

/// When a store was last collected in this process: a pass starts at most once per
/// [`GC_INTERVAL`] (so never two at once: a pass ends within its budget, well inside it).
#[derive(Default)]
struct Pacing {
    last_pass: Mutex<Option<Instant>>,
}

impl Pacing {
    /// Whether a pass may start now; if so, it counts as started.
    fn begin_pass(&self) -> bool {
        let mut last = self
            .last_pass
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < GC_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// How one request went, for the front end that carried it: its answer, and the collection
/// of expired sessions it drew, left to run once the response is out.
#[must_use]
pub(crate) struct Outcome {
    pub answer: Answer,
    collect: Option<Arc<dyn Store>>,
    now: SystemTime,
}

impl Outcome {
    /// Whether this request should also collect expired sessions.
    pub fn collection_due(&self) -> bool {
        self.collect.is_some()
    }

    /// Collects expired sessions, if this request drew it, within the time budget.
    pub fn collect_garbage(self) {
        if let Some(store) = self.collect {
            match store.collect_garbage(self.now, GC_BUDGET) {
                Ok(report) => log::debug!("garbage collection: {report:?}"),
                Err(e) => log::warn!("garbage collection failed: {}", ErrorChain(&e)),
            }
        }
    }
}

impl Service {
    /// A service configured by `process`, the environment the program started with.
    ///
    /// Nothing is opened yet: the session directory is opened by the first request that
    /// needs it, and kept.
    pub fn new(process: Environment) -> Service {
        let base = Config::from_env(&process);
        let fixed_dir = process
            .lookup("PSOSessionFileLoader_Path")
            .filter(|(_, path)| !path.is_empty())
            .map(|_| base.session_dir.clone());
        let names_store = |name| {
            process
                .lookup(name)
                .is_some_and(|(_, value)| !value.is_empty())
        };
        let fixed_store = (names_store("PSOSessionStore")
            || names_store("PSOSessionStoreMovingFrom"))
        .then(|| FixedStore::of(&base));
        Service {
            process,
            base: Arc::new(Resolved::new(base)),
            fixed_dir,
            fixed_store,
            configs: Mutex::new(BTreeMap::new()),
            stores: Mutex::new(Stores::default()),
            custom: None,
            access: Access::ReadWrite,
        }
    }

    /// Serves read-only requests (see [`crate::run_read_only`]): each reads its session
    /// without taking its lock, so it runs even while a slow request writes that session,
    /// and cannot change it.
    pub fn read_only(mut self) -> Service {
        self.access = Access::ReadOnly;
        self
    }

    /// The service of this process: its environment, and pso's logger installed at the level
    /// `PSOLogLevel` names there (unless the program installed a logger of its own).
    pub fn from_process() -> Service {
        let process = Environment::from_process();
        crate::logger::install(&process);
        Service::new(process)
    }

    /// Keeps sessions in `store` instead of the session directory.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Service {
        self.custom = Some((store, Arc::default()));
        self
    }

    /// The process environment the service was built from.
    pub fn process_env(&self) -> &Environment {
        &self.process
    }

    /// Serves one request described by `env` (its CGI variables or FastCGI parameters): its
    /// body comes from `input`, its response goes to `output`, which is flushed. Expired
    /// sessions are collected afterwards on a share of requests.
    ///
    /// Only a failure to write the response is returned; everything else becomes a response.
    pub fn serve<F>(
        &self,
        env: &Environment,
        input: &mut dyn Read,
        output: &mut dyn Write,
        handler: &F,
        now: SystemTime,
    ) -> io::Result<()>
    where
        F: Handler,
    {
        let outcome = self.answer(env, input, output, handler, now)?;
        output.flush()?;
        outcome.collect_garbage();
        Ok(())
    }

    /// The request itself; collection is left to the caller, to run once the response is out.
    pub(crate) fn answer<F>(
        &self,
        env: &Environment,
        input: &mut dyn Read,
        output: &mut dyn Write,
        handler: &F,
        now: SystemTime,
    ) -> io::Result<Outcome>
    where
        F: Handler,
    {
        let resolved = self.resolve(env);
        let Some((store, pacing)) = self.store_for(&resolved) else {
            let head = Request::new(env, input).is_head();
            Response::new(output, head).send_error(500, &[])?;
            return Ok(Outcome {
                answer: Answer::Failed,
                collect: None,
                now,
            });
        };
        let answer = respond(
            env,
            &resolved.config,
            &*store,
            (input, output),
            handler,
            now,
            self.access,
        )?;
        let collect =
            (resolved.config.gc_probability.draw() && pacing.begin_pass()).then_some(store);
        Ok(Outcome {
            answer,
            collect,
            now,
        })
    }

    /// The configuration for a request: the process's, or one shaped by the request's own
    /// PSO parameters (remembered, so it is read, checked and logged once, not per request).
    fn resolve(&self, env: &Environment) -> Arc<Resolved> {
        // The process environment itself (CGI): the configuration read at start.
        if std::ptr::eq(env, &self.process) {
            return self.base.clone();
        }
        let key = config_key(env, &self.process);
        if key.is_empty() {
            return self.base.clone();
        }
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(resolved) = configs.get(&key) {
            return resolved.clone();
        }
        let mut merged = self.process.clone();
        for (name, value) in env.iter() {
            merged.set(OsStr::from_bytes(name), OsStr::from_bytes(value));
        }
        let mut config = Config::from_env(&merged);
        if let Some(fixed) = &self.fixed_dir
            && config.session_dir != *fixed
        {
            log::warn!(
                "a request asked for the session directory {}, but the process environment fixes {}; ignoring the request's",
                config.session_dir.display(),
                fixed.display()
            );
            config.session_dir = fixed.clone();
        }
        if let Some(fixed) = &self.fixed_store
            && FixedStore::of(&config) != *fixed
        {
            log::warn!(
                "a request asked for the session store {}, but the process environment fixes {}; ignoring the request's",
                config.store,
                fixed.store
            );
            config.store = fixed.store.clone();
            config.store_password_file = fixed.password_file.clone();
            config.store_moving_from = fixed.moving_from.clone();
        }
        // A password file is read only as the process environment names it, and only for
        // the store the process environment names: a request's parameters could otherwise
        // send its contents to a server of their choosing.
        let own_password_file = self.base.config.store_password_file.clone();
        if config.store_password_file != own_password_file
            || (config.store != self.base.config.store && own_password_file.is_some())
        {
            if config.store_password_file != own_password_file {
                log::warn!(
                    "a request named PSOSessionStorePasswordFile; only the process environment may"
                );
            }
            config.store_password_file = if config.store == self.base.config.store {
                own_password_file
            } else {
                None
            };
        }
        if configs.len() >= MAX_CONFIGS {
            configs.clear();
        }
        let resolved = Arc::new(Resolved::new(config));
        configs.insert(key, resolved.clone());
        resolved
    }

    /// The store of a configuration, opened on first use; `None` (logged) if it cannot be.
    fn store_for(&self, resolved: &Resolved) -> Option<Opened> {
        if let Some(custom) = &self.custom {
            return Some(custom.clone());
        }
        let mut slot = resolved
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(opened) = &*slot {
            return Some(opened.clone());
        }
        let config = &resolved.config;
        let opened = self.open(&config.store, config.store_password_file.as_deref(), config)?;
        let opened = match &config.store_moving_from {
            None => opened,
            Some(from) => {
                // The old store's password is in its URL, if it has one: the password file
                // is the new store's.
                let (from, _) = self.open(from, None, config)?;
                let (to, pacing) = opened;
                let moving: Arc<dyn Store> = Arc::new(MovingStore::new(to, from));
                (moving, pacing)
            }
        };
        *slot = Some(opened);
        slot.clone()
    }

    /// The store at `location` for `config`, opened once per process; `None` (logged) if it
    /// cannot be.
    fn open(
        &self,
        location: &StoreLocation,
        password_file: Option<&Path>,
        config: &Config,
    ) -> Option<Opened> {
        match location {
            StoreLocation::Files => {}
            StoreLocation::Server(url) => {
                let store = self.server_store(url, password_file, config)?;
                return Some((store, Arc::default()));
            }
            StoreLocation::Unusable => {
                log::error!(
                    "PSOSessionStore or PSOSessionStoreMovingFrom names no store pso can use: see the warning about it"
                );
                return None;
            }
        }
        let directory = {
            let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
            match stores.opened.get(&config.session_dir) {
                Some(store) => store.clone(),
                None => {
                    // The process's own directory is always allowed; others count from their
                    // first try, opened or not, so failures cannot be repeated at will.
                    let own = config.session_dir == self.base.config.session_dir;
                    if !own && !stores.tried.contains(&config.session_dir) {
                        if stores.tried.len() >= MAX_SESSION_DIRS {
                            log::error!(
                                "requests named more than {MAX_SESSION_DIRS} session directories; refusing {}",
                                config.session_dir.display()
                            );
                            return None;
                        }
                        stores.tried.insert(config.session_dir.clone());
                    }
                    match FileStore::open(&config.session_dir) {
                        Ok(store) => {
                            let opened = (store, Arc::default());
                            stores
                                .opened
                                .insert(config.session_dir.clone(), opened.clone());
                            opened
                        }
                        Err(e) => {
                            log::error!("{}", ErrorChain(&e));
                            return None;
                        }
                    }
                }
            }
        };
        let (directory, pacing) = directory;
        let store: Arc<dyn Store> = Arc::new(
            directory
                .with_sync(config.sync)
                .with_max_bytes(config.max_bytes),
        );
        Some((store, pacing))
    }
}

impl Service {
    /// The store at a server's URL, opened once per process; `None` (logged) if it cannot be.
    fn server_store(
        &self,
        url: &ServerUrl,
        password_file: Option<&Path>,
        config: &Config,
    ) -> Option<Arc<dyn Store>> {
        let key = (
            url.clone(),
            password_file.map(Path::to_path_buf),
            config.max_bytes,
        );
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = stores.servers.get(&key) {
            return Some(store.clone());
        }
        // Each opened store has connections of its own: requests that vary the record cap
        // (or anything else of the key) must not open pools without end.
        // The process's own store is always allowed: requests naming others must not be able
        // to lock it out.
        // The process's own stores: the one it keeps sessions in, and the one it moves them
        // from.
        let base = &self.base.config;
        let is_own_store = matches!(&base.store, StoreLocation::Server(own) if own == url);
        let is_own_source =
            matches!(&base.store_moving_from, Some(StoreLocation::Server(own)) if own == url);
        let own = is_own_store || is_own_source;
        let own_password_file = base.store_password_file.as_deref().filter(|_| is_own_store);
        let own_store =
            own && password_file == own_password_file && config.max_bytes == base.max_bytes;
        if !own_store && stores.servers.len() >= MAX_STORE_SERVERS {
            log::error!(
                "requests named more than {MAX_STORE_SERVERS} session stores (servers, password files and record caps); refusing {url}"
            );
            return None;
        }
        if !own && !stores.tried_servers.contains(url) {
            if stores.tried_servers.len() >= MAX_STORE_SERVERS {
                log::error!(
                    "requests named more than {MAX_STORE_SERVERS} session stores; refusing {url}"
                );
                return None;
            }
            stores.tried_servers.insert(url.clone());
        }
        match crate::store::open_server(url, password_file, config.max_bytes) {
            Ok(store) => {
                stores.servers.insert(key, store.clone());
                Some(store)
            }
            Err(e) => {
                log::error!("{}", ErrorChain(&e));
                None
            }
        }
    }
}

impl Resolved {
    fn new(config: Config) -> Resolved {
        Resolved {
            config,
            store: Mutex::new(None),
        }
    }
}

/// The parameters that shaped a configuration, as (name, value) bytes.
type ConfigKey = Vec<(Vec<u8>, Vec<u8>)>;

/// The parameters of a request that can shape its configuration, as [`Config`] reads them
/// (every name found by [`Environment::lookup`]): every variable whose name is `PSO…` in any
/// case, the script's name (the default service id), and the variable named like the service
/// id in force (a forced session id), whether that service id came with the request or from
/// the process. Empty when the request brings none of them.
fn config_key(env: &Environment, process: &Environment) -> ConfigKey {
    let mut key: ConfigKey = env
        .iter()
        .filter(|(name, _)| name.len() >= 3 && name[..3].eq_ignore_ascii_case(b"PSO"))
        .map(|(name, value)| (name.to_vec(), value.to_vec()))
        .collect();
    if let Some(value) = env.get_os("SCRIPT_NAME") {
        key.push((b"SCRIPT_NAME".to_vec(), value.as_bytes().to_vec()));
    }
    let service = env
        .lookup_str("PSOServiceId")
        .or_else(|| process.lookup_str("PSOServiceId"))
        .map(|(_, service)| service);
    if let Some(service) = service
        && let Some((name, forced)) = env.lookup(service)
    {
        key.push((name.as_bytes().to_vec(), forced.as_bytes().to_vec()));
    }
    // In one order whatever order the parameters came in.
    key.sort_unstable();
    key
}

/// Serves one request: `env` describes it, its body comes from `input`, the response goes to
/// `output`. Sessions live in the file store the configuration names. For a process that
/// serves many requests, build a [`Service`] once instead: this is
/// `Service::new(env.clone()).serve(...)` for the one request `env` describes.
///
/// Only a failure to write the response is returned; everything else becomes a response.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir()?;
/// let env = pso::Environment::from_pairs([
///     ("GATEWAY_INTERFACE", "CGI/1.1"),
///     ("SCRIPT_NAME", "/cgi-bin/hello"),
///     ("PSOSessionFileLoader_Path", dir.path().join("sessions").to_str().unwrap()),
/// ]);
/// let mut output = Vec::new();
/// let handler = |cx: &mut pso::Context| {
///     cx.session.set("seen", &true)?;
///     write!(cx.response, "hi")?;
///     Ok(())
/// };
/// pso::serve(&env, &mut std::io::empty(), &mut output, &handler, std::time::SystemTime::now())?;
/// let text = String::from_utf8(output)?;
/// assert!(text.starts_with("Status: 200 OK\r\n"));
/// assert!(text.contains("Set-Cookie: hello="));
/// assert!(text.ends_with("\r\n\r\nhi"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn serve<F>(
    env: &Environment,
    input: &mut dyn Read,
    output: &mut dyn Write,
    handler: &F,
    now: SystemTime,
) -> io::Result<()>
where
    F: Handler,
{
    let service = Service::new(env.clone());
    service.serve(service.process_env(), input, output, handler, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GcReport, LockOptions, LockedSession, MemoryStore, SessionKey};
    use crate::{Record, Result};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A memory store that counts collection passes.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        passes: AtomicUsize,
    }

    impl Store for Counting {
        fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockedSession>> {
            self.inner.lock(key, options)
        }
        fn exists(&self, key: &SessionKey) -> Result<bool> {
            self.inner.exists(key)
        }
        fn peek(&self, key: &SessionKey) -> Result<Option<Record>> {
            self.inner.peek(key)
        }
        fn delete(&self, key: &SessionKey) -> Result<()> {
            self.inner.delete(key)
        }
        fn keys(&self) -> Result<Box<dyn Iterator<Item = Result<SessionKey>> + '_>> {
            self.inner.keys()
        }
        fn collect_garbage(&self, now: SystemTime, budget: Duration) -> Result<GcReport> {
            self.passes.fetch_add(1, Ordering::SeqCst);
            self.inner.collect_garbage(now, budget)
        }
    }

    #[test]
    fn a_long_lived_process_collects_a_store_at_most_once_per_interval() {
        let store = Arc::new(Counting::default());
        let process = Environment::from_pairs([("PSOSessionGCProbability", "1")]);
        let service = Service::new(process).with_store(store.clone());
        let handler = |cx: &mut crate::Context| -> std::result::Result<(), crate::BoxError> {
            cx.session.set("n", &1u32)?;
            Ok(())
        };
        let request = Environment::from_pairs([("REQUEST_METHOD", "GET")]);
        let started = Instant::now();
        for _ in 0..200 {
            service
                .serve(
                    &request,
                    &mut io::empty(),
                    &mut io::sink(),
                    &handler,
                    SystemTime::now(),
                )
                .unwrap();
        }
        // Every request drew collection; the first pass ran, then one per interval at most.
        let intervals = started.elapsed().as_secs_f64() / GC_INTERVAL.as_secs_f64();
        let passes = store.passes.load(Ordering::SeqCst);
        assert!(passes >= 1, "no pass at all");
        assert!(passes as f64 <= 1.0 + intervals.floor(), "{passes} passes");
    }

    #[test]
    fn pacing_lets_one_pass_start_per_interval() {
        let pacing = Pacing::default();
        assert!(pacing.begin_pass());
        assert!(!pacing.begin_pass());
        *pacing.last_pass.lock().unwrap() = Some(Instant::now() - GC_INTERVAL);
        assert!(pacing.begin_pass());
    }
}
