//! SIGHUP (DESIGN §7): the file is read again and, when it is valid, users, passwords and pool
//! settings take effect for new logins, new backend connections and new sessions, without
//! dropping a session. Keys that cannot change while running (listen addresses, protocols,
//! the set of pools, the admin port, threads, logging) are reported and keep their old value.
//! A file with problems is rejected, each problem named by its key, and the old configuration
//! stays. Every reload is counted in `suture_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::{Config, PoolConfig, ShutdownConfig};
use crate::served::ServedPool;

/// Reloads the configuration on request.
pub(crate) struct Reloader {
    config: Config,
    served: Vec<Arc<ServedPool>>,
    path: PathBuf,
    shutdown: Arc<RwLock<ShutdownConfig>>,
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        served: Vec<Arc<ServedPool>>,
        path: PathBuf,
        shutdown: Arc<RwLock<ShutdownConfig>>,
    ) -> Reloader {
        Reloader {
            config,
            served,
            path,
            shutdown,
        }
    }

    /// Reads the file again and applies what can change live.
    pub(crate) async fn reload(&mut self) {
        let path = self.path.clone();
        // Reading the file, resolving password files and deriving SCRAM secrets block: off
        // the event loop.
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
        let new = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(err)) => {
                for problem in err.problems() {
                    tracing::error!(key = %problem.key, problem = %problem.message, "configuration reload rejected; the old configuration stays");
                }
                if err.problems().is_empty() {
                    tracing::error!(error = %crate::config::error_chain(&err), "configuration reload rejected; the old configuration stays");
                }
                return rejected();
            }
            Err(err) => {
                tracing::error!(error = %err, "configuration reload failed");
                return rejected();
            }
        };
        for kept in kept_keys(&self.config, &new) {
            tracing::warn!(key = %kept, "cannot change while running; the old value stays until a restart");
        }
        // Prepare every pool first, so that one bad pool leaves all of them as they were.
        let mut prepared = Vec::new();
        for served in &self.served {
            let svc = served.current();
            let Some(fresh) = new.pools.get(&svc.config().name) else {
                continue;
            };
            let fresh = keep_fixed(svc.config(), fresh.clone());
            let name = svc.config().name.clone();
            let job = {
                let svc = svc.clone();
                tokio::task::spawn_blocking(move || svc.prepare_reload(fresh))
            };
            match job.await {
                Ok(Ok(reloaded)) => prepared.push((Arc::clone(served), svc, reloaded)),
                Ok(Err(err)) => {
                    tracing::error!(key = %format!("pools.{name}.tls"), problem = %err, "configuration reload rejected; the old configuration stays");
                    return rejected();
                }
                Err(err) => {
                    tracing::error!(error = %err, "configuration reload failed");
                    return rejected();
                }
            }
        }
        let mut summary = Vec::new();
        for (served, svc, reloaded) in prepared {
            let fresh = svc.commit_reload(reloaded);
            summary.push(describe_changes(svc.config(), fresh.config()));
            served.replace(fresh);
        }
        *self.shutdown.write().unwrap_or_else(|p| p.into_inner()) = new.shutdown;
        let mut kept = self.config.clone();
        kept.shutdown = new.shutdown;
        for served in &self.served {
            let svc = served.current();
            kept.pools
                .insert(svc.config().name.clone(), svc.config().clone());
        }
        self.config = kept;
        metrics::counter!("suture_config_reloads_total", "result" => "ok").increment(1);
        tracing::info!(changes = %summary.join("; "), "configuration reloaded");
    }
}

fn rejected() {
    metrics::counter!("suture_config_reloads_total", "result" => "rejected").increment(1);
}

/// The keys of `new` that differ from `old` but cannot change while running.
fn kept_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut kept = Vec::new();
    if old.admin != new.admin {
        kept.push("admin".to_owned());
    }
    if old.log != new.log {
        kept.push("log".to_owned());
    }
    if old.runtime != new.runtime {
        kept.push("runtime.worker_threads".to_owned());
    }
    for name in new.pools.keys().filter(|n| !old.pools.contains_key(*n)) {
        kept.push(format!("pools.{name} (a new pool needs a restart)"));
    }
    for name in old.pools.keys().filter(|n| !new.pools.contains_key(*n)) {
        kept.push(format!("pools.{name} (removing a pool needs a restart)"));
    }
    for (name, old_pool) in &old.pools {
        let Some(new_pool) = new.pools.get(name) else {
            continue;
        };
        if old_pool.listen != new_pool.listen {
            kept.push(format!("pools.{name}.listen"));
        }
        if old_pool.listen_mode != new_pool.listen_mode {
            kept.push(format!("pools.{name}.listen_mode"));
        }
        if old_pool.protocol != new_pool.protocol {
            kept.push(format!("pools.{name}.protocol"));
        }
        if old_pool.sizes.max_client_connections != new_pool.sizes.max_client_connections {
            kept.push(format!("pools.{name}.max_client_connections"));
        }
    }
    kept
}

/// `new` with the keys that cannot change live put back to their running values.
fn keep_fixed(old: &PoolConfig, mut new: PoolConfig) -> PoolConfig {
    new.listen = old.listen.clone();
    new.listen_mode = old.listen_mode;
    new.protocol = old.protocol;
    new.sizes.max_client_connections = old.sizes.max_client_connections;
    new
}

/// What a reload changed in one pool, for the log (user names, never passwords).
fn describe_changes(old: &PoolConfig, new: &PoolConfig) -> String {
    let mut parts = Vec::new();
    let added: Vec<&str> = new
        .users
        .keys()
        .filter(|u| !old.users.contains_key(*u))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .users
        .keys()
        .filter(|u| !new.users.contains_key(*u))
        .map(String::as_str)
        .collect();
    let password: Vec<&str> = new
        .users
        .iter()
        .filter(|(u, user)| {
            old.users
                .get(*u)
                .is_some_and(|o| o.password != user.password)
        })
        .map(|(u, _)| u.as_str())
        .collect();
    for (what, list) in [
        ("users added", added),
        ("users removed", removed),
        ("passwords changed", password),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}: {}", list.join(",")));
        }
    }
    if old.sizes != new.sizes {
        parts.push("sizes".to_owned());
    }
    if old.timeouts != new.timeouts {
        parts.push("timeouts".to_owned());
    }
    if old.servers != new.servers {
        parts.push("servers".to_owned());
    }
    if old.tls != new.tls || old.client_auth != new.client_auth || old.role != new.role {
        parts.push("tls/client_auth/role".to_owned());
    }
    if old.database != new.database || old.limits != new.limits {
        parts.push("database/limits".to_owned());
    }
    if parts.is_empty() {
        format!("pools.{}: unchanged", new.name)
    } else {
        format!("pools.{}: {}", new.name, parts.join(", "))
    }
}
