//! Scanning as a service: a scan with the generation current when it starts, its matches
//! recorded (and the `capped` rule applied), the sample kept for retro hunts; and the local
//! retro hunt that rescans every kept sample.
//!
//! Must not import `http`.

pub mod retro;
pub mod samples;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use retro::RetroHunt;
pub use samples::SampleFiles;

use crate::config::Settings;
use crate::domain::{MatchRecord, Sample, Timestamp};
use crate::rules::{LoadedGeneration, ScanGlobals, ScanOutcome, ScanPool, classify};
use crate::rulesets::Rulesets;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ScanFailure {
    #[error("no generation of rules is loaded yet")]
    NotReady,
    #[error("the scan failed: {0}")]
    Engine(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    store: Arc<dyn Store>,
    rulesets: Arc<Rulesets>,
    pool: ScanPool,
    samples: Option<Arc<SampleFiles>>,
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
        Scanning {
            counters: ScanCounters::default(),
            store,
            rulesets,
            pool: ScanPool::new(workers),
            samples,
            settings,
        }
    }

    pub fn samples(&self) -> Option<&Arc<SampleFiles>> {
        self.samples.as_ref()
    }

    /// Scans `data` with the generation current now and records what matched.
    pub async fn scan(
        &self,
        data: bytes::Bytes,
        filename: Option<String>,
        keep: bool,
    ) -> Result<ScanReport, ScanFailure> {
        let generation = self
            .rulesets
            .current_generation()
            .ok_or(ScanFailure::NotReady)?;
        let size = data.len();
        // The digest runs on a blocking thread alongside the scan, not before it.
        let digest = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&data)))
        };
        let scanned = self.pool.scan(
            generation.clone(),
            data.clone(),
            ScanGlobals::from_name(filename.as_deref()),
            Duration::from_secs(self.settings.scan_timeout_seconds),
        );
        let (digest, outcome) = tokio::join!(digest, scanned);
        let sha256 = digest.map_err(|e| ScanFailure::Engine(e.to_string()))?;
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
        let records: Vec<MatchRecord> = outcome
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
        let sample = Sample {
            sha256: sha256.clone(),
            size: size as i64,
            filename,
            first_seen: now,
            last_seen: now,
        };
        let window_ms = i64::try_from(self.settings.match_cap_window_seconds)
            .unwrap_or(i64::MAX / 2_000)
            * 1000;
        let capped = self
            .store
            .record_scan(
                &sample,
                &records,
                i64::try_from(self.settings.match_cap).unwrap_or(i64::MAX),
                now.millis() - window_ms,
            )
            .await?;
        for id in capped {
            tracing::warn!(
                ruleset = id,
                "ruleset capped: it matched more samples than the match cap"
            );
        }
        if keep && let Some(files) = &self.samples {
            let (files, sha, data) = (files.clone(), sha256.clone(), data.clone());
            match tokio::task::spawn_blocking(move || files.keep(&sha, &data)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot keep a scanned sample"),
                Err(e) => tracing::warn!(error = %e, "cannot keep a scanned sample"),
            }
        }
        Ok(ScanReport {
            sha256,
            size,
            generation,
            outcome,
        })
    }
}
