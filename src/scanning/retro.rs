//! The local retro hunt: every kept sample rescanned with the current generation, in the
//! background, with progress; `STOP` ends it; the state and the history of earlier hunts are
//! kept in memory on this node.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use super::Scanning;
use crate::domain::Timestamp;

/// One hunt, as the appliance reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Hunt {
    pub state: &'static str,
    pub started: Option<Timestamp>,
    pub stopped: Option<Timestamp>,
    pub samples: u64,
    pub processed: u64,
}

struct Running {
    started: Timestamp,
    samples: u64,
    processed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    history: Vec<Hunt>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HuntError {
    #[error("a local retro hunt is already running")]
    AlreadyRunning,
    #[error("no local retro hunt is running")]
    NotRunning,
    #[error("samples are not kept on this server (store_samples is off)")]
    NoSamples,
}

#[derive(Default)]
pub struct RetroHunt {
    state: Arc<Mutex<State>>,
}

impl RetroHunt {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `START`: rescans every kept sample in the background.
    pub fn start(&self, scanning: Arc<Scanning>) -> Result<(), HuntError> {
        let files = scanning.samples().ok_or(HuntError::NoSamples)?.list();
        let mut state = self.lock();
        if state.running.is_some() {
            return Err(HuntError::AlreadyRunning);
        }
        let processed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Timestamp::now();
        state.running = Some(Running {
            started,
            samples: files.len() as u64,
            processed: processed.clone(),
            stop: stop.clone(),
        });
        drop(state);
        let shared = self.state.clone();
        tokio::spawn(async move {
            for (sha256, path) in files {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::fs::read(&path).await {
                    Ok(data) => {
                        if let Err(e) = scanning.scan(data.into(), None, None, false).await {
                            tracing::warn!(sample = %sha256, error = %e, "retro hunt: scan failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sample = %sha256, error = %e, "retro hunt: sample gone")
                    }
                }
                processed.fetch_add(1, Ordering::Relaxed);
            }
            let mut state = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(run) = state.running.take() {
                let stopped = run.stop.load(Ordering::Relaxed);
                state.history.push(Hunt {
                    state: if stopped { "STOPPED" } else { "COMPLETED" },
                    started: Some(run.started),
                    stopped: Some(Timestamp::now()),
                    samples: run.samples,
                    processed: run.processed.load(Ordering::Relaxed),
                });
            }
            tracing::info!("local retro hunt finished");
        });
        Ok(())
    }

    /// `STOP`: asks the running hunt to stop.
    pub fn stop(&self) -> Result<(), HuntError> {
        let state = self.lock();
        let running = state.running.as_ref().ok_or(HuntError::NotRunning)?;
        running.stop.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The state of the current or last hunt, and the history of earlier ones (newest first).
    pub fn status(&self) -> Value {
        let state = self.lock();
        let current = match &state.running {
            Some(run) => Hunt {
                state: if run.stop.load(Ordering::Relaxed) {
                    "STOPPING"
                } else {
                    "RUNNING"
                },
                started: Some(run.started),
                stopped: None,
                samples: run.samples,
                processed: run.processed.load(Ordering::Relaxed),
            },
            None => state.history.last().cloned().unwrap_or(Hunt {
                state: "NOT_STARTED",
                started: None,
                stopped: None,
                samples: 0,
                processed: 0,
            }),
        };
        let history: Vec<&Hunt> = state.history.iter().rev().collect();
        json!({
            "success": true,
            "message": format!("Local retro hunt is {}.", current.state.to_ascii_lowercase().replace('_', " ")),
            "status": {
                "state": current.state,
                "started": current.started,
                "stopped": current.stopped,
                "samples": current.samples,
                "processed": current.processed,
                "history": history,
            },
        })
    }
}
