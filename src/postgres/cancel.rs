//! Cancel routing. A client is given its backend's real process ID and a secret key of Suture's
//! own; the registry maps that pair to whichever backend serves the client now, so a
//! CancelRequest reaching Suture is forwarded there with that backend's own key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use suture_protocol::pg;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::postgres::wire;

/// Where a cancel for one client goes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CancelTarget {
    pub(crate) addr: SocketAddr,
    pub(crate) process_id: i32,
    pub(crate) secret_key: i32,
}

/// The (process ID, Suture's secret) pairs handed to clients, shared by all pools.
#[derive(Default)]
pub(crate) struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// A client's registration; removed from the registry when dropped.
pub(crate) struct CancelHandle {
    registry: Arc<CancelRegistry>,
    key: (i32, i32),
}

impl CancelRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client that was told `process_id`; returns its handle (which holds the secret
    /// key to give the client).
    pub(crate) fn register(
        self: &Arc<Self>,
        process_id: i32,
        target: CancelTarget,
    ) -> CancelHandle {
        let mut map = self.map();
        let mut rng = rand::rng();
        loop {
            let key = (process_id, rng.random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
                slot.insert(target);
                return CancelHandle {
                    registry: Arc::clone(self),
                    key,
                };
            }
        }
    }

    /// The backend a cancel with this pair should reach.
    pub(crate) fn lookup(&self, process_id: i32, secret_key: i32) -> Option<CancelTarget> {
        self.map().get(&(process_id, secret_key)).copied()
    }
}

impl CancelHandle {
    /// The secret key the client was given.
    pub(crate) fn secret_key(&self) -> i32 {
        self.key.1
    }

    /// Points the client's cancels at a new backend (after a heal or rotation).
    pub(crate) fn retarget(&self, target: CancelTarget) {
        self.registry.map().insert(self.key, target);
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.map().remove(&self.key);
    }
}

/// Sends a CancelRequest to the backend and waits (bounded) for it to close the connection,
/// which it does once the cancel has been handed to the target process.
pub(crate) async fn forward(target: CancelTarget, limit: Duration) -> Result<(), wire::WireError> {
    let send = async {
        let mut stream = TcpStream::connect(target.addr).await?;
        let mut out = BytesMut::new();
        pg::encode_cancel_request(target.process_id, target.secret_key, &mut out);
        wire::write_all(&mut stream, &out, limit).await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok(())
    };
    tokio::time::timeout(limit, send)
        .await
        .unwrap_or(Err(wire::WireError::Timeout(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(pid: i32) -> CancelTarget {
        CancelTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], 5432)),
            process_id: pid,
            secret_key: 7,
        }
    }

    #[test]
    fn registered_pair_routes_until_dropped() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register(42, target(42));
        assert_eq!(registry.lookup(42, handle.secret_key()), Some(target(42)));
        assert_eq!(
            registry.lookup(42, handle.secret_key().wrapping_add(1)),
            None
        );
        handle.retarget(target(99));
        assert_eq!(registry.lookup(42, handle.secret_key()), Some(target(99)));
        let secret = handle.secret_key();
        drop(handle);
        assert_eq!(registry.lookup(42, secret), None);
    }

    #[test]
    fn same_process_id_gets_distinct_secrets() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register(1, target(1));
        let b = registry.register(1, target(1));
        assert_ne!(a.secret_key(), b.secret_key());
    }
}
