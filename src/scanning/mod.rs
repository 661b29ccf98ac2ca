//! Scanning as a service: a scan with the generation current when it starts, its matches
//! recorded (and the `capped` rule applied), the sample kept for retro hunts; and the local
//! retro hunt that rescans every kept sample.
//!
//! Must not import `http`.

pub mod recorder;
pub mod retro;
pub mod samples;

use std::sync::Arc;
use std::time::Duration;

pub use recorder::{CapRule, Recorder, Recording};
pub use retro::RetroHunt;
pub use samples::SampleFiles;

use crate::config::Settings;
use crate::domain::{MatchRecord, Sample, ScannedSample, Timestamp};
use crate::rules::{LoadedGeneration, ScanGlobals, ScanOutcome, ScanPool, classify};
use crate::rulesets::Rulesets;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ScanFailure {
    #[error("no generation of rules is loaded yet")]
    NotReady,
    #[error("the scan failed: {0}")]
    Engine(String),
}

/// A finished scan.
pub struct ScanReport {
    pub sha256: String,
    pub size: usize,
    pub generation: Arc<LoadedGeneration>,
    pub outcome: ScanOutcome,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct ScanCounters {
    pub scans: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub timeouts: std::sync::atomic::AtomicU64,
    pub matches: std::sync::atomic::AtomicU64,
}

pub struct Scanning {
    pub counters: ScanCounters,
    rulesets: Arc<Rulesets>,
    pool: ScanPool,
    samples: Option<Arc<SampleFiles>>,
    recorder: Recorder,
    settings: Arc<Settings>,
}

impl Scanning {
    pub fn new(store: Arc<dyn Store>, rulesets: Arc<Rulesets>, settings: Arc<Settings>) -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let samples = settings.store_samples.then(|| {
            Arc::new(SampleFiles::open(
                settings.data_dir.join("samples"),
                settings.samples_max_bytes,
            ))
        });
        let cap = CapRule {
            cap: i64::try_from(settings.match_cap).unwrap_or(i64::MAX),
            window_ms: i64::try_from(settings.match_cap_window_seconds)
                .unwrap_or(i64::MAX / 2_000)
                .saturating_mul(1000),
        };
        Scanning {
            counters: ScanCounters::default(),
            recorder: Recorder::start(store, samples.clone(), cap),
            rulesets,
            pool: ScanPool::new(workers),
            samples,
            settings,
        }
    }

    pub fn samples(&self) -> Option<&Arc<SampleFiles>> {
        self.samples.as_ref()
    }

    /// Waits until every scan answered so far is recorded and its sample kept.
    pub async fn flush(&self) {
        self.recorder.flush().await;
    }

    /// Scans whose records were lost (the database refused them after retries).
    pub fn lost_records(&self) -> u64 {
        self.recorder
            .lost
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Scans `data` (whose SHA-256 the caller may know already) with the generation current now;
    /// what matched is recorded (and the sample kept, with `keep`) in the background:
    /// [`Scanning::flush`] waits for that.
    pub async fn scan(
        &self,
        data: bytes::Bytes,
        sha256: Option<String>,
        filename: Option<String>,
        keep: bool,
    ) -> Result<ScanReport, ScanFailure> {
        let generation = self
            .rulesets
            .current_generation()
            .ok_or(ScanFailure::NotReady)?;
        let size = data.len();
        let scanned = self.pool.scan(
            generation.clone(),
            data.clone(),
            ScanGlobals::from_name(filename.as_deref()),
            Duration::from_secs(self.settings.scan_timeout_seconds),
        );
        // The digest is computed here while a worker scans: the scan does not wait for it.
        let sha256 = match sha256 {
            Some(known) => known,
            None => digest(&data).await,
        };
        let outcome = scanned.await;
        if let Some(error) = &outcome.error {
            return Err(ScanFailure::Engine(error.clone()));
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.counters.scans.fetch_add(1, Relaxed);
            self.counters.bytes.fetch_add(size as u64, Relaxed);
            self.counters
                .timeouts
                .fetch_add(u64::from(outcome.timed_out), Relaxed);
            self.counters
                .matches
                .fetch_add(outcome.matches.len() as u64, Relaxed);
        }
        let matches: Vec<MatchRecord> = outcome
            .matches
            .iter()
            .filter_map(|m| {
                generation
                    .ruleset_ids
                    .get(&m.ruleset)
                    .map(|id| MatchRecord {
                        ruleset_id: *id,
                        rule: m.rule.clone(),
                        classification: classify(&m.tags).to_owned(),
                    })
            })
            .collect();
        let now = Timestamp::now();
        self.recorder
            .record(Recording {
                scanned: ScannedSample {
                    sample: Sample {
                        sha256: sha256.clone(),
                        size: size as i64,
                        filename,
                        first_seen: now,
                        last_seen: now,
                    },
                    matches,
                },
                keep: (keep && self.samples.is_some()).then_some(data),
            })
            .await;
        Ok(ScanReport {
            sha256,
            size,
            generation,
            outcome,
        })
    }
}

/// The SHA-256 of `data`, lower-case hex, a mebibyte at a time: a large file does not hold the
/// thread that serves requests for long.
async fn digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for chunk in data.chunks(1 << 20) {
        hasher.update(chunk);
        tokio::task::yield_now().await;
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[tokio::test]
    async fn the_digest_in_steps_is_the_sha256_of_the_whole() {
        let data: Vec<u8> = (0..(5 << 19) + 3).map(|i| (i * 7 % 251) as u8).collect();
        for data in [&data[..], &data[..1 << 20], &data[..1], &[][..]] {
            assert_eq!(super::digest(data).await, hex::encode(Sha256::digest(data)));
        }
    }
}
