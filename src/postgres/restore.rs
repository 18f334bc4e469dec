//! Rebuilding a session's state on a new backend after a heal (DESIGN §4): the client's `SET`s
//! and `LISTEN`s are run again as one simple query, and its named prepared statements are
//! prepared again from the client's own Parse messages, each with its own Sync. Eager rather
//! than lazy: a heal is rare and the statements are few; the client's next Bind then just works.

use std::time::Duration;

use bytes::BytesMut;
use suture_protocol::pg::{self, TxStatus};
use tokio::io::AsyncWriteExt;

use crate::postgres::backend::{keep_message, BackendConn, RunError};
use crate::postgres::session_state::SessionState;
use crate::postgres::wire::{self, WireError};

/// The Sync message.
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// Runs the state's restore statements and re-prepares its statements on `conn`, under `limit`.
pub(crate) async fn restore(
    conn: &mut BackendConn,
    state: &SessionState,
    limit: Duration,
    max_message_size: usize,
) -> Result<(), RunError> {
    if let Some(sql) = state.restore_sql() {
        conn.run_internal(&sql, limit, max_message_size).await?;
    }
    let mut out = BytesMut::new();
    let mut count = 0;
    for parse in state.parse_messages() {
        out.extend_from_slice(parse);
        out.extend_from_slice(&SYNC);
        count += 1;
    }
    if count == 0 {
        return Ok(());
    }
    let run = reprepare(conn, &out, count, max_message_size);
    let result = tokio::time::timeout(limit, run)
        .await
        .unwrap_or(Err(RunError::Wire(WireError::Timeout(limit))));
    if result.is_err() {
        conn.broken = true;
    }
    result
}

async fn reprepare(
    conn: &mut BackendConn,
    batch: &[u8],
    count: usize,
    max: usize,
) -> Result<(), RunError> {
    conn.writer.write_all(batch).await.map_err(WireError::Io)?;
    conn.writer.flush().await.map_err(WireError::Io)?;
    let mut error = None;
    let mut ready = 0;
    let mut notifications = BytesMut::new();
    while ready < count {
        let message = wire::read_message(&mut conn.reader, &mut conn.rbuf, max).await?;
        match message.tag {
            b'A' => keep_message(&mut notifications, &message)?,
            b'E' => error = Some(pg::parse_error_fields(&message.body).map_err(WireError::from)?),
            b'Z' => {
                ready += 1;
                if pg::parse_ready_for_query(&message.body).map_err(WireError::from)?
                    != TxStatus::Idle
                {
                    return Err(RunError::NotIdle);
                }
            }
            _ => {}
        }
    }
    conn.requeue(notifications);
    match error {
        Some(fields) => Err(RunError::Server(fields)),
        None => Ok(()),
    }
}
