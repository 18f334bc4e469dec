//! The process's open-file limit (`RLIMIT_NOFILE`): raised at start from the soft limit to the
//! hard one, when allowed, since every client and every backend connection is a descriptor and
//! the usual soft limit (1,024) is far below what a pool of thousands of clients needs; and
//! checked against what the configured pools could hold at once.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::Config;

/// Descriptors besides client and backend sockets: listeners, the admin port, log files, DNS
/// lookups, the runtime's own (epoll, eventfd), TLS files being read.
const RESERVED: u64 = 64;

/// Linux's default `fs.nr_open`: the most a soft limit can be raised to when the hard limit is
/// "unlimited" (setting the soft limit to infinity is refused).
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// What happened to the limit at start.
#[derive(Debug)]
pub struct FdLimit {
    /// The soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit in effect now.
    pub now: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
    /// Why raising failed, when it was tried and did.
    pub raise_error: Option<std::io::Error>,
}

/// The soft limit to ask for, given the current limits: the hard limit, when the soft one is
/// below it; `None` when there is nothing to raise.
fn target(current: &Rlimit) -> Option<u64> {
    let soft = current.current?;
    let ceiling = current.maximum.unwrap_or(NR_OPEN_DEFAULT);
    (soft < ceiling).then_some(ceiling)
}

/// Raises the soft open-file limit as far as the hard limit allows.
pub fn raise() -> FdLimit {
    let found = getrlimit(Resource::Nofile);
    let mut raise_error = None;
    if let Some(wanted) = target(&found) {
        let new = Rlimit {
            current: Some(wanted),
            maximum: found.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, new) {
            raise_error = Some(err.into());
        }
    }
    let now = getrlimit(Resource::Nofile);
    FdLimit {
        before: found.current,
        now: now.current,
        hard: now.maximum,
        raise_error,
    }
}

/// Roughly the most descriptors the configured pools could hold at once: every pool's client
/// cap and backend cap, plus a reserve for everything else.
pub fn needed(config: &Config) -> u64 {
    config
        .pools
        .values()
        .map(|pool| (pool.sizes.max_client_connections + pool.sizes.max_size) as u64)
        .fold(RESERVED, u64::saturating_add)
}

/// Logs the limit in effect, with a warning when it is below `needed`.
pub fn log(limit: &FdLimit, needed: u64) {
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    if let Some(err) = &limit.raise_error {
        tracing::warn!(soft = %show(limit.now), hard = %show(limit.hard), error = %err, "could not raise the open-file limit to its hard limit");
    }
    tracing::info!(
        open_files = %show(limit.now),
        raised_from = %show(limit.before),
        hard = %show(limit.hard),
        needed,
        "open-file limit"
    );
    if limit.now.is_some_and(|now| now < needed) {
        tracing::warn!(
            open_files = %show(limit.now),
            needed,
            "the open-file limit is below what the configured pools could need (every pool's max_client_connections + max_size, plus {RESERVED}); past it, accepting fails (EMFILE) and new clients wait in the listen queue; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, a container's nofile ulimit)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(current: Option<u64>, maximum: Option<u64>) -> Rlimit {
        Rlimit { current, maximum }
    }

    #[test]
    fn soft_limit_is_raised_to_the_hard_one() {
        assert_eq!(target(&limits(Some(1024), Some(524_288))), Some(524_288));
    }

    #[test]
    fn nothing_to_raise_at_the_hard_limit_or_when_unlimited() {
        assert_eq!(target(&limits(Some(4096), Some(4096))), None);
        assert_eq!(target(&limits(None, None)), None);
    }

    #[test]
    fn unlimited_hard_limit_raises_to_the_kernel_default_ceiling() {
        assert_eq!(target(&limits(Some(1024), None)), Some(NR_OPEN_DEFAULT));
        assert_eq!(target(&limits(Some(NR_OPEN_DEFAULT), None)), None);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let limit = raise();
        assert!(limit.now >= limit.before || limit.now.is_none());
    }
}
