//! From the merged value tree to [`Config`]: defaults, password resolution and validation.
//!
//! Every check records a [`Problem`] and carries on with a placeholder, so one run reports
//! everything that is wrong. A [`Config`] is returned only when no problem was found.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use config::{Map, Value, ValueKind};
use serde::de::DeserializeOwned;

use super::raw::{
    RawAdmin, RawLog, RawPool, RawRoot, RawRuntime, RawShutdown, RawUser, ENV_ORIGIN,
};
use super::{
    defaults, parse_file_mode, AdminConfig, ClientAuthMethod, Config, Limits, ListenAddr,
    ListenAddrError, LogConfig, LogFormat, PoolConfig, PoolSizes, Problem, Problems, Protocol,
    RuntimeConfig, Secret, ServerAddr, ServerRole, ShutdownConfig, Timeouts, TlsMode, TlsSettings,
    UserConfig,
};

const PASSWORD_KEYS: [&str; 3] = ["password", "password_env", "password_file"];

/// Collects problems while the configuration is assembled.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    /// Records a problem, unless one is already recorded for the same key (a key whose value
    /// could not be read is not also reported as missing).
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if self.problems.iter().any(|p| p.key == key) {
            return;
        }
        self.problems.push(Problem {
            key,
            message: message.into(),
        });
    }

    /// Deserializes one table. When that fails, each entry is tried on its own so that every bad
    /// key is reported, and the table is deserialized again without the bad entries so that the
    /// remaining keys still get validated. Returns `None` only if even that fails.
    fn section<T: DeserializeOwned>(
        &mut self,
        section: &str,
        table: Map<String, Value>,
    ) -> Option<T> {
        let parse = |table: Map<String, Value>| {
            Value::new(None, ValueKind::Table(table)).try_deserialize::<T>()
        };
        let first_error = match parse(table.clone()) {
            Ok(value) => return Some(value),
            Err(err) => err,
        };
        let entries: BTreeMap<String, Value> = table.into_iter().collect();
        let mut good = Map::new();
        for (key, value) in entries {
            let single: Map<String, Value> = [(key.clone(), value.clone())].into_iter().collect();
            match parse(single) {
                Ok(_) => {
                    good.insert(key, value);
                }
                Err(err) => self.add_config_error(section, err),
            }
        }
        match parse(good) {
            Ok(value) => Some(value),
            Err(_) => {
                // Not explained by any single entry (e.g. a required key is missing).
                self.add_config_error(section, first_error);
                None
            }
        }
    }

    /// Takes a value that must be a table.
    fn table(&mut self, key: &str, value: Value) -> Option<Map<String, Value>> {
        match value.into_table() {
            Ok(table) => Some(table),
            Err(err) => {
                self.add_config_error(key, err);
                None
            }
        }
    }

    /// Renders an error of the `config` crate with the full key it refers to.
    fn add_config_error(&mut self, section: &str, err: config::ConfigError) {
        let join = |key: &str| {
            if section.is_empty() {
                key.to_owned()
            } else if key.is_empty() || key.starts_with('[') {
                format!("{section}{key}")
            } else {
                format!("{section}.{key}")
            }
        };
        let from = |origin: &Option<String>| match origin.as_deref() {
            Some(ENV_ORIGIN) => " (set in the environment)".to_owned(),
            Some(origin) => format!(" (in {origin})"),
            None => String::new(),
        };
        match err {
            config::ConfigError::Type {
                origin,
                unexpected,
                expected,
                key,
            } => self.add(
                join(key.as_deref().unwrap_or("")),
                format!(
                    "invalid type: {unexpected}, expected {expected}{}",
                    from(&origin)
                ),
            ),
            config::ConfigError::At { error, origin, key } => {
                let key = join(key.as_deref().unwrap_or(""));
                match unknown_field(&error.to_string()) {
                    Some((field, expected)) => self.add_unknown(&key, field, expected, &origin),
                    None => self.add(key, format!("{error}{}", from(&origin))),
                }
            }
            config::ConfigError::NotFound(key) => self.add(join(&key), "missing"),
            other => {
                let text = other.to_string();
                match unknown_field(&text) {
                    Some((field, expected)) => self.add_unknown(section, field, expected, &None),
                    None => self.add(
                        if section.is_empty() {
                            "(root)"
                        } else {
                            section
                        },
                        text,
                    ),
                }
            }
        }
    }

    fn add_unknown(&mut self, section: &str, field: &str, expected: &str, origin: &Option<String>) {
        let key = if section.is_empty() {
            field.to_owned()
        } else {
            format!("{section}.{field}")
        };
        let origin = if origin.as_deref() == Some(ENV_ORIGIN) {
            " (set in the environment)"
        } else {
            ""
        };
        self.add(key, format!("unknown key{origin}; {expected}"));
    }
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into `x` and the rest.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    Some((field, rest.trim_start_matches(',').trim()))
}

pub(super) fn build(
    mut tree: Map<String, Value>,
    env: &HashMap<String, String>,
) -> Result<Config, Problems> {
    let mut c = Checker::default();
    // Unknown top-level keys; the known sections are read below either way.
    c.section::<RawRoot>("", tree.clone());

    let admin = build_admin(&mut c, tree.remove("admin"));
    let log = build_log(&mut c, tree.remove("log"));
    let runtime = build_runtime(&mut c, tree.remove("runtime"));
    let shutdown = build_shutdown(&mut c, tree.remove("shutdown"));
    let pools = build_pools(&mut c, tree.remove("pools"), env);
    check_listen_conflicts(&mut c, &admin, &pools);

    if c.problems.is_empty() {
        Ok(Config {
            admin,
            log,
            runtime,
            shutdown,
            pools,
        })
    } else {
        Err(Problems(c.problems))
    }
}

fn build_admin(c: &mut Checker, value: Option<Value>) -> AdminConfig {
    let raw = value
        .and_then(|v| c.table("admin", v))
        .and_then(|t| c.section::<RawAdmin>("admin", t))
        .unwrap_or_default();
    let listen = raw.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN);
    let stall_threshold = raw.stall_threshold.unwrap_or(defaults::STALL_THRESHOLD);
    if stall_threshold < MIN_STALL_THRESHOLD {
        c.add(
            "admin.stall_threshold",
            format!("must be at least {MIN_STALL_THRESHOLD:?} (the watchdog looks every 250ms)"),
        );
    }
    AdminConfig {
        listen: parse_listen(c, "admin.listen", listen),
        stall_threshold,
        startup_timeout: raw.startup_timeout.unwrap_or(defaults::STARTUP_TIMEOUT),
        readiness_checks_backend: raw.readiness_checks_backend.unwrap_or(false),
    }
}

/// A shorter stall threshold would report the watchdog's own sampling as a stall.
const MIN_STALL_THRESHOLD: Duration = Duration::from_millis(500);

fn build_shutdown(c: &mut Checker, value: Option<Value>) -> ShutdownConfig {
    let raw = value
        .and_then(|v| c.table("shutdown", v))
        .and_then(|t| c.section::<RawShutdown>("shutdown", t))
        .unwrap_or_default();
    ShutdownConfig {
        accept_for: raw.accept_for.unwrap_or(defaults::ACCEPT_FOR),
        drain_timeout: raw.drain_timeout.unwrap_or(defaults::DRAIN_TIMEOUT),
    }
}

fn build_log(c: &mut Checker, value: Option<Value>) -> LogConfig {
    let raw = value
        .and_then(|v| c.table("log", v))
        .and_then(|t| c.section::<RawLog>("log", t))
        .unwrap_or_default();
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&level) {
        c.add("log.level", format!("invalid filter {level:?}: {err}"));
    }
    LogConfig {
        format: raw.format.unwrap_or(LogFormat::Text),
        level,
    }
}

fn build_runtime(c: &mut Checker, value: Option<Value>) -> RuntimeConfig {
    let raw = value
        .and_then(|v| c.table("runtime", v))
        .and_then(|t| c.section::<RawRuntime>("runtime", t))
        .unwrap_or_default();
    let worker_threads = raw.worker_threads.unwrap_or(defaults::WORKER_THREADS);
    if worker_threads > MAX_WORKER_THREADS {
        c.add(
            "runtime.worker_threads",
            format!("{worker_threads} is more than {MAX_WORKER_THREADS}"),
        );
    }
    let max_buffered_bytes = match raw.max_buffered_bytes.map(usize::try_from) {
        None => defaults::MAX_BUFFERED_BYTES,
        Some(Ok(bytes)) if bytes >= defaults::MIN_MESSAGE_SIZE_LIMIT => bytes,
        Some(_) => {
            c.add(
                "runtime.max_buffered_bytes",
                format!(
                    "must be at least {} bytes",
                    defaults::MIN_MESSAGE_SIZE_LIMIT
                ),
            );
            defaults::MAX_BUFFERED_BYTES
        }
    };
    RuntimeConfig {
        worker_threads,
        max_buffered_bytes,
    }
}

/// More event-loop threads than this is a typo, not a setting.
const MAX_WORKER_THREADS: usize = 256;

fn parse_listen(c: &mut Checker, key: &str, text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|_| {
        c.add(
            key,
            format!("{text:?} is not an IP address and port such as 127.0.0.1:6432"),
        );
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    })
}

fn build_pools(
    c: &mut Checker,
    value: Option<Value>,
    env: &HashMap<String, String>,
) -> BTreeMap<String, PoolConfig> {
    let Some(table) = value.and_then(|v| c.table("pools", v)) else {
        c.add("pools", "at least one pool is required");
        return BTreeMap::new();
    };
    if table.is_empty() {
        c.add("pools", "at least one pool is required");
    }
    // Sorted, so problems come out in a stable order.
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let mut pools = BTreeMap::new();
    for (name, value) in table {
        let key = format!("pools.{name}");
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            c.add(
                &key,
                "pool names may contain only lowercase letters, digits, '-' and '_' \
                 (environment overrides address them in lowercase)",
            );
        }
        let Some(mut table) = c.table(&key, value) else {
            continue;
        };
        let users = table.remove("users");
        let raw = c.section::<RawPool>(&key, table);
        let users = build_users(c, &name, users, env);
        if let Some(raw) = raw {
            let pool = build_pool(c, &name, raw, users);
            pools.insert(name, pool);
        }
    }
    pools
}

fn build_pool(
    c: &mut Checker,
    name: &str,
    raw: RawPool,
    users: BTreeMap<String, UserConfig>,
) -> PoolConfig {
    let key = |field: &str| format!("pools.{name}.{field}");
    let timeouts = build_timeouts(c, name, &raw);

    let listen = match raw.listen.as_deref() {
        Some(text) => text.parse().unwrap_or_else(|err: ListenAddrError| {
            c.add(key("listen"), err.to_string());
            ListenAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        }),
        None => {
            c.add(
                key("listen"),
                "required, e.g. \"127.0.0.1:6432\" or \"unix:/run/suture/.s.PGSQL.6432\"",
            );
            ListenAddr::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        }
    };
    let listen_mode = build_listen_mode(c, name, &listen, raw.listen_mode.clone());
    let servers = build_servers(c, &key("servers"), raw.servers);

    let tls = TlsSettings {
        mode: raw.tls.unwrap_or(TlsMode::Prefer),
        ca_file: raw.tls_ca_file,
    };
    if let Some(path) = &tls.ca_file {
        check_readable_file(c, &key("tls_ca_file"), path);
    }

    let protocol = raw.protocol.unwrap_or(Protocol::Postgres);
    let client_auth = raw.client_auth.unwrap_or(match protocol {
        Protocol::Postgres => ClientAuthMethod::ScramSha256,
        Protocol::Mysql => ClientAuthMethod::MysqlNativePassword,
    });
    if !client_auth.serves(protocol) {
        c.add(
            key("client_auth"),
            format!(
                "\"{}\" is not a {} method (postgres: scram-sha-256, md5, trust; mysql: mysql_native_password, caching_sha2_password, trust)",
                client_auth.as_str(),
                protocol.as_str()
            ),
        );
    }
    if client_auth == ClientAuthMethod::Trust && !listen.is_host_local() {
        c.add(
            key("client_auth"),
            format!(
                "\"trust\" is only allowed on a loopback or unix: listen address, not {listen}"
            ),
        );
    }
    if raw.database.as_deref() == Some("") {
        c.add(
            key("database"),
            "must not be empty (leave it out to pass the client's through)",
        );
    }

    let sizes = PoolSizes {
        min_idle: raw.min_idle.unwrap_or(defaults::MIN_IDLE),
        max_size: raw.max_size.unwrap_or(defaults::MAX_SIZE),
        max_waiters: raw.max_waiters.unwrap_or(defaults::MAX_WAITERS),
        max_held: raw.max_held.unwrap_or(defaults::MAX_HELD),
        max_client_connections: raw
            .max_client_connections
            .unwrap_or(defaults::MAX_CLIENT_CONNECTIONS),
    };
    if sizes.max_size == 0 {
        c.add(key("max_size"), "must be at least 1");
    } else if sizes.max_size < sizes.min_idle {
        c.add(
            key("max_size"),
            format!(
                "must be >= min_idle ({} < {})",
                sizes.max_size, sizes.min_idle
            ),
        );
    }
    if sizes.max_client_connections == 0 {
        c.add(key("max_client_connections"), "must be at least 1");
    }

    let limits = Limits {
        max_message_size: build_message_size(c, &key("max_message_size"), raw.max_message_size),
    };

    if users.is_empty() {
        // Either missing or every user had a problem of its own; only the first needs saying.
        if !c.problems.iter().any(|p| p.key.starts_with(&key("users."))) {
            c.add(key("users"), "at least one user is required");
        }
    }

    PoolConfig {
        name: name.to_owned(),
        protocol,
        listen,
        listen_mode,
        servers,
        tls,
        sizes,
        timeouts,
        limits,
        client_auth,
        role: raw.role.unwrap_or(ServerRole::Primary),
        database: raw.database,
        users,
    }
}

/// `listen_mode`: octal, only for a Unix-socket listener (`pools.NAME.listen_mode`).
fn build_listen_mode(c: &mut Checker, pool: &str, listen: &ListenAddr, raw: Option<String>) -> u32 {
    let key = format!("pools.{pool}.listen_mode");
    let Some(text) = raw else {
        return defaults::LISTEN_MODE;
    };
    let listen_key = format!("pools.{pool}.listen");
    let listen_bad = c.problems.iter().any(|p| p.key == listen_key);
    match listen {
        // A listen value that did not parse was reported already.
        ListenAddr::Tcp(_) if listen_bad => defaults::LISTEN_MODE,
        ListenAddr::Tcp(_) => {
            c.add(
                key,
                "only applies to a unix: listen address (the socket file's permissions)",
            );
            defaults::LISTEN_MODE
        }
        ListenAddr::Unix(_) => parse_file_mode(&text).unwrap_or_else(|err| {
            c.add(key, err);
            defaults::LISTEN_MODE
        }),
    }
}

/// Every `*_timeout` key, `max_lifetime`, `failover_hold`, `health_check_after` and `keepalive_idle`:
/// defaults and "greater than zero".
fn build_timeouts(c: &mut Checker, name: &str, raw: &RawPool) -> Timeouts {
    let key = |field: &str| format!("pools.{name}.{field}");
    let mut timeout = |field: &str, value: Option<Duration>, default: Duration, zero_ok: bool| {
        let value = value.unwrap_or(default);
        if value.is_zero() && !zero_ok {
            c.add(key(field), "must be greater than zero");
        }
        value
    };
    Timeouts {
        dns: timeout("dns_timeout", raw.dns_timeout, defaults::DNS_TIMEOUT, false),
        connect: timeout(
            "connect_timeout",
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
            false,
        ),
        tls: timeout("tls_timeout", raw.tls_timeout, defaults::TLS_TIMEOUT, false),
        auth: timeout(
            "auth_timeout",
            raw.auth_timeout,
            defaults::AUTH_TIMEOUT,
            false,
        ),
        checkout: timeout(
            "checkout_timeout",
            raw.checkout_timeout,
            defaults::CHECKOUT_TIMEOUT,
            false,
        ),
        client_login: timeout(
            "client_login_timeout",
            raw.client_login_timeout,
            defaults::CLIENT_LOGIN_TIMEOUT,
            false,
        ),
        client_write: timeout(
            "client_write_timeout",
            raw.client_write_timeout,
            defaults::CLIENT_WRITE_TIMEOUT,
            false,
        ),
        backend_write: timeout(
            "backend_write_timeout",
            raw.backend_write_timeout,
            defaults::BACKEND_WRITE_TIMEOUT,
            false,
        ),
        reset: timeout(
            "reset_timeout",
            raw.reset_timeout,
            defaults::RESET_TIMEOUT,
            false,
        ),
        max_lifetime: timeout(
            "max_lifetime",
            raw.max_lifetime,
            defaults::MAX_LIFETIME,
            false,
        ),
        idle: timeout(
            "idle_timeout",
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
            false,
        ),
        failover_hold: timeout(
            "failover_hold",
            raw.failover_hold,
            defaults::FAILOVER_HOLD,
            true,
        ),
        health_check_after: timeout(
            "health_check_after",
            raw.health_check_after,
            defaults::HEALTH_CHECK_AFTER,
            true,
        ),
        health_check_timeout: timeout(
            "health_check_timeout",
            raw.health_check_timeout,
            defaults::HEALTH_CHECK_TIMEOUT,
            false,
        ),
        tcp_user_timeout: timeout(
            "tcp_user_timeout",
            raw.tcp_user_timeout,
            defaults::TCP_USER_TIMEOUT,
            true,
        ),
        keepalive_idle: timeout(
            "keepalive_idle",
            raw.keepalive_idle,
            defaults::KEEPALIVE_IDLE,
            false,
        ),
        auth_failure_delay: timeout(
            "auth_failure_delay",
            raw.auth_failure_delay,
            defaults::AUTH_FAILURE_DELAY,
            true,
        ),
    }
}

fn build_servers(c: &mut Checker, key: &str, raw: Option<Vec<String>>) -> Vec<ServerAddr> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        c.add(key, "at least one \"host:port\" is required");
    }
    let mut servers = Vec::with_capacity(raw.len());
    for (i, text) in raw.iter().enumerate() {
        match text.trim().parse::<ServerAddr>() {
            Ok(addr) => servers.push(addr),
            Err(err) => c.add(format!("{key}[{i}]"), format!("{text:?}: {err}")),
        }
    }
    servers
}

fn build_message_size(c: &mut Checker, key: &str, raw: Option<u64>) -> usize {
    let Some(size) = raw else {
        return defaults::MAX_MESSAGE_SIZE;
    };
    let min = defaults::MIN_MESSAGE_SIZE_LIMIT;
    let max = defaults::MAX_MESSAGE_SIZE_LIMIT;
    match usize::try_from(size) {
        Ok(size) if (min..=max).contains(&size) => size,
        _ => {
            c.add(
                key,
                format!("{size} bytes is outside 8KiB..=1GiB ({min}..={max})"),
            );
            defaults::MAX_MESSAGE_SIZE
        }
    }
}

fn check_readable_file(c: &mut Checker, key: &str, path: &Path) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => c.add(key, format!("{} is not a regular file", path.display())),
        Err(err) => c.add(key, format!("cannot read {}: {err}", path.display())),
    }
}

fn build_users(
    c: &mut Checker,
    pool: &str,
    value: Option<Value>,
    env: &HashMap<String, String>,
) -> BTreeMap<String, UserConfig> {
    let key = format!("pools.{pool}.users");
    let Some(table) = value.and_then(|v| c.table(&key, v)) else {
        return BTreeMap::new();
    };
    let table: BTreeMap<String, Value> = table.into_iter().collect();
    let mut users = BTreeMap::new();
    for (name, value) in table {
        let key = format!("{key}.{name}");
        if name.is_empty() {
            c.add(&key, "user names must not be empty");
            continue;
        }
        let Some(mut table) = c.table(&key, value) else {
            continue;
        };
        prefer_env_password_source(&mut table);
        let Some(raw) = c.section::<RawUser>(&key, table) else {
            continue;
        };
        if let Some(password) = resolve_password(c, &key, raw, env) {
            users.insert(
                name.clone(),
                UserConfig {
                    name,
                    password: Secret(password),
                },
            );
        }
    }
    users
}

/// An override such as `SUTURE__POOLS__APP__USERS__APP__PASSWORD` replaces whatever password
/// source the file names, instead of clashing with it as a second source.
fn prefer_env_password_source(table: &mut Map<String, Value>) {
    let from_env = |v: &Value| v.origin() == Some(ENV_ORIGIN);
    let any_from_env = PASSWORD_KEYS
        .iter()
        .any(|k| table.get(*k).is_some_and(from_env));
    if any_from_env {
        table.retain(|k, v| !PASSWORD_KEYS.contains(&k.as_str()) || from_env(v));
    }
}

fn resolve_password(
    c: &mut Checker,
    key: &str,
    raw: RawUser,
    env: &HashMap<String, String>,
) -> Option<String> {
    let (field, password) = match (raw.password, raw.password_env, raw.password_file) {
        (Some(password), None, None) => ("password", password),
        (None, Some(var), None) => match env.get(&var) {
            Some(password) => ("password_env", password.clone()),
            None => {
                c.add(
                    format!("{key}.password_env"),
                    format!("environment variable {var} is not set"),
                );
                return None;
            }
        },
        (None, None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                ("password_file", text.to_owned())
            }
            Err(err) => {
                c.add(
                    format!("{key}.password_file"),
                    format!("cannot read {}: {err}", path.display()),
                );
                return None;
            }
        },
        (None, None, None) => {
            c.add(
                key,
                "no password: set one of password_env, password_file or password",
            );
            return None;
        }
        _ => {
            c.add(
                key,
                "set exactly one of password_env, password_file or password",
            );
            return None;
        }
    };
    if password.is_empty() {
        c.add(format!("{key}.{field}"), "the password is empty");
        return None;
    }
    Some(password)
}

fn check_listen_conflicts(
    c: &mut Checker,
    admin: &AdminConfig,
    pools: &BTreeMap<String, PoolConfig>,
) {
    let mut seen: HashMap<ListenAddr, String> = HashMap::new();
    if admin.listen.port() != 0 {
        seen.insert(ListenAddr::Tcp(admin.listen), "admin.listen".to_owned());
    }
    for pool in pools.values() {
        if pool.listen.tcp().is_some_and(|addr| addr.port() == 0) {
            continue;
        }
        let key = format!("pools.{}.listen", pool.name);
        match seen.get(&pool.listen) {
            Some(other) => c.add(&key, format!("{} is already used by {other}", pool.listen)),
            None => {
                seen.insert(pool.listen.clone(), key);
            }
        }
    }
}
