//! The whole data path under faults, every component a real process: lines appended to a file ->
//! `kam-cdr-bridge` -> nats-server -> `cdr-worker` -> PostgreSQL. Each test ends with every valid
//! call stored exactly once with the values `contract::merge` gives for its lines, each valid
//! line stored once, and every malformed line dead-lettered once under `cdr.dlq.<reason>`.

use std::time::Duration;

use crate::support::Rng;
use crate::support::pipeline::{Pipeline, append, append_paced};
use crate::support::workload::Workload;

/// How long the pipeline may take to settle after the last line is written.
const SETTLE: Duration = Duration::from_secs(45);

/// A pipeline with the bridge and one worker running, and a workload of 900 calls of `tag`
/// with a malformed line every 25 calls.
async fn running(tag: &str, seed: u64) -> (Pipeline, Workload) {
    let mut p = Pipeline::start().await;
    let workload = Workload::mix(tag, 900, 25, seed);
    p.start_bridge();
    p.start_worker(&[]);
    (p, workload)
}

/// Appends the workload's lines to the pipeline's file from a thread, 40 every 150 ms.
fn write_steadily(p: &Pipeline, workload: &Workload) -> std::thread::JoinHandle<()> {
    append_paced(
        &p.file,
        workload.lines.clone(),
        40,
        Duration::from_millis(150),
    )
}

#[tokio::test]
async fn worker_killed_9_mid_batch_repeatedly() {
    let (mut p, workload) = running("kill", 1).await;
    let writer = write_steadily(&p, &workload);
    let mut rng = Rng::new(99);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(400) as u64)).await;
        // Commits are quick; stall them so the kill lands while the worker holds a batch.
        let blocker = p.stall("cdr_record", Duration::from_millis(1200));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let last = p.workers.len() - 1;
        p.kill_worker(last);
        p.start_worker(&[]);
        blocker.join().unwrap();
    }
    writer.join().unwrap();
    p.verify(&workload, SETTLE).await;
    p.assert_redelivered().await;
    p.stop_all();
}

#[tokio::test]
async fn nats_server_restarted_while_publishing() {
    let (mut p, workload) = running("natsrestart", 2).await;
    let writer = write_steadily(&p, &workload);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Down for a while (the bridge and worker back off and reconnect), then the same node again.
    p.nats.stop_node(0).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.nats.restart_node(0).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // And a plain restart while lines keep coming.
    p.nats.restart_node(0).unwrap();
    writer.join().unwrap();
    p.verify(&workload, SETTLE).await;
    p.stop_all();
}

#[tokio::test]
async fn log_rotated_by_rename_then_by_copytruncate() {
    let (mut p, workload) = running("rotate", 3).await;
    let thirds = workload.lines.len() / 3;
    let (first, rest) = workload.lines.split_at(thirds);
    let (second, third) = rest.split_at(thirds);
    let file = p.file.clone();

    append_paced(&file, first.to_vec(), 50, Duration::from_millis(100))
        .join()
        .unwrap();
    // logrotate `create`: rename away, a new empty file; the bridge finishes the old one.
    std::fs::rename(&file, file.with_extension("jsonl.1")).unwrap();
    std::fs::File::create(&file).unwrap();
    append_paced(&file, second.to_vec(), 50, Duration::from_millis(100))
        .join()
        .unwrap();
    // logrotate `copytruncate`: copy, then truncate in place. Lines written between the copy and
    // the truncate are lost by any tailer (the logger wrote them into the part being cut), so
    // rotate when the bridge has read everything, as the test of a quiet moment.
    p.wait_published(first.len() + second.len(), Duration::from_secs(20))
        .await;
    std::fs::copy(&file, file.with_extension("jsonl.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_paced(&file, third.to_vec(), 50, Duration::from_millis(100))
        .join()
        .unwrap();
    p.verify(&workload, SETTLE).await;
    // The bridge restarted after all that reads nothing twice into the table.
    p.bridge.take().unwrap().terminate();
    p.start_bridge();
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.verify(&workload, SETTLE).await;
    p.stop_all();
}

#[tokio::test]
async fn postgres_stopped_for_seconds_then_restarted() {
    let (mut p, workload) = running("pgdown", 4).await;
    let writer = write_steadily(&p, &workload);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    p.pg.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    p.pg.restart().unwrap();
    writer.join().unwrap();
    p.verify(&workload, SETTLE).await;
    p.stop_all();
}

#[tokio::test]
async fn malformed_lines_among_valid_ones_are_dead_lettered() {
    let mut p = Pipeline::start().await;
    // A malformed line after every other call, of every kind; plus blank lines, which are no
    // records at all and must be neither stored nor dead-lettered.
    let mut workload = Workload::mix("malformed", 500, 2, 5);
    let lines = std::mem::take(&mut workload.lines);
    for (i, line) in lines.into_iter().enumerate() {
        if i % 97 == 0 {
            workload.lines.push(Vec::new());
        }
        workload.lines.push(line);
    }
    let bad = workload.bad_lines().len();
    assert!(bad >= 240, "{bad} malformed lines");
    p.start_bridge();
    p.start_worker(&[]);
    append_paced(
        &p.file,
        workload.lines.clone(),
        60,
        Duration::from_millis(100),
    )
    .join()
    .unwrap();
    workload.lines.retain(|line| !line.is_empty());
    p.verify(&workload, SETTLE).await;
    p.stop_all();
}

#[tokio::test]
async fn two_workers_with_redeliveries_and_stalled_commits() {
    let mut p = Pipeline::start().await;
    let workload = Workload::mix("two", 900, 25, 6);
    p.start_bridge();
    // Many small batches, so idle loops are there to take the stalled batches' redeliveries.
    let fast = [
        "--ack-wait",
        "1s",
        "--concurrency",
        "4",
        "--batch-size",
        "20",
    ];
    p.start_worker(&fast);
    p.start_worker(&fast);
    let (head, tail) = workload.lines.split_at(workload.lines.len() / 3);
    append(&p.file, head);
    let writer = append_paced(&p.file, tail.to_vec(), 40, Duration::from_millis(120));
    // Stall every commit for longer than the ack wait: batches held by one worker are
    // redelivered to the other while the first still holds them.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let blocker = p.stall("cdr", Duration::from_secs(3));
    writer.join().unwrap();
    blocker.join().unwrap();
    p.verify(&workload, SETTLE).await;
    p.assert_redelivered().await;
    p.stop_all();
}
