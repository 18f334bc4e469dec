//! Suture: a sidecar proxy that heals broken database connections.
