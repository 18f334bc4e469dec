//! The file shape as written: flat serde structs, one per TOML table, each rejecting unknown keys.
//!
//! The sections are deserialized one at a time (root, admin, log, each pool, each user) so that a
//! problem in one pool does not hide the problems in another. Nested tables (`users`) are taken
//! out of their parent before it is deserialized, which keeps every struct flat: serde's `flatten`
//! does not combine with `deny_unknown_fields`, nor with the `config` crate's string-to-number
//! conversion of environment values.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use config::{Environment, File, FileFormat, Map, Value};
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    ClientAuthMethod, LogFormat, Protocol, ServerRole, TlsMode, ENV_PREFIX, ENV_SEPARATOR,
};

/// The origin the `config` crate gives values that came from [`Environment`].
pub(super) const ENV_ORIGIN: &str = "the environment";

/// Merges the TOML text and the `SUTURE__...` entries of `env` into one tree of values.
pub(super) fn merge(
    toml_text: &str,
    env: &HashMap<String, String>,
) -> Result<Map<String, Value>, config::ConfigError> {
    let env: Map<String, String> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let merged = config::Config::builder()
        .add_source(File::from_str(toml_text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(env)),
        )
        .build()?;
    config::Source::collect(&merged)
}

/// Only checks which top-level tables exist; each is deserialized on its own afterwards.
#[derive(Deserialize)]
#[expect(
    dead_code,
    reason = "deserialized only to reject unknown top-level keys"
)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoot {
    #[serde(default)]
    pub(super) admin: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) log: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) runtime: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) shutdown: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) pools: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) stall_threshold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) startup_timeout: Option<Duration>,
    pub(super) readiness_checks_backend: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    #[serde(default, with = "humantime_serde")]
    pub(super) accept_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    pub(super) worker_threads: Option<usize>,
    /// Bytes: an integer, or a string such as `"512MiB"`.
    #[serde(default, deserialize_with = "byte_size")]
    pub(super) max_buffered_bytes: Option<u64>,
}

/// `[pools.NAME]` without its `users` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) protocol: Option<Protocol>,
    pub(super) listen: Option<String>,
    /// Octal, as a string: `"0660"`.
    pub(super) listen_mode: Option<String>,
    /// A TOML array, or a comma-separated string (handy in an environment override).
    #[serde(default, deserialize_with = "string_or_list")]
    pub(super) servers: Option<Vec<String>>,
    pub(super) tls: Option<TlsMode>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) client_auth: Option<ClientAuthMethod>,
    pub(super) database: Option<String>,
    pub(super) role: Option<ServerRole>,

    pub(super) min_idle: Option<usize>,
    pub(super) max_size: Option<usize>,
    pub(super) max_waiters: Option<usize>,
    pub(super) max_held: Option<usize>,
    pub(super) max_client_connections: Option<usize>,
    /// Bytes: an integer, or a string such as `"64MiB"`.
    #[serde(default, deserialize_with = "byte_size")]
    pub(super) max_message_size: Option<u64>,

    #[serde(default, with = "humantime_serde")]
    pub(super) dns_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) tls_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) auth_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) checkout_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) client_login_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) client_write_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) backend_write_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) reset_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) max_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) failover_hold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) health_check_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) health_check_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) tcp_user_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) keepalive_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) auth_failure_delay: Option<Duration>,
}

/// `[pools.NAME.users.USER]`: exactly one of the three must be set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Option<Vec<String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of \"host:port\" strings or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ))
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                out.push(item);
            }
            Ok(Some(out))
        }
    }

    d.deserialize_any(ListVisitor)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;

    impl<'de> Visitor<'de> for SizeVisitor {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes: an integer or a string like \"64MiB\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("a size cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_byte_size(v).map(Some).map_err(E::custom)
        }
    }

    d.deserialize_any(SizeVisitor)
}

/// Parses `"65536"`, `"512KiB"`, `"64 MiB"`, `"1GiB"`, `"100B"` (binary units only).
pub(super) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number such as \"64MiB\""))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?}: use B, KiB, MiB or GiB"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}
