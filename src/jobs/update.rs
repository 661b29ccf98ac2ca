//! The update job (BEHAVIOUR.md 5): one global cadence, persisted; at most one run across the
//! cluster, held by a lease row with an expiry that the run renews; repositories fetched several
//! at a time; every run recorded with its per-repository outcomes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::import::{ImportFailure, ImportMode, Importer};
use crate::domain::{
    ImportPreference, RepoOutcome, Repository, RepositoryFilter, Timestamp, UpdateRun,
};
use crate::store::{Store, StoreError, StoreResult};

const JOB_LEASE: &str = "update-job";
const INTERVAL_KEY: &str = "update_interval_seconds";
/// The default cadence, and what `reset-interval` restores.
pub const DEFAULT_INTERVAL: u64 = 3600;
/// The longest cadence accepted: 30 days.
pub const MAX_INTERVAL: u64 = 30 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the update job is already running")]
    AlreadyRunning,
    #[error("the repository is being updated; try again when that finishes")]
    RepositoryBusy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `GET /api/yara/update/`.
pub struct JobStatus {
    pub interval_seconds: u64,
    pub next_run_at: Option<Timestamp>,
    pub running: Option<UpdateRun>,
}

pub struct UpdateJob {
    store: Arc<dyn Store>,
    importer: Arc<Importer>,
    node: String,
    initial_interval: u64,
    lease: Duration,
    concurrency: usize,
    started_at: Timestamp,
    cadence_changed: Notify,
}

fn lease_holder(node: &str) -> String {
    format!("{node}#{}", uuid::Uuid::new_v4().simple())
}

impl UpdateJob {
    pub fn new(store: Arc<dyn Store>, importer: Arc<Importer>) -> Arc<Self> {
        let settings = importer.settings.clone();
        Arc::new(UpdateJob {
            store,
            importer,
            node: settings.node_name.clone(),
            initial_interval: settings.update_interval_seconds.min(MAX_INTERVAL),
            lease: Duration::from_secs(settings.job_lease_seconds),
            concurrency: settings.fetch_concurrency,
            started_at: Timestamp::now(),
            cadence_changed: Notify::new(),
        })
    }

    pub fn importer(&self) -> &Arc<Importer> {
        &self.importer
    }

    fn expiry(&self, extra: Duration) -> i64 {
        let ms = i64::try_from((self.lease + extra).as_millis()).unwrap_or(i64::MAX / 2);
        Timestamp::now().millis() + ms
    }

    pub async fn interval(&self) -> StoreResult<u64> {
        let stored = self
            .store
            .put_setting_if_absent(INTERVAL_KEY, &self.initial_interval.to_string())
            .await?;
        Ok(stored.parse().unwrap_or(DEFAULT_INTERVAL))
    }

    /// Persists a new cadence; the scheduler picks it up at once.
    pub async fn set_interval(&self, seconds: u64) -> StoreResult<()> {
        self.store
            .put_setting(INTERVAL_KEY, &seconds.to_string())
            .await?;
        self.cadence_changed.notify_waiters();
        Ok(())
    }

    async fn last_run(&self) -> StoreResult<Option<UpdateRun>> {
        Ok(self.store.runs(0, 1).await?.items.into_iter().next())
    }

    async fn next_run_at(&self, interval: u64) -> StoreResult<Option<Timestamp>> {
        if interval == 0 {
            return Ok(None);
        }
        let from = self
            .last_run()
            .await?
            .map_or(self.started_at, |r| r.started_at);
        let ms = i64::try_from(interval).unwrap_or(i64::MAX / 2_000) * 1000;
        Ok(Some(Timestamp(from.millis() + ms)))
    }

    pub async fn status(&self) -> StoreResult<JobStatus> {
        let interval = self.interval().await?;
        let running = self.last_run().await?.filter(|r| r.state == "running");
        Ok(JobStatus {
            interval_seconds: interval,
            next_run_at: self.next_run_at(interval).await?,
            running,
        })
    }

    /// At start: runs this node left `running` were cut short, and the leases its earlier
    /// process held are released rather than left to lapse.
    pub async fn recover(&self) -> StoreResult<()> {
        let n = self.store.interrupt_runs_of(&self.node).await?;
        if n > 0 {
            tracing::warn!(runs = n, "runs cut short by a restart marked interrupted");
        }
        self.store.release_leases_of_node(&self.node).await?;
        Ok(())
    }

    /// Starts a run unless one is alive anywhere in the cluster (409).
    pub async fn start(self: &Arc<Self>, trigger: &str) -> Result<i64, JobError> {
        let holder = lease_holder(&self.node);
        let lapsed = self
            .store
            .take_lease(JOB_LEASE, &holder, None, self.expiry(Duration::ZERO))
            .await?
            .ok_or(JobError::AlreadyRunning)?;
        if let Some(run) = lapsed {
            // Its node died and let the lease lapse.
            self.store.finish_run(run, "interrupted").await?;
            tracing::warn!(
                run,
                "took over a lapsed lease; its run is marked interrupted"
            );
        }
        let repos: Vec<Repository> = self
            .store
            .list_repositories(RepositoryFilter::All, 0, i64::MAX / 2)
            .await?
            .items
            .into_iter()
            .filter(|r| r.import_update_preferences != ImportPreference::Manual)
            .collect();
        let run_id = match self
            .store
            .insert_run(&self.node, trigger, repos.len() as i64)
            .await
        {
            Ok(id) => id,
            Err(e) => {
                let _ = self.store.release_lease(JOB_LEASE, &holder).await;
                return Err(e.into());
            }
        };
        self.store.set_lease_run(JOB_LEASE, &holder, run_id).await?;
        tracing::info!(
            run = run_id,
            trigger,
            repositories = repos.len(),
            "update run started"
        );
        tokio::spawn(self.clone().execute(run_id, holder, repos));
        Ok(run_id)
    }

    async fn execute(self: Arc<Self>, run_id: i64, holder: String, repos: Vec<Repository>) {
        let renewer = {
            let (store, holder, job) = (self.store.clone(), holder.clone(), self.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(job.lease / 3).await;
                    // The job's lease and the leases of the repositories it works on.
                    match store
                        .renew_leases(&holder, job.expiry(Duration::ZERO))
                        .await
                    {
                        Ok(n) if n > 0 => {}
                        Ok(_) => {
                            tracing::error!(run = run_id, "the update job lost its lease");
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot renew the update job's lease"),
                    }
                }
            })
        };
        let total = repos.len();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for repo in repos {
            let (job, slots, holder) = (self.clone(), slots.clone(), holder.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let outcome = job.update_one(&repo, &holder).await;
                if let Err(e) = job.store.record_run_repository(run_id, &outcome).await {
                    tracing::error!(error = %e, "cannot record a repository's outcome");
                }
                outcome.error.is_none()
            });
        }
        let mut failures = 0;
        while let Some(ok) = tasks.join_next().await {
            if !matches!(ok, Ok(true)) {
                failures += 1;
            }
        }
        let state = if failures == 0 {
            "succeeded"
        } else if failures == total {
            "failed"
        } else {
            "partial"
        };
        if let Err(e) = self.store.finish_run(run_id, state).await {
            tracing::error!(error = %e, "cannot record the end of a run");
        }
        renewer.abort();
        let _ = self.store.release_lease(JOB_LEASE, &holder).await;
        tracing::info!(run = run_id, state, failures, "update run finished");
    }

    /// One repository of a run, under the repository's own lease.
    async fn update_one(&self, repo: &Repository, holder: &str) -> RepoOutcome {
        let busy = |repo: &Repository| RepoOutcome {
            repository: repo.id,
            name: repo.name.clone(),
            commit_before: repo.sync.commit.clone(),
            error: Some("an explicit import of this repository was running".into()),
            ..RepoOutcome::default()
        };
        let name = format!("repository:{}", repo.id);
        let fetch = Duration::from_secs(self.importer.settings.fetch_timeout_seconds * 2);
        match self
            .store
            .take_lease(&name, holder, None, self.expiry(fetch))
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return busy(repo),
            Err(e) => {
                return RepoOutcome {
                    error: Some(format!("storage: {e}")),
                    ..busy(repo)
                };
            }
        }
        let outcome = match self.importer.run(repo, ImportMode::Update).await {
            Ok(o) | Err((o, _)) => o,
        };
        let _ = self.store.release_lease(&name, holder).await;
        outcome
    }

    /// `POST /api/yara/repositories/{id}/import/`: now, unless the job holds the repository.
    pub async fn import_now(
        &self,
        repo: &Repository,
        paths: Option<Vec<String>>,
    ) -> Result<Result<RepoOutcome, (RepoOutcome, ImportFailure)>, JobError> {
        let holder = lease_holder(&self.node);
        let name = format!("repository:{}", repo.id);
        let fetch = Duration::from_secs(self.importer.settings.fetch_timeout_seconds * 2);
        self.store
            .take_lease(&name, &holder, None, self.expiry(fetch))
            .await?
            .ok_or(JobError::RepositoryBusy)?;
        let result = self.importer.run(repo, ImportMode::Import { paths }).await;
        let _ = self.store.release_lease(&name, &holder).await;
        Ok(result)
    }

    /// Starts a run whenever one is due; wakes early when the cadence changes.
    pub async fn scheduler(self: Arc<Self>) {
        loop {
            let changed = self.cadence_changed.notified();
            let due = match self.interval().await {
                Ok(interval) => self.next_run_at(interval).await,
                Err(e) => Err(e),
            };
            let wait = match due {
                Ok(None) => {
                    changed.await;
                    continue;
                }
                Ok(Some(at)) => Duration::from_millis(
                    u64::try_from(at.millis() - Timestamp::now().millis()).unwrap_or(0),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler cannot read its state");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = changed => continue,
                () = tokio::time::sleep(wait) => {}
            }
            match self.start("scheduled").await {
                Ok(_) => {}
                // Another node runs it: the next due time follows that run's start.
                Err(JobError::AlreadyRunning) => tokio::time::sleep(self.lease).await,
                Err(e) => {
                    tracing::error!(error = %e, "scheduled run did not start");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
}
