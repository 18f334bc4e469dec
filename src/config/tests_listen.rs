//! Unit tests of a pool's `listen` as the whole configuration reads it: Unix-socket paths,
//! `listen_mode`, `trust` on a socket, and two pools on one path.

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;

const UNIX_POOL: &str = r#"
[pools.app]
listen = "unix:/run/suture/.s.PGSQL.6432"
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

fn has(list: &[String], key: &str, needle: &str) -> bool {
    list.iter()
        .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(needle))
}

#[test]
fn a_unix_listener_with_the_default_mode() -> Result<(), ConfigError> {
    let config = load(UNIX_POOL, &[])?;
    let pool = &config.pools["app"];
    assert_eq!(
        pool.listen,
        ListenAddr::Unix(PathBuf::from("/run/suture/.s.PGSQL.6432"))
    );
    assert_eq!(pool.listen_mode, 0o666);
    assert_eq!(pool.listen_mode, defaults::LISTEN_MODE);
    Ok(())
}

#[test]
fn listen_mode_is_read_from_file_and_environment() -> Result<(), ConfigError> {
    let text = UNIX_POOL.replace("servers =", "listen_mode = \"0660\"\nservers =");
    assert_eq!(load(&text, &[])?.pools["app"].listen_mode, 0o660);
    let env = [("SUTURE__POOLS__APP__LISTEN_MODE", "0600")];
    assert_eq!(load(UNIX_POOL, &env)?.pools["app"].listen_mode, 0o600);
    let env = [("SUTURE__POOLS__APP__LISTEN", "unix:/tmp/mysql.sock")];
    let pool = &load(UNIX_POOL, &env)?.pools["app"];
    assert_eq!(pool.listen.to_string(), "unix:/tmp/mysql.sock");
    Ok(())
}

#[test]
fn bad_listen_values_and_modes_are_named() {
    let list = problems(&UNIX_POOL.replace("unix:/run/suture/", "unix:run/"));
    assert!(
        has(&list, "pools.app.listen", "must be absolute"),
        "{list:?}"
    );
    let list = problems(&UNIX_POOL.replace(".s.PGSQL.6432", ""));
    assert!(
        has(&list, "pools.app.listen", "names a directory"),
        "{list:?}"
    );
    let list = problems(&UNIX_POOL.replace("servers =", "listen_mode = \"rw\"\nservers ="));
    assert!(
        has(&list, "pools.app.listen_mode", "not a file mode"),
        "{list:?}"
    );
    let list = problems(&UNIX_POOL.replace("servers =", "listen_mode = \"1777\"\nservers ="));
    assert!(has(&list, "pools.app.listen_mode", "0777"), "{list:?}");
}

#[test]
fn listen_mode_on_a_tcp_listener_is_refused() {
    let tcp = UNIX_POOL
        .replace("unix:/run/suture/.s.PGSQL.6432", "127.0.0.1:6432")
        .replace("servers =", "listen_mode = \"0660\"\nservers =");
    let list = problems(&tcp);
    assert!(
        has(&list, "pools.app.listen_mode", "only applies to a unix:"),
        "{list:?}"
    );
    // A listen value that does not parse is reported once, without a second problem.
    let bad = tcp.replace("127.0.0.1:6432", "nowhere");
    let list = problems(&bad);
    assert!(
        has(&list, "pools.app.listen", "not an IP address"),
        "{list:?}"
    );
    assert!(!has(&list, "pools.app.listen_mode", ""), "{list:?}");
}

#[test]
fn trust_is_allowed_on_a_unix_listener() -> Result<(), ConfigError> {
    let trust = UNIX_POOL.replace("servers =", "client_auth = \"trust\"\nservers =");
    assert_eq!(
        load(&trust, &[])?.pools["app"].client_auth,
        ClientAuthMethod::Trust
    );
    let public = trust.replace("unix:/run/suture/.s.PGSQL.6432", "0.0.0.0:6432");
    let list = problems(&public);
    assert!(
        has(&list, "pools.app.client_auth", "loopback or unix:"),
        "{list:?}"
    );
    Ok(())
}

#[test]
fn two_pools_on_one_socket_path() {
    let text = format!(
        "{UNIX_POOL}\n[pools.b]\nprotocol = \"mysql\"\nlisten = \"unix:/run/suture/.s.PGSQL.6432\"\nservers = [\"db:3306\"]\n[pools.b.users.u]\npassword = \"p\"\n"
    );
    let list = problems(&text);
    assert!(has(&list, "pools.b.listen", "pools.app.listen"), "{list:?}");
}
