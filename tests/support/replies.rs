//! What the exact-wire PostgreSQL tests read off a reply: its message tags, the
//! SQLSTATEs of its errors and the status of its ReadyForQuery; and the few
//! raw-client steps those tests share (log in as `app`, run simple queries,
//! end a lost block, check the session still answers).

use anyhow::ensure;

use super::raw_client::{error_fields, BackendMsg, RawClient};
use super::rig::STEP;

/// A raw client logged in as `app` on `port` (Suture's or the server's).
pub(crate) async fn raw_app(port: u16) -> anyhow::Result<RawClient> {
    let mut raw = RawClient::connect(port).await?;
    raw.login("app", "app-secret", "app").await?;
    Ok(raw)
}

/// The messages' tags as a string, e.g. "TDCZ".
pub(crate) fn tags(msgs: &[BackendMsg]) -> String {
    msgs.iter().map(|m| char::from(m.tag)).collect()
}

/// The SQLSTATE of each ErrorResponse among `msgs`, in order.
pub(crate) fn sqlstates(msgs: &[BackendMsg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .filter_map(|m| {
            error_fields(&m.body)
                .into_iter()
                .find(|(c, _)| *c == b'C')
                .map(|(_, v)| v)
        })
        .collect()
}

/// The transaction status of the ReadyForQuery that ends `msgs`, if one does.
pub(crate) fn ready_status(msgs: &[BackendMsg]) -> Option<char> {
    msgs.last()
        .filter(|m| m.tag == b'Z')
        .and_then(|m| m.body.first())
        .map(|&b| char::from(b))
}

/// Runs each of `sqls` as a simple query, waiting for its ReadyForQuery.
pub(crate) async fn run_all(raw: &mut RawClient, sqls: &[&str]) -> anyhow::Result<()> {
    for sql in sqls {
        raw.send_query(sql).await?;
        raw.read_until_ready(STEP).await?;
    }
    Ok(())
}

/// The session answers `SELECT 7` with its row, outside a transaction.
pub(crate) async fn select_7_works(raw: &mut RawClient) -> anyhow::Result<()> {
    raw.send_query("SELECT 7::int4").await?;
    let next = raw.read_until_ready(STEP).await?;
    ensure!(
        tags(&next) == "TDCZ" && ready_status(&next) == Some('I'),
        "the session after the loss answered {}",
        tags(&next)
    );
    Ok(())
}

/// ROLLBACK ends the lost block the client is in: answered as done, idle.
pub(crate) async fn rollback_ends_the_block(raw: &mut RawClient) -> anyhow::Result<()> {
    raw.send_query("ROLLBACK").await?;
    let rollback = raw.read_until_ready(STEP).await?;
    ensure!(
        tags(&rollback) == "CZ" && ready_status(&rollback) == Some('I'),
        "ROLLBACK of the lost block: {}",
        tags(&rollback)
    );
    Ok(())
}
