//! Unit tests of the operations keys: `[admin]` health settings and `[shutdown]`.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

const POOL: &str = r#"
[pools.app]
listen = "127.0.0.1:6432"
servers = ["db:5432"]
[pools.app.users.app]
password = "secret"
"#;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::from_sources(text, &env)
}

fn problems(text: &str) -> Vec<String> {
    match load(text, &[]) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn ops_defaults() -> Result<(), ConfigError> {
    let config = load(POOL, &[])?;
    assert_eq!(config.admin.stall_threshold, Duration::from_secs(10));
    assert_eq!(config.admin.startup_timeout, Duration::from_secs(30));
    assert!(!config.admin.readiness_checks_backend);
    assert_eq!(config.shutdown.accept_for, Duration::ZERO);
    assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(30));
    Ok(())
}

#[test]
fn ops_keys_are_read_from_file_and_environment() -> Result<(), ConfigError> {
    let text = format!(
        "[admin]\nstall_threshold = \"2s\"\nreadiness_checks_backend = true\n\
         [shutdown]\naccept_for = \"5s\"\n{POOL}"
    );
    let config = load(&text, &[("SUTURE__SHUTDOWN__DRAIN_TIMEOUT", "1m")])?;
    assert_eq!(config.admin.stall_threshold, Duration::from_secs(2));
    assert!(config.admin.readiness_checks_backend);
    assert_eq!(config.shutdown.accept_for, Duration::from_secs(5));
    assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(60));
    Ok(())
}

#[test]
fn bad_ops_keys_are_named() {
    let text = format!(
        "[admin]\nstall_threshold = \"100ms\"\nstartup_timeout = \"soon\"\n\
         [shutdown]\ndrain = \"5s\"\n{POOL}"
    );
    let list = problems(&text);
    let has = |key: &str, needle: &str| {
        list.iter()
            .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(needle))
    };
    assert!(has("admin.stall_threshold", "at least"), "{list:?}");
    assert!(has("admin.startup_timeout", ""), "{list:?}");
    assert!(has("shutdown.drain", "unknown key"), "{list:?}");
}
