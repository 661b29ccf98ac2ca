//! The local retro hunt: every kept sample rescanned with the current generation, in the
//! background, with progress; `STOP` ends it. Like the samples it rescans, the hunts belong to
//! this node: their history is kept in its data directory (`retro-hunts.json`), so it survives a
//! restart; a hunt that a stopped process left running is recorded as `STOPPED`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Scanning;
use crate::domain::Timestamp;

/// The most hunts the history keeps (the oldest go first).
const HISTORY_MAX: usize = 100;

/// The appliance's hunt states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HuntState {
    NotStarted,
    Running,
    Stopping,
    Completed,
    Stopped,
}

impl HuntState {
    fn words(self) -> &'static str {
        match self {
            HuntState::NotStarted => "not started",
            HuntState::Running => "running",
            HuntState::Stopping => "stopping",
            HuntState::Completed => "completed",
            HuntState::Stopped => "stopped",
        }
    }
}

/// One hunt, as the appliance reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hunt {
    pub state: HuntState,
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

pub struct RetroHunt {
    state: Arc<Mutex<State>>,
    /// Where the history is kept.
    file: Arc<PathBuf>,
}

impl RetroHunt {
    /// The hunts recorded in `file`, if any. A hunt recorded as running was cut short by the
    /// end of the process that ran it: it is `STOPPED`, with no stop time. An unreadable file is
    /// reported and replaced by the next hunt.
    pub fn open(file: PathBuf) -> Self {
        let mut history: Vec<Hunt> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the retro hunt history");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the retro hunt history");
                Vec::new()
            }
        };
        for hunt in &mut history {
            if matches!(hunt.state, HuntState::Running | HuntState::Stopping) {
                hunt.state = HuntState::Stopped;
            }
        }
        history.drain(..history.len().saturating_sub(HISTORY_MAX));
        RetroHunt {
            state: Arc::new(Mutex::new(State {
                running: None,
                history,
            })),
            file: Arc::new(file),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
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
        save(&self.file, &state);
        drop(state);
        let (shared, file) = (self.state.clone(), self.file.clone());
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
            let mut state = lock(&shared);
            if let Some(run) = state.running.take() {
                let stopped = run.stop.load(Ordering::Relaxed);
                state.history.push(Hunt {
                    state: if stopped {
                        HuntState::Stopped
                    } else {
                        HuntState::Completed
                    },
                    started: Some(run.started),
                    stopped: Some(Timestamp::now()),
                    samples: run.samples,
                    processed: run.processed.load(Ordering::Relaxed),
                });
                let excess = state.history.len().saturating_sub(HISTORY_MAX);
                state.history.drain(..excess);
                save(&file, &state);
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
            Some(run) => run.report(),
            None => state.history.last().cloned().unwrap_or(Hunt {
                state: HuntState::NotStarted,
                started: None,
                stopped: None,
                samples: 0,
                processed: 0,
            }),
        };
        let history: Vec<&Hunt> = state.history.iter().rev().collect();
        json!({
            "success": true,
            "message": format!("Local retro hunt is {}.", current.state.words()),
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

impl Running {
    fn report(&self) -> Hunt {
        Hunt {
            state: if self.stop.load(Ordering::Relaxed) {
                HuntState::Stopping
            } else {
                HuntState::Running
            },
            started: Some(self.started),
            stopped: None,
            samples: self.samples,
            processed: self.processed.load(Ordering::Relaxed),
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the history (the running hunt last) to `file`, through a temporary file so that a
/// crash leaves the old history or the new one.
fn save(file: &std::path::Path, state: &State) {
    let mut hunts = state.history.clone();
    hunts.extend(state.running.as_ref().map(Running::report));
    let written = serde_json::to_vec_pretty(&hunts)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, file)
        });
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot keep the retro hunt history");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hunt(state: HuntState, started: i64) -> Hunt {
        Hunt {
            state,
            started: Some(Timestamp(started)),
            stopped: (state != HuntState::Running).then_some(Timestamp(started + 10)),
            samples: 3,
            processed: 2,
        }
    }

    #[test]
    fn the_history_is_read_back_and_a_hunt_left_running_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("retro-hunts.json");
        assert_eq!(
            RetroHunt::open(file.clone()).status()["status"]["state"],
            "NOT_STARTED"
        );

        let earlier = hunt(HuntState::Completed, 1_000);
        let state = State {
            running: None,
            history: vec![earlier.clone(), hunt(HuntState::Running, 2_000)],
        };
        save(&file, &state);
        let reopened = RetroHunt::open(file.clone());
        let status = reopened.status();
        assert_eq!(status["status"]["state"], "STOPPED", "{status}");
        assert_eq!(status["message"], "Local retro hunt is stopped.");
        let history = reopened.lock().history.clone();
        assert_eq!(history[0], earlier);
        assert_eq!(history[1].state, HuntState::Stopped);
        assert_eq!(history[1].stopped, None, "when it stopped is not known");
    }

    #[test]
    fn the_history_keeps_the_newest_hunts_and_survives_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("retro-hunts.json");
        let history: Vec<Hunt> = (0..HISTORY_MAX as i64 + 5)
            .map(|i| hunt(HuntState::Completed, i * 100))
            .collect();
        std::fs::write(&file, serde_json::to_vec(&history).unwrap()).unwrap();
        let kept = RetroHunt::open(file.clone()).lock().history.clone();
        assert_eq!(kept.len(), HISTORY_MAX);
        assert_eq!(
            kept[0].started,
            Some(Timestamp(500)),
            "the oldest five went"
        );

        std::fs::write(&file, b"{not json").unwrap();
        let status = RetroHunt::open(file).status();
        assert_eq!(status["status"]["state"], "NOT_STARTED");
    }
}
