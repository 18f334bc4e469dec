//! Cancel routing. A client is given its backend's real process ID and a secret key of Suture's
//! own; the registry maps that pair to whichever backend serves the client now, so a
//! CancelRequest reaching Suture is forwarded there with that backend's own key.
//!
//! A cancel must never reach a statement of another client. So a session retires its key
//! before its backend is reset and handed on, and the retirement waits for the cancels of that
//! client still on their way to the server (each forward holds a guard until the server has
//! taken it), as PgBouncer 1.18 does. Cancels arriving after that find no key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

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

/// Cancels of one client that are on their way to the server.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    done: Notify,
}

/// One registered client: where its cancels go, and those in flight.
struct Entry {
    target: CancelTarget,
    in_flight: Arc<InFlight>,
}

/// The (process ID, Suture's secret) pairs handed to clients, shared by all pools.
#[derive(Default)]
pub(crate) struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Entry>>,
}

/// A client's registration; removed from the registry by [`CancelHandle::retire`] or when
/// dropped.
pub(crate) struct CancelHandle {
    registry: Arc<CancelRegistry>,
    key: (i32, i32),
    in_flight: Arc<InFlight>,
}

/// A cancel on its way to the server; the client's key cannot retire before it is dropped.
pub(crate) struct CancelGuard {
    in_flight: Arc<InFlight>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.done.notify_waiters();
        }
    }
}

impl CancelRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<(i32, i32), Entry>> {
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
        let in_flight = Arc::new(InFlight::default());
        loop {
            let key = (process_id, rng.random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
                slot.insert(Entry {
                    target,
                    in_flight: Arc::clone(&in_flight),
                });
                return CancelHandle {
                    registry: Arc::clone(self),
                    key,
                    in_flight,
                };
            }
        }
    }

    /// The backend a cancel with this pair should reach, with a guard to hold until the
    /// cancel was handed to the server.
    pub(crate) fn lookup(
        &self,
        process_id: i32,
        secret_key: i32,
    ) -> Option<(CancelTarget, CancelGuard)> {
        let map = self.map();
        let entry = map.get(&(process_id, secret_key))?;
        entry.in_flight.count.fetch_add(1, Ordering::AcqRel);
        Some((
            entry.target,
            CancelGuard {
                in_flight: Arc::clone(&entry.in_flight),
            },
        ))
    }
}

impl CancelHandle {
    /// The secret key the client was given.
    pub(crate) fn secret_key(&self) -> i32 {
        self.key.1
    }

    /// Points the client's cancels at a new backend (after a heal or rotation).
    pub(crate) fn retarget(&self, target: CancelTarget) {
        if let Some(entry) = self.registry.map().get_mut(&self.key) {
            entry.target = target;
        }
    }

    /// Takes the client's key out of the registry, then waits (at most `limit`) until none of
    /// its cancels is still on the way to the server. Returns false if some still were when
    /// the limit passed (the backend should then not be handed to anyone else).
    pub(crate) async fn retire(&self, limit: Duration) -> bool {
        self.registry.map().remove(&self.key);
        let settled = async {
            loop {
                let notified = self.in_flight.done.notified();
                if self.in_flight.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, settled).await.is_ok()
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        // Only this handle's own entry (a retired key may not be reused, but be exact).
        if map
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(&e.in_flight, &self.in_flight))
        {
            map.remove(&self.key);
        }
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
        let found = |secret| registry.lookup(42, secret).map(|(t, _)| t);
        assert_eq!(found(handle.secret_key()), Some(target(42)));
        assert_eq!(found(handle.secret_key().wrapping_add(1)), None);
        handle.retarget(target(99));
        assert_eq!(found(handle.secret_key()), Some(target(99)));
        let secret = handle.secret_key();
        drop(handle);
        assert_eq!(found(secret), None);
    }

    #[tokio::test]
    async fn retiring_waits_for_cancels_in_flight() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register(7, target(7));
        let (_, guard) = registry.lookup(7, handle.secret_key()).expect("registered");
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
        };
        let started = std::time::Instant::now();
        let (retired, ()) = tokio::join!(handle.retire(Duration::from_secs(5)), release);
        assert!(retired);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            registry.lookup(7, handle.secret_key()).is_none(),
            "no new cancels after retiring"
        );
        // With nothing in flight it returns at once; a stuck cancel is bounded.
        let other = registry.register(8, target(8));
        let (_, stuck) = registry.lookup(8, other.secret_key()).expect("registered");
        assert!(!other.retire(Duration::from_millis(20)).await);
        drop(stuck);
    }

    #[test]
    fn same_process_id_gets_distinct_secrets() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register(1, target(1));
        let b = registry.register(1, target(1));
        assert_ne!(a.secret_key(), b.secret_key());
    }
}
