//! Operations: the metric series, health (watchdog, startup, readiness), each pool's
//! operational state for `/status`, and stop requests. The admin port (`crate::admin`) serves
//! what these keep; the data path writes to them only at rare events.

pub mod health;
pub mod histograms;
pub mod lifecycle;
pub mod pool_state;
pub mod series;
