//! The activator: builds a new generation when the set of published revisions changes, and
//! loads the stored one at start. Activations coalesce: a burst of writes asks many times,
//! and one build follows once the burst settles.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};

use crate::domain::{GenerationMember, StoredGeneration, Timestamp};
use crate::rules::{self, ActiveRules, LoadedGeneration, Member};
use crate::store::Store;

/// How long the activator waits for a burst of writes to settle before it builds.
const SETTLE: Duration = Duration::from_millis(300);

pub struct Activator {
    store: Arc<dyn Store>,
    active: Arc<ActiveRules>,
    wake: Notify,
    building: Mutex<()>,
}

impl Activator {
    pub fn new(store: Arc<dyn Store>, active: Arc<ActiveRules>) -> Arc<Self> {
        Arc::new(Activator {
            store,
            active,
            wake: Notify::new(),
            building: Mutex::new(()),
        })
    }

    pub fn active(&self) -> &Arc<ActiveRules> {
        &self.active
    }

    /// Asks for an activation; returns at once.
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// The coalescing loop: waits for requests, lets a burst settle, builds. Runs until the
    /// task that runs it is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(SETTLE).await;
            if let Err(e) = self.activate().await {
                tracing::error!(error = %e, "activation failed; the previous generation stays active");
                // Try again later rather than spin.
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.wake.notify_one();
            }
        }
    }

    /// Builds and installs a generation when the published set differs from the one served.
    /// Returns the new generation's number, or `None` when nothing changed.
    pub async fn activate(&self) -> anyhow::Result<Option<i64>> {
        let _building = self.building.lock().await;
        let members = self.store.active_members().await?;
        let wanted: BTreeMap<i64, i64> =
            members.iter().map(|m| (m.ruleset_id, m.revision)).collect();
        if self.active.current().is_some_and(|g| g.inputs == wanted) {
            return Ok(None);
        }
        let started = Instant::now();
        let (compiled, artifact, members) = tokio::task::spawn_blocking(move || {
            let compiled = rules::compile_set(&members);
            let artifact = compiled.rules.serialize();
            (compiled, artifact, members)
        })
        .await?;
        let artifact = match artifact {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(error = %e, "compiled rules could not be serialized; nodes will recompile");
                None
            }
        };
        let failed_ids: Vec<i64> = compiled.failed.iter().map(|(id, _)| *id).collect();
        let stored_members: Vec<GenerationMember> = members
            .iter()
            .filter(|m| !failed_ids.contains(&m.ruleset_id))
            .map(member_meta)
            .collect();
        let number = self
            .store
            .insert_generation(
                &stored_members,
                &compiled.failed,
                &rules::engine_version(),
                artifact.as_deref(),
            )
            .await?;
        let generation = LoadedGeneration {
            number,
            created_at: Timestamp::now(),
            rules: Arc::new(compiled.rules),
            members: stored_members
                .iter()
                .map(|m| (m.ruleset_id, m.revision))
                .collect(),
            failed: compiled.failed.into_iter().collect(),
            inputs: wanted,
            ruleset_ids: stored_members
                .iter()
                .map(|m| (m.ruleset.clone(), m.ruleset_id))
                .collect(),
        };
        tracing::info!(
            generation = number,
            rulesets = generation.members.len(),
            failed = generation.failed.len(),
            rules = generation.rules.iter().count(),
            ms = started.elapsed().as_millis() as u64,
            "generation built"
        );
        self.active.install(Arc::new(generation));
        if let Err(e) = self.store.notify_generation(number).await {
            // The others still find it by polling.
            tracing::warn!(error = %e, "cannot notify the other nodes");
        }
        Ok(Some(number))
    }

    /// Follows generations other nodes build: every `every`, when the database holds a newer
    /// generation than this node serves, loads it (a missed notification or a reconnect cannot
    /// leave a node behind for longer than that).
    pub async fn follow(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.catch_up().await {
                tracing::warn!(error = %e, "cannot follow the cluster's generations");
            }
        }
    }

    /// Listens for the generations other nodes announce (PostgreSQL `LISTEN`), and loads each.
    /// The listener reconnects by itself; notifications sent meanwhile are lost, which is why
    /// it catches up after every (re)connect and [`Activator::follow`] polls as well.
    pub async fn listen(self: Arc<Self>, database_url: String) {
        loop {
            match sqlx::postgres::PgListener::connect(&database_url).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(crate::store::GENERATION_CHANNEL).await {
                        tracing::warn!(error = %e, "cannot listen for generations");
                    } else {
                        let _ = self.catch_up().await;
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => {
                                    if let Err(e) = self.catch_up().await {
                                        tracing::warn!(error = %e, "cannot load an announced generation");
                                    }
                                }
                                // The connection dropped and was re-established.
                                Ok(None) => {
                                    let _ = self.catch_up().await;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "generation listener failed");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect the generation listener"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Loads the newest stored generation when it is newer than the one served.
    pub async fn catch_up(&self) -> anyhow::Result<Option<i64>> {
        let served = self.active.current().map(|g| g.number);
        let Some((newest, _)) = self.store.latest_generation_head().await? else {
            return Ok(None);
        };
        if served.is_some_and(|n| n >= newest) {
            return Ok(None);
        }
        let _building = self.building.lock().await;
        let Some(stored) = self.store.latest_generation().await? else {
            return Ok(None);
        };
        let number = stored.number;
        if self.active.current().is_some_and(|g| g.number >= number) {
            return Ok(None);
        }
        let generation = self.load(stored).await?;
        self.active.install(Arc::new(generation));
        tracing::info!(
            generation = number,
            "loaded a generation built by another node"
        );
        Ok(Some(number))
    }

    /// At start: loads the latest stored generation (its artifact when the same YARA-X built
    /// it, else a recompile from its revisions), then activates whatever changed since.
    pub async fn start(&self) -> anyhow::Result<()> {
        if let Some(stored) = self.store.latest_generation().await? {
            let number = stored.number;
            let generation = self.load(stored).await?;
            self.active.install(Arc::new(generation));
            tracing::info!(generation = number, "generation loaded");
        }
        self.activate().await?;
        Ok(())
    }

    async fn load(&self, stored: StoredGeneration) -> anyhow::Result<LoadedGeneration> {
        let same_engine = stored.engine_version == rules::engine_version();
        if let (true, Some(bytes)) = (same_engine, stored.artifact.as_ref()) {
            let bytes = bytes.clone();
            match tokio::task::spawn_blocking(move || yara_x::Rules::deserialize(bytes)).await? {
                Ok(rules) => {
                    return Ok(LoadedGeneration {
                        number: stored.number,
                        created_at: stored.created_at,
                        rules: Arc::new(rules),
                        members: stored
                            .members
                            .iter()
                            .map(|m| (m.ruleset_id, m.revision))
                            .collect(),
                        inputs: inputs_of(&stored),
                        ruleset_ids: ruleset_ids_of(&stored),
                        failed: stored.failed.into_iter().collect(),
                    });
                }
                Err(e) => tracing::warn!(error = %e, "stored rules do not load; recompiling"),
            }
        } else {
            tracing::info!(
                stored = %stored.engine_version,
                here = %rules::engine_version(),
                "stored generation built by another engine or without artifact; recompiling"
            );
        }
        let inputs = inputs_of(&stored);
        let ruleset_ids = ruleset_ids_of(&stored);
        let ids: Vec<i64> = stored.members.iter().map(|m| m.revision_id).collect();
        let members = self.store.members_by_revision(&ids).await?;
        let compiled = tokio::task::spawn_blocking(move || rules::compile_set(&members)).await?;
        let mut failed: HashMap<i64, String> = stored.failed.into_iter().collect();
        failed.extend(compiled.failed);
        Ok(LoadedGeneration {
            number: stored.number,
            created_at: stored.created_at,
            rules: Arc::new(compiled.rules),
            members: stored
                .members
                .iter()
                .filter(|m| !failed.contains_key(&m.ruleset_id))
                .map(|m| (m.ruleset_id, m.revision))
                .collect(),
            failed,
            inputs,
            ruleset_ids,
        })
    }
}

fn member_meta(m: &Member) -> GenerationMember {
    GenerationMember {
        ruleset_id: m.ruleset_id,
        ruleset: m.ruleset.clone(),
        revision_id: m.revision_id,
        revision: m.revision,
    }
}

fn ruleset_ids_of(g: &StoredGeneration) -> HashMap<String, i64> {
    g.members
        .iter()
        .map(|m| (m.ruleset.clone(), m.ruleset_id))
        .collect()
}

/// The published set a stored generation was built from. Failed members were not stored with
/// their revision, so they count as revision 0: the first activation after a restart retries
/// them once.
fn inputs_of(g: &StoredGeneration) -> BTreeMap<i64, i64> {
    let mut inputs: BTreeMap<i64, i64> = g
        .members
        .iter()
        .map(|m| (m.ruleset_id, m.revision))
        .collect();
    for (id, _) in &g.failed {
        inputs.insert(*id, 0);
    }
    inputs
}
