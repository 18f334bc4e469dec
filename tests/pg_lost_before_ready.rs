//! A Sync-ended extended batch whose backend is lost when everything but its
//! ReadyForQuery (and the CloseCompletes of trailing Closes) had reached the
//! client. Found by the pipelined ledger (psycopg 3 in pipeline mode): a
//! BEGIN; INSERT; INSERT; COMMIT pipeline whose COMMIT was answered, backend
//! terminated before the Sync, was told "lost during COMMIT; outcome unknown"
//! by an ErrorResponse after the COMMIT's CommandComplete. The COMMIT had
//! committed, and an error in that place answers the Sync, which libpq's
//! pipeline mode cannot take ("cannot exit pipeline mode while busy").
//!
//! What the client is owed there is known whenever the transaction state the
//! ReadyForQuery would carry is known: after an answered COMMIT (idle), inside
//! a block (which is then lost: the next statement is told), or after an
//! error (the backend was skipping to the Sync). Each test cuts the reply
//! through the fault relay right before what is owed and checks that the
//! client gets exactly what a live server would have sent, then the truth.

mod support;

use anyhow::{ensure, Context as _};
use bytes::BytesMut;
use support::fault_relay::Direction;
use support::raw_client::{ext, BackendMsg};
use support::replies::{
    raw_app, ready_status, rollback_ends_the_block, run_all, select_7_works, sqlstates, tags,
};
use support::rig::{within, Rig, STEP};
use support::RawClient;

/// One Sync-ended batch of `sqls`, each as libpq 17 pipelines a PQsendQuery:
/// Parse, Bind, Describe portal, Execute, Close portal.
fn pipelined(sqls: &[&str]) -> anyhow::Result<BytesMut> {
    let mut batch = BytesMut::new();
    for sql in sqls {
        ext::parse("", sql, &mut batch)?;
        ext::bind("", &mut batch)?;
        ext::describe_portal(&mut batch)?;
        ext::execute(&mut batch)?;
        ext::close_portal(&mut batch)?;
    }
    ext::sync(&mut batch);
    Ok(batch)
}

fn wire_len(msgs: &[BackendMsg]) -> u64 {
    msgs.iter().map(|m| 5 + m.body.len() as u64).sum()
}

/// Runs `opening` as simple queries and then `batch` straight on the server
/// (then `undo` as superuser, to remove what it committed) and returns the
/// batch's reply; then, through Suture, runs the same, cuts the reply `owed`
/// messages before its end and returns what the client got for the batch.
async fn cut_before_the_end(
    rig: &Rig,
    raw: &mut RawClient,
    opening: &[&str],
    batch: &[u8],
    owed: usize,
    undo: &str,
) -> anyhow::Result<(Vec<BackendMsg>, Vec<BackendMsg>)> {
    let mut direct = raw_app(rig.pg.port()).await?;
    run_all(&mut direct, opening).await?;
    direct.send(batch).await?;
    let live = direct.read_until_ready(STEP).await?;
    drop(direct);
    ensure!(live.len() > owed, "direct reply {}", tags(&live));
    within(rig.superuser().await?.batch_execute(undo)).await??;
    run_all(raw, opening).await?;
    let cut_at = wire_len(&live[..live.len() - owed]);
    rig.relay
        .cut_open_after(Direction::ToClient, cut_at)
        .await?;
    raw.send(batch).await?;
    let got = raw
        .read_until_ready(STEP)
        .await
        .context("the batch's reply through Suture")?;
    Ok((live, got))
}

/// BEGIN; INSERT; INSERT; COMMIT pipelined, lost after COMMIT's
/// CommandComplete (its CloseComplete and the ReadyForQuery missing): the
/// transaction committed, so the client gets the CloseComplete and an idle
/// ReadyForQuery, never an error, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_commit_lost_before_ready_is_committed() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE ready_t (x int); GRANT ALL ON ready_t TO app"))
            .await??;
        let batch = pipelined(&[
            "BEGIN",
            "INSERT INTO ready_t VALUES (1)",
            "INSERT INTO ready_t VALUES (2)",
            "COMMIT",
        ])?;
        let mut raw = raw_app(rig.suture.port()).await?;
        let (live, got) =
            cut_before_the_end(&rig, &mut raw, &[], &batch, 2, "TRUNCATE ready_t").await?;
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got).is_empty(),
            "answered COMMIT, lost before ReadyForQuery: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(ready_status(&got) == Some('I'), "{}", tags(&got));
        let rows = rig.count("SELECT count(*) FROM ready_t").await?;
        ensure!(rows == 2, "the committed transaction left {rows} rows");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// BEGIN; INSERT pipelined, lost right before the ReadyForQuery: the client
/// gets the ReadyForQuery `T` a live server sends, then its next statement
/// is told the transaction is gone (08006), and ROLLBACK ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_block_lost_before_ready_is_told_at_the_next_statement() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE block_t (x int); GRANT ALL ON block_t TO app"))
            .await??;
        let batch = pipelined(&["BEGIN", "INSERT INTO block_t VALUES (1)"])?;
        let mut raw = raw_app(rig.suture.port()).await?;
        let (live, got) = cut_before_the_end(&rig, &mut raw, &[], &batch, 1, "SELECT 1").await?;
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got).is_empty(),
            "open block, lost before ReadyForQuery: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(ready_status(&got) == Some('T'), "{}", tags(&got));
        raw.send_query("INSERT INTO block_t VALUES (2)").await?;
        let next = raw.read_until_ready(STEP).await?;
        ensure!(
            sqlstates(&next) == ["08006"] && ready_status(&next) == Some('E'),
            "the statement after the lost block got {} {:?}",
            tags(&next),
            sqlstates(&next)
        );
        rollback_ends_the_block(&mut raw).await?;
        let rows = rig.count("SELECT count(*) FROM block_t").await?;
        ensure!(rows == 0, "the lost block left {rows} rows");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// A statement that fails, lost right before the ReadyForQuery: the backend
/// was skipping to the Sync and had rolled back, so the client gets the
/// server's one error and an idle ReadyForQuery, not a second error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_lost_before_ready_is_answered_once() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let batch = pipelined(&["SELECT 1 / 0", "SELECT 2"])?;
        let mut raw = raw_app(rig.suture.port()).await?;
        let (live, got) = cut_before_the_end(&rig, &mut raw, &[], &batch, 1, "SELECT 1").await?;
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got) == ["22012"],
            "error, lost before ReadyForQuery: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(ready_status(&got) == Some('I'), "{}", tags(&got));
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// Inside a block, INSERT; ROLLBACK pipelined, lost after the INSERT was
/// answered: the ROLLBACK is answered as done (the transaction is gone
/// anyway), and the INSERT's replies, already sent, are not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_lost_after_an_answered_statement_repeats_nothing() -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE back_t (x int); GRANT ALL ON back_t TO app"))
            .await??;
        let batch = pipelined(&["INSERT INTO back_t VALUES (1)", "ROLLBACK"])?;
        let mut raw = raw_app(rig.suture.port()).await?;
        run_all(&mut raw, &["BEGIN"]).await?;
        let mut direct = raw_app(rig.pg.port()).await?;
        run_all(&mut direct, &["BEGIN"]).await?;
        direct.send(&batch).await?;
        let live = direct.read_until_ready(STEP).await?;
        drop(direct);
        // Cut after the INSERT's five replies.
        rig.relay
            .cut_open_after(Direction::ToClient, wire_len(&live[..5]))
            .await?;
        raw.send(&batch).await?;
        let got = raw.read_until_ready(STEP).await?;
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got).is_empty(),
            "INSERT answered, ROLLBACK lost: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(ready_status(&got) == Some('I'), "{}", tags(&got));
        let rows = rig.count("SELECT count(*) FROM back_t").await?;
        ensure!(rows == 0, "the rolled-back block left {rows} rows");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// Inside a block, a COMMIT that fails (a deferred foreign key), pipelined,
/// lost right before the ReadyForQuery. PostgreSQL rolls a block whose
/// COMMIT fails back and leaves it, so a live server ends the batch with an
/// idle ReadyForQuery, not a failed-block one: the client must get the
/// server's one error and `I`, and its next statement runs outside a block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_lost_before_ready_leaves_the_block() -> anyhow::Result<()> {
    failed_commit_lost_before_ready("COMMIT").await
}

/// The same for COMMIT AND CHAIN: when the commit fails, no new block begins
/// (xact.c leaves the block before it would chain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_commit_and_chain_lost_before_ready_leaves_the_block() -> anyhow::Result<()> {
    failed_commit_lost_before_ready("COMMIT AND CHAIN").await
}

async fn failed_commit_lost_before_ready(commit: &str) -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute(
            "CREATE TABLE fk_parent (id int PRIMARY KEY); \
             CREATE TABLE fk_child (p int REFERENCES fk_parent DEFERRABLE INITIALLY DEFERRED); \
             GRANT ALL ON fk_parent, fk_child TO app",
        ))
        .await??;
        let batch = pipelined(&[commit])?;
        let opening = ["BEGIN", "INSERT INTO fk_child VALUES (1)"];
        let mut raw = raw_app(rig.suture.port()).await?;
        let (live, got) =
            cut_before_the_end(&rig, &mut raw, &opening, &batch, 1, "SELECT 1").await?;
        ensure!(
            sqlstates(&live) == ["23503"] && ready_status(&live) == Some('I'),
            "a live server answers the failed {commit} with {} {:?}",
            tags(&live),
            sqlstates(&live)
        );
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got) == ["23503"],
            "failed {commit}, lost before ReadyForQuery: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(
            ready_status(&got) == Some('I'),
            "the failed {commit} left the block, but the client was told {:?}",
            ready_status(&got)
        );
        let rows = rig.count("SELECT count(*) FROM fk_child").await?;
        ensure!(rows == 0, "the failed COMMIT left {rows} rows");
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

/// Inside a block, COMMIT AND CHAIN (or ROLLBACK AND CHAIN) pipelined, lost
/// after its CommandComplete. The statement ended the block and began a new
/// one, so a live server's ReadyForQuery says `T`: the client must get that,
/// no error, and then be told at its next statement that the new block is
/// gone (08006), never `I`, which would let the statements it meant for the
/// new block run one by one outside any. `committed`: rows the first block
/// leaves.
async fn chain_lost_before_ready(end: &str, committed: i64) -> anyhow::Result<()> {
    let rig = Rig::start(&[("min_idle", "0")]).await?;
    let result = async {
        let su = rig.superuser().await?;
        within(su.batch_execute("CREATE TABLE chain_t (x int); GRANT ALL ON chain_t TO app"))
            .await??;
        let batch = pipelined(&[end])?;
        let opening = ["BEGIN", "INSERT INTO chain_t VALUES (1)"];
        let mut raw = raw_app(rig.suture.port()).await?;
        let (live, got) =
            cut_before_the_end(&rig, &mut raw, &opening, &batch, 2, "TRUNCATE chain_t").await?;
        ensure!(
            ready_status(&live) == Some('T'),
            "a live server ends {end} with {}",
            tags(&live)
        );
        ensure!(
            tags(&got) == tags(&live) && sqlstates(&got).is_empty(),
            "{end}, lost before ReadyForQuery: got {} {:?}, a live server sends {}",
            tags(&got),
            sqlstates(&got),
            tags(&live)
        );
        ensure!(
            ready_status(&got) == Some('T'),
            "{end} began a new block, but the client was told {:?}",
            ready_status(&got)
        );
        raw.send_query("INSERT INTO chain_t VALUES (2)").await?;
        let next = raw.read_until_ready(STEP).await?;
        ensure!(
            sqlstates(&next) == ["08006"] && ready_status(&next) == Some('E'),
            "the statement after the lost new block got {} {:?}",
            tags(&next),
            sqlstates(&next)
        );
        rollback_ends_the_block(&mut raw).await?;
        let rows = rig.count("SELECT count(*) FROM chain_t").await?;
        ensure!(
            rows == committed,
            "{end} left {rows} rows, the first block {committed}"
        );
        select_7_works(&mut raw).await
    }
    .await;
    rig.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_chain_lost_before_ready_is_a_new_block() -> anyhow::Result<()> {
    chain_lost_before_ready("COMMIT AND CHAIN", 1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_chain_lost_before_ready_is_a_new_block() -> anyhow::Result<()> {
    chain_lost_before_ready("ROLLBACK AND CHAIN", 0).await
}
