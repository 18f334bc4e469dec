//! A Flush-ended extended batch that begins, commits or fails to commit a
//! transaction block, answered, and its backend lost before the client's
//! Sync. What the client is owed at that Sync follows from what the answered
//! statements did to the block, not from the state before the batch: after a
//! COMMIT the block is over (committed, or rolled back when the COMMIT failed)
//! and a live server ends the batch with an idle ReadyForQuery; after a BEGIN
//! the client is inside a block, which is then lost and must be told so.
//! Each test checks a live server's answer first, then Suture's after the
//! loss, the rows left, and that the session goes on.

mod support;

use anyhow::{ensure, Context as _};
use bytes::BytesMut;
use std::time::Duration;
use support::raw_client::{ext, BackendMsg};
use support::replies::{
    raw_app, ready_status, rollback_ends_the_block, run_all, select_7_works, sqlstates, tags,
};
use support::rig::{within, Rig, STEP};
use support::RawClient;

/// Time for Suture to notice the lost backend before the client's Sync.
const SETTLE: Duration = Duration::from_millis(500);

/// Sends `sql` as Parse, Bind, Execute, Flush and reads its answer, up to the
/// Execute's CommandComplete or an error.
async fn flushed(raw: &mut RawClient, sql: &str) -> anyhow::Result<Vec<BackendMsg>> {
    let mut batch = BytesMut::new();
    ext::parse("", sql, &mut batch)?;
    ext::bind("", &mut batch)?;
    ext::execute(&mut batch)?;
    ext::flush(&mut batch);
    raw.send(&batch).await?;
    raw.read_until_any(b"CE", STEP).await
}

async fn sync(raw: &mut RawClient) -> anyhow::Result<Vec<BackendMsg>> {
    let mut out = BytesMut::new();
    ext::sync(&mut out);
    raw.send(&out).await?;
    raw.read_until_ready(STEP).await
}

/// The Flush batch's answer, then the Sync's.
type Answers = (Vec<BackendMsg>, Vec<BackendMsg>);

/// What a live server answers to `opening` as simple queries, `sql` behind a
/// Flush, then a Sync.
async fn live(rig: &Rig, opening: &[&str], sql: &str) -> anyhow::Result<Answers> {
    let mut direct = raw_app(rig.pg.port()).await?;
    run_all(&mut direct, opening).await?;
    Ok((flushed(&mut direct, sql).await?, sync(&mut direct).await?))
}

/// The same through Suture, its backend reset by the relay once the Flush
/// batch was answered.
async fn lost_after_flush(
    rig: &Rig,
    raw: &mut RawClient,
    opening: &[&str],
    sql: &str,
) -> anyhow::Result<Answers> {
    run_all(raw, opening).await?;
    let answered = flushed(raw, sql).await?;
    rig.relay.rst_all().await?;
    tokio::time::sleep(SETTLE).await;
    let at_sync = sync(raw).await.context("the Sync after the lost backend")?;
    Ok((answered, at_sync))
}

/// Inside a block, COMMIT behind a Flush, answered: the block committed, so
/// the Sync after the loss gets the idle ReadyForQuery a live server sends,
/// no error, and the rows are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_behind_a_flush_then_lost_is_committed() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE fc_t (x int); GRANT ALL ON fc_t TO app")).await??;
        let opening = ["BEGIN", "INSERT INTO fc_t VALUES (1)"];
        let (live, live_sync) = live(&rig, &opening, "COMMIT").await?;
        ensure!(
            tags(&live) == "12C"
                && tags(&live_sync) == "Z"
                && ready_status(&live_sync) == Some('I'),
            "a live server answers {} then {}",
            tags(&live),
            tags(&live_sync)
        );
        within(su.batch_execute("TRUNCATE fc_t")).await??;
        let mut raw = raw_app(rig.suture.port()).await?;
        let (got, got_sync) = lost_after_flush(&rig, &mut raw, &opening, "COMMIT").await?;
        ensure!(
            tags(&got) == tags(&live),
            "COMMIT behind a Flush: {}",
            tags(&got)
        );
        ensure!(
            tags(&got_sync) == "Z" && ready_status(&got_sync) == Some('I'),
            "the COMMIT was answered, yet the Sync after the loss got {} {:?} status {:?}",
            tags(&got_sync),
            sqlstates(&got_sync),
            ready_status(&got_sync)
        );
        let rows = rig.count("SELECT count(*) FROM fc_t").await?;
        ensure!(rows == 1, "the committed row is there {rows} times");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// Inside a block, a COMMIT behind a Flush that fails (a deferred foreign
/// key): PostgreSQL rolls the block back and leaves it, then skips to the
/// Sync, which a live server answers with an idle ReadyForQuery. After the
/// loss the client must get the same, not a second error or a failed block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_behind_a_flush_then_lost_leaves_the_block() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute(
            "CREATE TABLE ffk_parent (id int PRIMARY KEY); \
             CREATE TABLE ffk_child (p int REFERENCES ffk_parent DEFERRABLE INITIALLY DEFERRED); \
             GRANT ALL ON ffk_parent, ffk_child TO app",
        ))
        .await??;
        let opening = ["BEGIN", "INSERT INTO ffk_child VALUES (1)"];
        let (live, live_sync) = live(&rig, &opening, "COMMIT").await?;
        ensure!(
            sqlstates(&live) == ["23503"]
                && tags(&live_sync) == "Z"
                && ready_status(&live_sync) == Some('I'),
            "a live server answers {} {:?} then {}",
            tags(&live),
            sqlstates(&live),
            tags(&live_sync)
        );
        let mut raw = raw_app(rig.suture.port()).await?;
        let (got, got_sync) = lost_after_flush(&rig, &mut raw, &opening, "COMMIT").await?;
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got) == ["23503"],
            "failed COMMIT behind a Flush: {} {:?}",
            tags(&got),
            sqlstates(&got)
        );
        ensure!(
            tags(&got_sync) == "Z" && ready_status(&got_sync) == Some('I'),
            "the failed COMMIT left the block, yet the Sync after the loss got {} {:?} status {:?}",
            tags(&got_sync),
            sqlstates(&got_sync),
            ready_status(&got_sync)
        );
        let rows = rig.count("SELECT count(*) FROM ffk_child").await?;
        ensure!(rows == 0, "the failed COMMIT left {rows} rows");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// BEGIN behind a Flush, answered: the client is inside a block, which is
/// lost with the backend. A live server's Sync says `T`; after the loss the
/// Sync is told the transaction is gone (08006) and the status is a failed
/// block `E`, as for any lost block, so the client rolls back instead of
/// going on as if it were outside one. ROLLBACK then ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_behind_a_flush_then_lost_is_a_lost_block() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let (live, live_sync) = live(&rig, &[], "BEGIN").await?;
        ensure!(
            tags(&live) == "12C" && ready_status(&live_sync) == Some('T'),
            "a live server answers {} then {}",
            tags(&live),
            tags(&live_sync)
        );
        let mut raw = raw_app(rig.suture.port()).await?;
        let (got, got_sync) = lost_after_flush(&rig, &mut raw, &[], "BEGIN").await?;
        ensure!(tags(&got) == "12C", "BEGIN behind a Flush: {}", tags(&got));
        ensure!(
            sqlstates(&got_sync) == ["08006"] && ready_status(&got_sync) == Some('E'),
            "the block BEGIN opened was lost, yet the Sync got {} {:?} status {:?}",
            tags(&got_sync),
            sqlstates(&got_sync),
            ready_status(&got_sync)
        );
        rollback_ends_the_block(&mut raw).await?;
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// Inside a block, COMMIT AND CHAIN behind a Flush, answered: the block
/// committed and a new one began, which is lost with the backend. The Sync
/// must be told (08006, failed-block status), not given `I`, and the first
/// block's row stays committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_chain_behind_a_flush_then_lost_is_a_lost_block() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE fch_t (x int); GRANT ALL ON fch_t TO app")).await??;
        let opening = ["BEGIN", "INSERT INTO fch_t VALUES (1)"];
        let (live, live_sync) = live(&rig, &opening, "COMMIT AND CHAIN").await?;
        ensure!(
            tags(&live) == "12C" && ready_status(&live_sync) == Some('T'),
            "a live server answers {} then {}",
            tags(&live),
            tags(&live_sync)
        );
        within(su.batch_execute("TRUNCATE fch_t")).await??;
        let mut raw = raw_app(rig.suture.port()).await?;
        let (got, got_sync) =
            lost_after_flush(&rig, &mut raw, &opening, "COMMIT AND CHAIN").await?;
        ensure!(
            tags(&got) == "12C",
            "COMMIT AND CHAIN behind a Flush: {}",
            tags(&got)
        );
        ensure!(
            sqlstates(&got_sync) == ["08006"] && ready_status(&got_sync) == Some('E'),
            "the block COMMIT AND CHAIN began was lost, yet the Sync got {} {:?} status {:?}",
            tags(&got_sync),
            sqlstates(&got_sync),
            ready_status(&got_sync)
        );
        rollback_ends_the_block(&mut raw).await?;
        let rows = rig.count("SELECT count(*) FROM fch_t").await?;
        ensure!(rows == 1, "the committed row is there {rows} times");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}
