//! Unit tests of loading and validation, through [`Config::from_sources`].

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::*;

const DESIGN_EXAMPLE: &str = r#"
[admin]
listen = "127.0.0.1:9187"          # /metrics, /healthz, /readyz

[pools.app]                         # one pool = one listener in front of one database service
protocol = "postgres"               # or "mysql"
listen = "127.0.0.1:6432"
servers = ["db.internal:5432"]      # candidates, tried in order, re-resolved on every connect
tls = "prefer"                      # disable | prefer | require | verify-ca | verify-full
min_idle = 2
max_size = 20
max_lifetime = "30m"                # ± jitter
idle_timeout = "10m"
connect_timeout = "5s"
failover_hold = "30s"

[pools.app.users.app]               # client user `app`; Suture logs in to the server as the same user
password_env = "APP_DB_PASSWORD"    # or password_file = "...", or password = "..." for local trials
"#;

const MINIMAL: &str = r#"
[pools.app]
listen = "127.0.0.1:6432"
servers = ["db:5432"]
[pools.app.users.app]
password = "secret"
"#;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_sources(text, &env(pairs))
}

fn problems(text: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    match load(text, pairs) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(err) => {
            let list: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
            assert!(!list.is_empty(), "expected an invalid config, got {err:?}");
            list
        }
    }
}

fn has(list: &[String], key: &str, needle: &str) -> bool {
    list.iter()
        .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(needle))
}

fn pool(config: &Config) -> &PoolConfig {
    &config.pools["app"]
}

#[test]
fn design_example_parses() -> Result<(), ConfigError> {
    let config = load(DESIGN_EXAMPLE, &[("APP_DB_PASSWORD", "s3cret")])?;
    assert_eq!(config.admin.listen, "127.0.0.1:9187".parse().expect("addr"));
    let app = pool(&config);
    assert_eq!(app.name, "app");
    assert_eq!(app.protocol, Protocol::Postgres);
    assert_eq!(app.listen, "127.0.0.1:6432".parse().expect("addr"));
    assert_eq!(
        app.servers,
        vec![ServerAddr {
            host: "db.internal".into(),
            port: 5432
        }]
    );
    assert_eq!(app.tls.mode, TlsMode::Prefer);
    assert_eq!(app.sizes.min_idle, 2);
    assert_eq!(app.sizes.max_size, 20);
    assert_eq!(app.timeouts.max_lifetime, Duration::from_secs(1800));
    assert_eq!(app.timeouts.idle, Duration::from_secs(600));
    assert_eq!(app.timeouts.connect, Duration::from_secs(5));
    assert_eq!(app.timeouts.failover_hold, Duration::from_secs(30));
    assert_eq!(app.users["app"].name, "app");
    assert_eq!(app.users["app"].password.expose(), "s3cret");
    Ok(())
}

#[test]
fn defaults_apply() -> Result<(), ConfigError> {
    let config = load(MINIMAL, &[])?;
    assert_eq!(config.admin.listen, "127.0.0.1:9187".parse().expect("addr"));
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.runtime.worker_threads, 1);
    let app = pool(&config);
    assert_eq!(app.protocol, Protocol::Postgres);
    assert_eq!(
        app.tls,
        TlsSettings {
            mode: TlsMode::Prefer,
            ca_file: None
        }
    );
    assert_eq!(app.client_auth, ClientAuthMethod::ScramSha256);
    assert_eq!(app.role, ServerRole::Primary);
    assert_eq!(app.database, None);
    assert_eq!(
        app.sizes,
        PoolSizes {
            min_idle: 0,
            max_size: 10,
            max_waiters: 1000,
            max_held: 1000,
            max_client_connections: 10_000
        }
    );
    assert_eq!(app.limits.max_message_size, 64 * 1024 * 1024);
    let s = Duration::from_secs;
    assert_eq!(
        app.timeouts,
        Timeouts {
            dns: s(2),
            connect: s(5),
            tls: s(5),
            auth: s(5),
            checkout: s(5),
            client_login: s(10),
            client_write: s(30),
            backend_write: s(30),
            reset: s(5),
            max_lifetime: s(30 * 60),
            idle: s(10 * 60),
            failover_hold: s(30),
            health_check_after: s(30),
            health_check_timeout: s(2),
            tcp_user_timeout: s(30),
            keepalive_idle: s(30),
            auth_failure_delay: Duration::ZERO,
        }
    );
    Ok(())
}

#[test]
fn every_optional_key_is_read() -> Result<(), ConfigError> {
    let text = r#"
[admin]
listen = "[::1]:9000"
[log]
format = "json"
level = "suture=debug,info"
[runtime]
worker_threads = 0
max_buffered_bytes = "128MiB"
[pools.app]
protocol = "mysql"
listen = "127.0.0.1:3307"
servers = ["a.example:3306", "[2001:db8::1]:3306", "10.0.0.2:3306"]
tls = "verify-full"
client_auth = "trust"
database = "main"
min_idle = 1
max_size = 3
max_waiters = 7
max_client_connections = 50
max_message_size = "512KiB"
dns_timeout = "1s"
connect_timeout = "2s"
tls_timeout = "3s"
auth_timeout = "4s"
checkout_timeout = "250ms"
client_login_timeout = "6s"
client_write_timeout = "7s"
backend_write_timeout = "8s"
reset_timeout = "9s"
max_lifetime = "1h"
idle_timeout = "90s"
failover_hold = "0s"
max_held = 5
health_check_after = "0s"
health_check_timeout = "750ms"
tcp_user_timeout = "0s"
keepalive_idle = "45s"
auth_failure_delay = "250ms"
role = "any"
[pools.app.users.app]
password = "x"
"#;
    let config = load(text, &[])?;
    assert_eq!(config.admin.listen, "[::1]:9000".parse().expect("addr"));
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "suture=debug,info");
    assert_eq!(config.runtime.worker_threads, 0);
    assert_eq!(config.runtime.max_buffered_bytes, 128 << 20);
    let app = pool(&config);
    assert_eq!(app.protocol, Protocol::Mysql);
    assert_eq!(app.servers.len(), 3);
    assert_eq!(app.servers[1].host, "2001:db8::1");
    assert_eq!(app.servers[1].to_string(), "[2001:db8::1]:3306");
    assert_eq!(app.tls.mode, TlsMode::VerifyFull);
    assert_eq!(app.client_auth, ClientAuthMethod::Trust);
    assert_eq!(app.database.as_deref(), Some("main"));
    assert_eq!(app.sizes.max_waiters, 7);
    assert_eq!(app.sizes.max_client_connections, 50);
    assert_eq!(app.limits.max_message_size, 512 * 1024);
    assert_eq!(app.timeouts.checkout, Duration::from_millis(250));
    assert_eq!(app.timeouts.reset, Duration::from_secs(9));
    assert_eq!(app.timeouts.max_lifetime, Duration::from_secs(3600));
    assert_eq!(app.timeouts.failover_hold, Duration::ZERO);
    assert_eq!(app.sizes.max_held, 5);
    assert_eq!(app.timeouts.health_check_after, Duration::ZERO);
    assert_eq!(
        app.timeouts.health_check_timeout,
        Duration::from_millis(750)
    );
    assert_eq!(app.timeouts.tcp_user_timeout, Duration::ZERO);
    assert_eq!(app.timeouts.keepalive_idle, Duration::from_secs(45));
    assert_eq!(app.timeouts.auth_failure_delay, Duration::from_millis(250));
    assert_eq!(app.role, ServerRole::Any);
    Ok(())
}

#[test]
fn env_overrides_number_string_duration_and_password() -> Result<(), ConfigError> {
    let config = load(
        DESIGN_EXAMPLE,
        &[
            ("APP_DB_PASSWORD", "from-file-source"),
            ("SUTURE__POOLS__APP__MAX_SIZE", "30"),
            ("SUTURE__POOLS__APP__CONNECT_TIMEOUT", "250ms"),
            ("SUTURE__POOLS__APP__DATABASE", "007"),
            ("SUTURE__POOLS__APP__MAX_MESSAGE_SIZE", "1048576"),
            ("SUTURE__POOLS__APP__USERS__APP__PASSWORD", "12345"),
            ("SUTURE__ADMIN__LISTEN", "127.0.0.1:9999"),
            ("SUTURE__LOG__FORMAT", "json"),
        ],
    )?;
    let app = pool(&config);
    assert_eq!(app.sizes.max_size, 30);
    assert_eq!(app.timeouts.connect, Duration::from_millis(250));
    // Strings that look like numbers stay strings, leading zeros included.
    assert_eq!(app.database.as_deref(), Some("007"));
    assert_eq!(app.limits.max_message_size, 1 << 20);
    // An override of `password` replaces the file's `password_env` instead of clashing with it.
    assert_eq!(app.users["app"].password.expose(), "12345");
    assert_eq!(config.admin.listen.port(), 9999);
    assert_eq!(config.log.format, LogFormat::Json);
    Ok(())
}

#[test]
fn env_override_of_inline_password_and_servers_list() -> Result<(), ConfigError> {
    let config = load(
        MINIMAL,
        &[
            ("SUTURE__POOLS__APP__USERS__APP__PASSWORD", "007"),
            ("SUTURE__POOLS__APP__SERVERS", "a:5432, [::1]:5433"),
            ("SUTURE__POOLS__APP__MIN_IDLE", "4"),
        ],
    )?;
    let app = pool(&config);
    assert_eq!(app.users["app"].password.expose(), "007");
    assert_eq!(app.servers.len(), 2);
    assert_eq!(app.servers[1].to_string(), "[::1]:5433");
    assert_eq!(app.sizes.min_idle, 4);
    Ok(())
}

#[test]
fn env_can_add_a_user() -> Result<(), ConfigError> {
    let config = load(
        MINIMAL,
        &[
            (
                "SUTURE__POOLS__APP__USERS__REPORTING__PASSWORD_ENV",
                "REPORTING_PW",
            ),
            ("REPORTING_PW", "r"),
        ],
    )?;
    assert_eq!(pool(&config).users["reporting"].password.expose(), "r");
    Ok(())
}

#[test]
fn unrelated_env_is_ignored() -> Result<(), ConfigError> {
    load(
        MINIMAL,
        &[
            ("SUTURE_CONFIG", "/etc/suture.toml"),
            ("SUTURE", "x"),
            ("PATH", "/bin"),
        ],
    )?;
    Ok(())
}

#[test]
fn bad_env_number_names_the_key() {
    let list = problems(MINIMAL, &[("SUTURE__POOLS__APP__MAX_SIZE", "many")]);
    assert!(has(&list, "pools.app.max_size", "environment"), "{list:?}");
}

#[test]
fn unknown_top_level_key() {
    let list = problems(&format!("colour = 1\n{MINIMAL}"), &[]);
    assert!(has(&list, "colour", "unknown key"), "{list:?}");
}

#[test]
fn unknown_pool_key() {
    let text = MINIMAL.replace("servers =", "max_sise = 3\nservers =");
    let list = problems(&text, &[]);
    assert!(has(&list, "pools.app.max_sise", "unknown key"), "{list:?}");
}

#[test]
fn unknown_user_key() {
    let text = format!("{MINIMAL}pasword = \"x\"\n");
    let list = problems(&text, &[]);
    assert!(
        has(&list, "pools.app.users.app.pasword", "unknown key"),
        "{list:?}"
    );
}

#[test]
fn unknown_admin_key_from_env() {
    let list = problems(MINIMAL, &[("SUTURE__ADMIN__PORT", "1")]);
    assert!(has(&list, "admin.port", "unknown key"), "{list:?}");
}

#[test]
fn several_problems_reported_at_once() {
    let text = r#"
[pools.app]
listen = "127.0.0.1:6432"
servers = ["db"]
min_idle = 5
max_size = 2
max_message_size = 100
client_auth = "trust"
[pools.app.users.app]
[pools.other]
listen = "0.0.0.0:6433"
servers = ["db:5432"]
client_auth = "trust"
idle_timeout = "0s"
[pools.other.users.u]
password = "x"
password_env = "Y"
"#;
    let list = problems(text, &[]);
    assert!(has(&list, "pools.app.servers[0]", "port"), "{list:?}");
    assert!(
        has(&list, "pools.app.max_size", "must be >= min_idle"),
        "{list:?}"
    );
    assert!(
        has(&list, "pools.app.max_message_size", "outside"),
        "{list:?}"
    );
    assert!(has(&list, "pools.app.users.app", "no password"), "{list:?}");
    assert!(
        has(&list, "pools.other.client_auth", "loopback"),
        "{list:?}"
    );
    assert!(
        has(&list, "pools.other.idle_timeout", "greater than zero"),
        "{list:?}"
    );
    assert!(has(&list, "pools.other.users.u", "exactly one"), "{list:?}");
    assert_eq!(list.len(), 7, "{list:?}");
}

#[test]
fn unreadable_values_do_not_hide_other_problems() {
    let text = r#"
[pools.app]
listen = "0.0.0.0:6432"
servers = ["db:5432"]
client_auth = "trust"
connect_timeout = "5 parsecs"
max_sise = 3
tls = "maybe"
[pools.app.users.app]
password = "x"
"#;
    let list = problems(text, &[("SUTURE__POOLS__APP__LISTEN", "here")]);
    assert!(
        has(&list, "pools.app.connect_timeout", "duration"),
        "{list:?}"
    );
    assert!(has(&list, "pools.app.max_sise", "unknown key"), "{list:?}");
    assert!(has(&list, "pools.app.tls", "maybe"), "{list:?}");
    assert!(
        has(&list, "pools.app.listen", "not an IP address"),
        "{list:?}"
    );
    assert_eq!(list.len(), 4, "{list:?}");

    let list = problems(&text.replace("tls = \"maybe\"\n", ""), &[]);
    assert!(has(&list, "pools.app.client_auth", "loopback"), "{list:?}");
}

#[test]
fn invalid_error_lists_every_problem() {
    let text = MINIMAL.replace("servers = [\"db:5432\"]", "servers = []\nmax_size = 0");
    let err = load(&text, &[]).expect_err("invalid");
    let shown = err.to_string();
    assert!(shown.contains("2 problem(s)"), "{shown}");
    assert!(shown.contains("pools.app.servers: "), "{shown}");
    assert!(
        shown.contains("pools.app.max_size: must be at least 1"),
        "{shown}"
    );
}

#[test]
fn missing_password_source() {
    let list = problems(&format!("{MINIMAL}\n[pools.app.users.bob]\n"), &[]);
    assert!(has(&list, "pools.app.users.bob", "no password"), "{list:?}");
}

#[test]
fn unset_password_env() {
    let list = problems(DESIGN_EXAMPLE, &[]);
    assert!(
        has(
            &list,
            "pools.app.users.app.password_env",
            "APP_DB_PASSWORD is not set"
        ),
        "{list:?}"
    );
}

#[test]
fn password_file_trims_one_newline() -> Result<(), Box<dyn std::error::Error>> {
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(b"pw with space \n\n")?;
    let text = MINIMAL.replace(
        "password = \"secret\"",
        &format!("password_file = {:?}", file.path().display().to_string()),
    );
    let config = load(&text, &[])?;
    assert_eq!(
        pool(&config).users["app"].password.expose(),
        "pw with space \n"
    );
    Ok(())
}

#[test]
fn missing_password_file() {
    let text = MINIMAL.replace(
        "password = \"secret\"",
        "password_file = \"/nonexistent/pw\"",
    );
    let list = problems(&text, &[]);
    assert!(
        has(
            &list,
            "pools.app.users.app.password_file",
            "/nonexistent/pw"
        ),
        "{list:?}"
    );
}

#[test]
fn bad_duration() {
    let text = MINIMAL.replace("servers =", "connect_timeout = \"5 parsecs\"\nservers =");
    let list = problems(&text, &[]);
    assert!(has(&list, "pools.app.connect_timeout", ""), "{list:?}");
}

#[test]
fn trust_on_loopback_is_allowed_elsewhere_not() -> Result<(), ConfigError> {
    let trust = MINIMAL.replace("servers =", "client_auth = \"trust\"\nservers =");
    load(&trust, &[])?;
    let v6 = trust.replace("127.0.0.1:6432", "[::1]:6432");
    load(&v6, &[])?;
    let public = trust.replace("127.0.0.1:6432", "0.0.0.0:6432");
    let list = problems(&public, &[]);
    assert!(has(&list, "pools.app.client_auth", "loopback"), "{list:?}");
    Ok(())
}

#[test]
fn bad_server_addresses() {
    for bad in [
        "db", "db:", "db:0", "db:70000", ":5432", "::1:5432", "[::1]", "[nope]:1", "d b:1",
    ] {
        let text = MINIMAL.replace("db:5432", bad);
        let list = problems(&text, &[]);
        assert!(has(&list, "pools.app.servers[0]", ""), "{bad}: {list:?}");
    }
}

#[test]
fn server_addr_round_trips() -> Result<(), ServerAddrError> {
    for text in [
        "db.internal:5432",
        "10.0.0.1:1",
        "[::1]:6432",
        "[2001:db8::5]:5432",
    ] {
        assert_eq!(text.parse::<ServerAddr>()?.to_string(), text);
    }
    Ok(())
}

#[test]
fn bad_listen_and_missing_keys() {
    let text = "[pools.app]\nlisten = \"localhost:6432\"\n";
    let list = problems(text, &[]);
    assert!(
        has(&list, "pools.app.listen", "not an IP address"),
        "{list:?}"
    );
    assert!(has(&list, "pools.app.servers", "required"), "{list:?}");
    assert!(
        has(&list, "pools.app.users", "at least one user"),
        "{list:?}"
    );
}

#[test]
fn no_pools() {
    let list = problems("[admin]\nlisten = \"127.0.0.1:1\"\n", &[]);
    assert!(has(&list, "pools", "at least one pool"), "{list:?}");
}

#[test]
fn bad_enum_values_name_the_key() {
    let text = MINIMAL.replace("servers =", "tls = \"maybe\"\nservers =");
    let list = problems(&text, &[]);
    assert!(has(&list, "pools.app.tls", "maybe"), "{list:?}");
}

#[test]
fn message_size_forms() -> Result<(), ConfigError> {
    for (value, expected) in [
        ("8192", 8192),
        ("\"64MiB\"", 64 << 20),
        ("\"1GiB\"", 1 << 30),
        ("\"8 KiB\"", 8192),
    ] {
        let text = MINIMAL.replace(
            "servers =",
            &format!("max_message_size = {value}\nservers ="),
        );
        assert_eq!(
            pool(&load(&text, &[])?).limits.max_message_size,
            expected,
            "{value}"
        );
    }
    for bad in ["8191", "\"2GiB\"", "\"64MB\"", "-1"] {
        let text = MINIMAL.replace("servers =", &format!("max_message_size = {bad}\nservers ="));
        let list = problems(&text, &[]);
        assert!(
            has(&list, "pools.app.max_message_size", ""),
            "{bad}: {list:?}"
        );
    }
    Ok(())
}

#[test]
fn duplicate_listen_addresses() {
    let text = format!(
        "{MINIMAL}\n[pools.b]\nlisten = \"127.0.0.1:6432\"\nservers = [\"db:5432\"]\n[pools.b.users.u]\npassword = \"p\"\n"
    );
    let list = problems(&text, &[]);
    assert!(has(&list, "pools.b.listen", "pools.app.listen"), "{list:?}");
}

#[test]
fn uppercase_pool_names_are_rejected() {
    let list = problems(&MINIMAL.replace("pools.app", "pools.App"), &[]);
    assert!(has(&list, "pools.App", "lowercase"), "{list:?}");
}

#[test]
fn bad_worker_threads() {
    let list = problems(&format!("[runtime]\nworker_threads = 1000\n{MINIMAL}"), &[]);
    assert!(
        has(&list, "runtime.worker_threads", "more than"),
        "{list:?}"
    );
    let list = problems(&format!("[runtime]\nworkers = 2\n{MINIMAL}"), &[]);
    assert!(has(&list, "runtime.workers", "unknown key"), "{list:?}");
    let list = problems(MINIMAL, &[("SUTURE__RUNTIME__WORKER_THREADS", "two")]);
    assert!(has(&list, "runtime.worker_threads", ""), "{list:?}");
}

#[test]
fn bad_log_level() {
    let list = problems(&format!("[log]\nlevel = \"=[\"\n{MINIMAL}"), &[]);
    assert!(has(&list, "log.level", ""), "{list:?}");
}

#[test]
fn toml_syntax_error_is_a_parse_error() {
    let err = load("[pools.app\n", &[]).expect_err("error");
    assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
}

#[test]
fn debug_hides_passwords() -> Result<(), ConfigError> {
    let config = load(MINIMAL, &[])?;
    let shown = format!("{config:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("***"));
    Ok(())
}

#[test]
fn bad_role_and_zero_health_check_timeout_name_the_key() {
    let text = MINIMAL.replace(
        "servers = [\"db:5432\"]",
        "servers = [\"db:5432\"]\nrole = \"replica\"\nhealth_check_timeout = \"0s\"",
    );
    let list = problems(&text, &[]);
    assert!(has(&list, "pools.app.role", "replica"), "{list:?}");
    assert!(
        has(&list, "pools.app.health_check_timeout", "greater than zero"),
        "{list:?}"
    );
}

#[test]
fn client_auth_methods_belong_to_their_protocol() -> Result<(), ConfigError> {
    let mysql = MINIMAL.replace("servers =", "protocol = \"mysql\"\nservers =");
    let config = load(&mysql, &[])?;
    assert_eq!(
        pool(&config).client_auth,
        ClientAuthMethod::MysqlNativePassword,
        "a MySQL pool offers mysql_native_password unless told otherwise"
    );
    let scram_on_mysql = mysql.replace("servers =", "client_auth = \"scram-sha-256\"\nservers =");
    let list = problems(&scram_on_mysql, &[]);
    assert!(
        has(&list, "pools.app.client_auth", "not a mysql method"),
        "{list:?}"
    );
    let native_on_pg = MINIMAL.replace(
        "servers =",
        "client_auth = \"mysql_native_password\"\nservers =",
    );
    let list = problems(&native_on_pg, &[]);
    assert!(
        has(&list, "pools.app.client_auth", "not a postgres method"),
        "{list:?}"
    );
    let sha2 = mysql.replace(
        "servers =",
        "client_auth = \"caching_sha2_password\"\nservers =",
    );
    assert_eq!(
        pool(&load(&sha2, &[])?).client_auth,
        ClientAuthMethod::CachingSha2Password
    );
    Ok(())
}
