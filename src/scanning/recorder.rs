//! Recording scans off the request path. A scan answers as soon as YARA-X is done; what it found
//! (the sample, its matches, the `capped` rule) and the sample file are written by one background
//! task, in batches: one transaction for the scans that arrive within [`LINGER`] of the first, or
//! while the previous batch was being written. Readers that must see every scan answered so far
//! (the matches query, the ruleset counters and statuses, the retro hunt) call
//! [`Recorder::flush`] first, which writes at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::SampleFiles;
use crate::domain::ScannedSample;
use crate::store::Store;

/// Scans waiting to be written before a scan has to wait for room (backpressure when the
/// database is slower than scanning).
const QUEUE: usize = 256;
/// The most sample data held in memory waiting to be kept on disk, in MiB; past it a scan
/// waits for the disk before it answers.
const KEEP_BUDGET_MIB: usize = 256;
/// The most scans written in one transaction.
const MAX_BATCH: usize = 128;
/// How long a batch waits for more scans after its first: a transaction (and a hop to the
/// thread that keeps samples) per few scans instead of per scan when scans arrive steadily.
/// Only other nodes see the delay: a flush writes at once.
const LINGER: Duration = Duration::from_millis(20);
/// Waits between the attempts at writing a batch.
const RETRY_DELAYS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

/// One scan to record, with its data when the sample is to be kept on disk.
pub struct Recording {
    pub scanned: ScannedSample,
    pub keep: Option<bytes::Bytes>,
}

/// Sample data waiting for the disk, with its share of [`KEEP_BUDGET_MIB`].
type Keep = (String, bytes::Bytes, OwnedSemaphorePermit);

enum Command {
    Record(ScannedSample, Option<Keep>),
    Flush(oneshot::Sender<()>),
}

/// How matches are capped (BEHAVIOUR.md 4).
#[derive(Debug, Clone, Copy)]
pub struct CapRule {
    pub cap: i64,
    pub window_ms: i64,
}

pub struct Recorder {
    queue: mpsc::Sender<Command>,
    keep_budget: Arc<Semaphore>,
    /// Scans whose records could not be written (after retries).
    pub lost: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(store: Arc<dyn Store>, samples: Option<Arc<SampleFiles>>, cap: CapRule) -> Self {
        let (queue, commands) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(commands, store, samples, cap, lost.clone()));
        Recorder {
            queue,
            keep_budget: Arc::new(Semaphore::new(KEEP_BUDGET_MIB)),
            lost,
        }
    }

    /// Queues a scan; waits only while the queue is full or too much sample data waits for the
    /// disk.
    pub async fn record(&self, recording: Recording) {
        let Recording { scanned, keep } = recording;
        let keep = match keep {
            Some(data) => {
                let mib = data.len().div_ceil(1 << 20).clamp(1, KEEP_BUDGET_MIB);
                let permit = self
                    .keep_budget
                    .clone()
                    .acquire_many_owned(u32::try_from(mib).unwrap_or(u32::MAX))
                    .await
                    .expect("the budget is never closed");
                Some((scanned.sample.sha256.clone(), data, permit))
            }
            None => None,
        };
        if self
            .queue
            .send(Command::Record(scanned, keep))
            .await
            .is_err()
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!("the scan recorder has stopped; a scan was not recorded");
        }
    }

    /// Returns once every scan queued before this call is written (or given up on).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.queue.send(Command::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_loop(
    mut commands: mpsc::Receiver<Command>,
    store: Arc<dyn Store>,
    samples: Option<Arc<SampleFiles>>,
    cap: CapRule,
    lost: Arc<AtomicU64>,
) {
    let mut batch: Vec<ScannedSample> = Vec::new();
    let mut kept: Vec<Keep> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = commands.recv().await {
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Record(scanned, keep) => {
                    kept.extend(keep);
                    batch.push(scanned);
                }
                Command::Flush(done) => waiting.push(done),
            }
            if batch.len() >= MAX_BATCH || !waiting.is_empty() {
                break;
            }
            next = match commands.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, commands.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
        }
        if !batch.is_empty() {
            write_batch(&store, &batch, cap, &lost).await;
            batch.clear();
        }
        if !kept.is_empty() {
            keep_samples(samples.as_ref(), std::mem::take(&mut kept)).await;
        }
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Writes a batch in one transaction, retrying; if it still fails, each scan alone, so that one
/// bad record does not lose the others.
async fn write_batch(
    store: &Arc<dyn Store>,
    scans: &[ScannedSample],
    cap: CapRule,
    lost: &AtomicU64,
) {
    let mut attempt = 0;
    let error = loop {
        match store.record_scans(scans, cap.cap, cap.window_ms).await {
            Ok(capped) => {
                warn_capped(&capped);
                return;
            }
            Err(e) if attempt < RETRY_DELAYS.len() => {
                tracing::warn!(error = %e, scans = scans.len(), "recording scans failed; retrying");
                tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                attempt += 1;
            }
            Err(e) => break e,
        }
    };
    if scans.len() == 1 {
        lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %error, "a scan could not be recorded");
        return;
    }
    for scan in scans {
        match store
            .record_scans(std::slice::from_ref(scan), cap.cap, cap.window_ms)
            .await
        {
            Ok(capped) => warn_capped(&capped),
            Err(e) => {
                lost.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, sha256 = %scan.sample.sha256, "a scan could not be recorded");
            }
        }
    }
}

fn warn_capped(capped: &[i64]) {
    for id in capped {
        tracing::warn!(
            ruleset = id,
            "ruleset capped: it matched more samples than the match cap"
        );
    }
}

/// Keeps the batch's samples on disk (on a blocking thread).
async fn keep_samples(samples: Option<&Arc<SampleFiles>>, kept: Vec<Keep>) {
    let Some(files) = samples else { return };
    let files = files.clone();
    let written = tokio::task::spawn_blocking(move || {
        // Each permit is released as soon as its sample is on disk.
        for (sha256, data, _permit) in kept {
            if let Err(e) = files.keep(&sha256, &data) {
                tracing::warn!(error = %e, "cannot keep a scanned sample");
            }
        }
    })
    .await;
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot keep scanned samples");
    }
}
