//! Configuration: one TOML file plus `SUTURE__SECTION__KEY` environment overrides (DESIGN §8).
//!
//! Loading happens in three steps. The `config` crate merges the file and the environment; the flat
//! structs in `raw` take the merged values apart section by section with `deny_unknown_fields`;
//! `build` turns them into the grouped domain types below, applying defaults, resolving passwords
//! and collecting every problem it finds, each named by its full key. Nothing here reads the process
//! environment except [`Config::load`]; tests go through [`Config::from_sources`].

mod build;
mod listen;
mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_listen;
#[cfg(test)]
mod tests_ops;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

pub use listen::{parse_file_mode, ListenAddr, ListenAddrError, MAX_UNIX_PATH, UNIX_PREFIX};

/// Prefix of environment overrides: `SUTURE__POOLS__APP__MAX_SIZE=30`.
pub const ENV_PREFIX: &str = "SUTURE";
/// Separator between the prefix and the first key and between key levels in an override.
pub const ENV_SEPARATOR: &str = "__";

/// Default values of optional keys.
pub mod defaults {
    use std::time::Duration;

    /// `admin.listen`.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9187";
    /// `admin.stall_threshold`.
    pub const STALL_THRESHOLD: Duration = Duration::from_secs(10);
    /// `admin.startup_timeout`.
    pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
    /// `shutdown.accept_for`.
    pub const ACCEPT_FOR: Duration = Duration::ZERO;
    /// `shutdown.drain_timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// `runtime.worker_threads`: one thread, see [`RuntimeConfig`](super::RuntimeConfig).
    pub const WORKER_THREADS: usize = 1;
    /// `log.level`.
    pub const LOG_LEVEL: &str = "info";
    /// `pools.*.min_idle`.
    pub const MIN_IDLE: usize = 0;
    /// `pools.*.max_size`.
    pub const MAX_SIZE: usize = 10;
    /// `pools.*.max_waiters`.
    pub const MAX_WAITERS: usize = 1000;
    /// `pools.*.max_client_connections`.
    pub const MAX_CLIENT_CONNECTIONS: usize = 10_000;
    /// `pools.*.max_message_size`: 64 MiB.
    pub const MAX_MESSAGE_SIZE: usize = 64 << 20;
    /// Lower bound of `pools.*.max_message_size`: 8 KiB.
    pub const MIN_MESSAGE_SIZE_LIMIT: usize = 8 << 10;
    /// Upper bound of `pools.*.max_message_size`: 1 GiB.
    pub const MAX_MESSAGE_SIZE_LIMIT: usize = 1 << 30;
    /// `pools.*.dns_timeout`.
    pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
    /// `pools.*.connect_timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `pools.*.tls_timeout`.
    pub const TLS_TIMEOUT: Duration = Duration::from_secs(5);
    /// `pools.*.auth_timeout`.
    pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
    /// `pools.*.checkout_timeout`.
    pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
    /// `pools.*.client_login_timeout`.
    pub const CLIENT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// `pools.*.client_write_timeout`.
    pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `pools.*.backend_write_timeout`.
    pub const BACKEND_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
    /// `pools.*.reset_timeout`.
    pub const RESET_TIMEOUT: Duration = Duration::from_secs(5);
    /// `pools.*.max_lifetime`.
    pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
    /// `pools.*.idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    /// `pools.*.failover_hold`.
    pub const FAILOVER_HOLD: Duration = Duration::from_secs(30);
    /// `pools.*.max_held`.
    pub const MAX_HELD: usize = 1000;
    /// `pools.*.health_check_after`.
    pub const HEALTH_CHECK_AFTER: Duration = Duration::from_secs(30);
    /// `pools.*.health_check_timeout`.
    pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
    /// `pools.*.tcp_user_timeout`.
    pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
    /// `pools.*.keepalive_idle`.
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
    /// `pools.*.auth_failure_delay`: none.
    pub const AUTH_FAILURE_DELAY: Duration = Duration::ZERO;
    /// `pools.*.listen_mode` of a Unix-socket listener: anyone who can reach the directory may
    /// connect. The same effect as PgBouncer's `unix_socket_mode` default (0777) and
    /// PostgreSQL's `unix_socket_permissions`: execute bits mean nothing on a socket.
    pub const LISTEN_MODE: u32 = 0o666;
    /// `runtime.max_buffered_bytes`: 512 MiB.
    pub const MAX_BUFFERED_BYTES: usize = 512 << 20;
}

/// The whole validated configuration. Passed by value; there is no global.
#[derive(Clone, Debug)]
pub struct Config {
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub shutdown: ShutdownConfig,
    pub pools: BTreeMap<String, PoolConfig>,
}

/// `[shutdown]`: what SIGTERM, SIGINT and `POST /quitquitquit` do (DESIGN §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// New clients are still accepted this long after the signal (readiness fails at once).
    pub accept_for: Duration,
    /// Then requests in flight and open transactions may finish this long; idle clients are
    /// told FATAL 57P01 and closed.
    pub drain_timeout: Duration,
}

/// `[runtime]`: the threads Suture's event loop runs on.
///
/// One thread (the default) runs every session on a single-threaded event loop, as PgBouncer
/// does: a sidecar shares its pod's CPUs with the application, relaying is dominated by
/// system calls and wake-ups, and a second thread mostly adds cross-thread wake-ups (see
/// docs/performance.md). More threads use a work-stealing runtime; 0 means one per CPU the
/// process may use (cgroup limits included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub worker_threads: usize,
    /// Bytes all sessions together may hold of client messages that must arrive whole before
    /// they can be sent on (large queries, Parse, Bind and COPY data stream through instead).
    pub max_buffered_bytes: usize,
}

/// `[admin]`: the HTTP port for `/metrics`, `/startup`, `/healthz`, `/readyz` and `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `/healthz` fails once the data-path event loop has not run for this long.
    pub stall_threshold: Duration,
    /// `/startup` succeeds after this long even if a pool never logged in to its backend.
    pub startup_timeout: Duration,
    /// `/readyz` also fails while a pool's backend cannot be reached.
    pub readiness_checks_backend: bool,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive such as `info` or `suture=debug,info`.
    pub level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
}

impl Protocol {
    /// The value of the `protocol` metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
        }
    }
}

/// `[pools.NAME]`: one listener in front of one database service.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The table key, also the `pool` metrics label.
    pub name: String,
    pub protocol: Protocol,
    pub listen: ListenAddr,
    /// File mode of a Unix-socket listener (`listen_mode`); unused for TCP.
    pub listen_mode: u32,
    /// Candidates, tried in order, re-resolved on every connect.
    pub servers: Vec<ServerAddr>,
    pub tls: TlsSettings,
    pub sizes: PoolSizes,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub client_auth: ClientAuthMethod,
    /// Which servers may serve this pool (checked after every backend login).
    pub role: ServerRole,
    /// When set, every client is connected to this database regardless of what it asked for.
    pub database: Option<String>,
    /// Keyed by user name.
    pub users: BTreeMap<String, UserConfig>,
}

/// A backend address as written in `servers`: a host name or IP literal and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// Host name or IP literal; IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl ServerAddr {
    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.parse::<Ipv6Addr>().is_ok() {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `servers` entry is not a usable `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServerAddrError(&'static str);

impl FromStr for ServerAddr {
    type Err = ServerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or(ServerAddrError("missing `]` after an IPv6 address"))?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(ServerAddrError("not an IPv6 address inside `[...]`"));
            }
            let port = after
                .strip_prefix(':')
                .ok_or(ServerAddrError("expected host:port or [ipv6]:port"))?;
            (host, port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or(ServerAddrError("expected host:port (the port is required)"))?;
            if host.contains(':') {
                return Err(ServerAddrError("write IPv6 addresses as [addr]:port"));
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(ServerAddrError("empty host"));
        }
        let valid_name = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid_name {
            return Err(ServerAddrError("invalid character in host name"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(ServerAddrError("port must be a number from 1 to 65535"))?;
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

/// Backend TLS: `tls` and `tls_ca_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// PEM bundle of trusted roots for verify-ca / verify-full; webpki roots when unset.
    pub ca_file: Option<PathBuf>,
}

/// Same meaning as libpq's `sslmode` (without `allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server supports it; the certificate is not verified.
    Prefer,
    /// Always encrypt; the certificate is not verified.
    Require,
    /// Always encrypt; the chain is verified, the host name is not.
    VerifyCa,
    /// Always encrypt; chain and host name are verified.
    VerifyFull,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// `role`: what kind of server a pool accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerRole {
    /// Only a writable server: a connection whose `transaction_read_only` is `on` (a standby, a
    /// demoted primary, `default_transaction_read_only`) is closed and the next server tried.
    Primary,
    /// Any server that accepts the login.
    Any,
}

impl ServerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::Any => "any",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    /// Authenticated backend connections kept warm.
    pub min_idle: usize,
    pub max_size: usize,
    /// Bound of the checkout queue; further clients are refused.
    pub max_waiters: usize,
    /// Most callers held at once (per pool) waiting for an unreachable backend to come back.
    pub max_held: usize,
    pub max_client_connections: usize,
}

/// Every deadline of a pool (DESIGN §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub dns: Duration,
    pub connect: Duration,
    pub tls: Duration,
    /// Backend login.
    pub auth: Duration,
    pub checkout: Duration,
    pub client_login: Duration,
    pub client_write: Duration,
    pub backend_write: Duration,
    pub reset: Duration,
    pub max_lifetime: Duration,
    pub idle: Duration,
    /// How long a checkout keeps retrying while no backend can be reached; zero: no retries.
    pub failover_hold: Duration,
    /// Idle pooled connections quiet for this long get an empty query; zero turns it off.
    pub health_check_after: Duration,
    /// Deadline of that empty query.
    pub health_check_timeout: Duration,
    /// `TCP_USER_TIMEOUT` on backend sockets: unacknowledged data older than this drops the
    /// connection; zero leaves the kernel default.
    pub tcp_user_timeout: Duration,
    /// Idle time of a backend socket before the first TCP keepalive probe.
    pub keepalive_idle: Duration,
    /// A client whose authentication failed is answered only after this long.
    pub auth_failure_delay: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from either side, in bytes.
    pub max_message_size: usize,
}

/// How clients authenticate to Suture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ClientAuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// MySQL pools: the plugin offered in the greeting; clients may switch to
    /// `caching_sha2_password`, which is accepted too.
    #[serde(rename = "mysql_native_password")]
    MysqlNativePassword,
    /// MySQL pools: offered in the greeting (the fast path; Suture knows every password, so its
    /// cache is never empty); clients may switch to `mysql_native_password`.
    #[serde(rename = "caching_sha2_password")]
    CachingSha2Password,
    /// Only allowed on loopback and Unix-socket listeners.
    #[serde(rename = "trust")]
    Trust,
}

impl ClientAuthMethod {
    /// Whether a pool speaking `protocol` can use this method.
    pub fn serves(self, protocol: Protocol) -> bool {
        match self {
            ClientAuthMethod::ScramSha256 | ClientAuthMethod::Md5 => protocol == Protocol::Postgres,
            ClientAuthMethod::MysqlNativePassword | ClientAuthMethod::CachingSha2Password => {
                protocol == Protocol::Mysql
            }
            ClientAuthMethod::Trust => true,
        }
    }

    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ScramSha256 => "scram-sha-256",
            ClientAuthMethod::Md5 => "md5",
            ClientAuthMethod::MysqlNativePassword => "mysql_native_password",
            ClientAuthMethod::CachingSha2Password => "caching_sha2_password",
            ClientAuthMethod::Trust => "trust",
        }
    }
}

/// `[pools.NAME.users.USER]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserConfig {
    pub name: String,
    /// Resolved at load time from `password_env`, `password_file` or `password`.
    pub password: Secret,
}

/// A password. `Debug` never shows it; call [`Secret::expose`] where it is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One thing wrong with the configuration, named by its full key (`pools.app.max_size`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one load, in a stable order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML (or the sources could not be merged).
    #[error("cannot parse configuration")]
    Parse(#[source] config::ConfigError),
    /// The file parsed but its content is wrong; every problem is listed.
    #[error("invalid configuration ({count} problem(s)):\n{0}", count = .0.len())]
    Invalid(Problems),
}

impl ConfigError {
    /// The individual problems of an [`ConfigError::Invalid`]; empty for the other variants.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => &problems.0,
            _ => &[],
        }
    }
}

/// `error: cause: cause ...`, for errors held by reference.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Config {
    /// Loads FILE and the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        // `std::env::vars` panics on non-Unicode entries; skip those instead.
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Config::from_sources(&text, &env)
    }

    /// For tests: file text plus an explicit env map, without touching the process environment.
    /// Overrides and `password_env` are both read from `env`.
    pub fn from_sources(
        toml_text: &str,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let merged = raw::merge(toml_text, env).map_err(ConfigError::Parse)?;
        build::build(merged, env).map_err(ConfigError::Invalid)
    }
}
