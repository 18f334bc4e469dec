//! Asynchronous DNS with a deadline on every lookup (field report F5).
//!
//! `tokio::net::lookup_host` runs getaddrinfo on the blocking pool, where a timeout around it leaves
//! the thread stuck; hickory's resolver talks to the name servers itself on the runtime. It reads
//! /etc/resolv.conf and /etc/hosts once, when the [`Resolver`] is built.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};

/// Answers are cached no longer than this, whatever their TTL, so a failover that moves a name is
/// seen within a minute.
const MAX_POSITIVE_TTL: Duration = Duration::from_secs(60);
/// "No such name" is cached briefly: a name that is being created should not stay missing.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Floor for the per-query timeout given to hickory.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("resolving {host} timed out after {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("{host} has no address")]
    NoAddresses {
        host: String,
        #[source]
        source: Option<ResolveError>,
    },
    #[error("resolving {host} failed")]
    Lookup {
        host: String,
        #[source]
        source: ResolveError,
    },
}

/// A shared asynchronous resolver; cloning is cheap (the cache is shared).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds a resolver from the system configuration (/etc/resolv.conf, /etc/hosts), or from
    /// hickory's default configuration when that cannot be read.
    ///
    /// `lookup_timeout` should be the shortest `dns_timeout` the resolver will be used with: each
    /// query to a name server gets half of it and is retried once, so both tries fit.
    pub fn new(lookup_timeout: Duration) -> Resolver {
        let provider = TokioConnectionProvider::default();
        let mut builder = match TokioResolver::builder(provider.clone()) {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the system DNS configuration; using defaults");
                TokioResolver::builder_with_config(ResolverConfig::default(), provider)
            }
        };
        tune(builder.options_mut(), lookup_timeout);
        Resolver {
            inner: Arc::new(builder.build()),
        }
    }

    /// A resolver with explicit settings (tests point it at unreachable name servers).
    #[cfg(test)]
    fn with_config(
        config: ResolverConfig,
        mut opts: ResolverOpts,
        lookup_timeout: Duration,
    ) -> Self {
        tune(&mut opts, lookup_timeout);
        let builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts);
        Resolver {
            inner: Arc::new(builder.build()),
        }
    }

    /// Resolves `host` to socket addresses with `port`, all of it bounded by `timeout`.
    ///
    /// IP literals (`10.0.0.1`, `::1`, `[::1]`) are returned at once without a lookup. Cancel safe.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = match tokio::time::timeout(timeout, self.inner.lookup_ip(host)).await {
            Err(_elapsed) => {
                return Err(DnsError::Timeout {
                    host: host.to_owned(),
                    timeout,
                })
            }
            Ok(Err(source)) if source.is_no_records_found() => {
                return Err(DnsError::NoAddresses {
                    host: host.to_owned(),
                    source: Some(source),
                })
            }
            Ok(Err(source)) => {
                return Err(DnsError::Lookup {
                    host: host.to_owned(),
                    source,
                })
            }
            Ok(Ok(lookup)) => lookup,
        };
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(DnsError::NoAddresses {
                host: host.to_owned(),
                source: None,
            });
        }
        Ok(addrs)
    }
}

fn tune(opts: &mut ResolverOpts, lookup_timeout: Duration) {
    opts.timeout = (lookup_timeout / 2).max(MIN_QUERY_TIMEOUT);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Always;
    opts.positive_max_ttl = Some(MAX_POSITIVE_TTL);
    opts.negative_max_ttl = Some(MAX_NEGATIVE_TTL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::NameServerConfigGroup;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Instant;

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn ip_literals_need_no_lookup() -> Result<(), DnsError> {
        let r = Resolver::new(T);
        let v4 = r.resolve("10.1.2.3", 5432, T).await?;
        assert_eq!(
            v4,
            vec![SocketAddr::from((Ipv4Addr::new(10, 1, 2, 3), 5432))]
        );
        let v6 = r.resolve("::1", 6432, T).await?;
        assert_eq!(v6, vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 6432))]);
        let bracketed = r.resolve("[::1]", 6432, T).await?;
        assert_eq!(bracketed, v6);
        Ok(())
    }

    #[tokio::test]
    async fn literals_work_with_a_zero_timeout() -> Result<(), DnsError> {
        let r = Resolver::new(T);
        let addrs = r.resolve("127.0.0.1", 1, Duration::ZERO).await?;
        assert_eq!(addrs.len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn localhost_resolves() -> Result<(), DnsError> {
        let r = Resolver::new(T);
        let addrs = r.resolve("localhost", 5432, T).await?;
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 5432),
            "{addrs:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn lookup_is_bounded_by_the_timeout() {
        // 192.0.2.1 (TEST-NET-1) never answers: the lookup must give up on our deadline.
        let servers =
            NameServerConfigGroup::from_ips_clear(&[IpAddr::from([192, 0, 2, 1])], 53, true);
        let config = ResolverConfig::from_parts(None, vec![], servers);
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        let r = Resolver::with_config(config, opts, Duration::from_secs(10));
        let start = Instant::now();
        let result = r
            .resolve("db.suture-test.example", 5432, Duration::from_millis(200))
            .await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "took {:?}",
            start.elapsed()
        );
        assert!(result.is_err(), "{result:?}");
    }
}
