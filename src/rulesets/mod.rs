//! Rulesets: new revisions (validated with YARA-X as they are stored), enable, disable, delete,
//! publishing and rollback, and the status each ruleset shows. The [`Activator`] turns the
//! published set into generations.
//!
//! Must not import `http`; handlers map [`RulesetError`] to responses.

pub mod activation;

use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use activation::Activator;

use crate::domain::{
    Author, NewRevision, Origin, Ruleset, RulesetName, RulesetStatus, SavedRevision, User,
    ValidationOutcome,
};
use crate::rules::{self, LoadedGeneration};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RulesetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{message}")]
    Invalid {
        code: &'static str,
        field: Option<&'static str>,
        message: String,
    },
    #[error(
        "YARA Sync is not enabled: valid revisions are activated at once, there is nothing to publish"
    )]
    SyncDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RulesetError {
    fn invalid(
        code: &'static str,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        RulesetError::Invalid {
            code,
            field,
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, RulesetError>;

/// One entry of `error_messages` in the answer to `publish/all`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishError {
    pub revision_id: i64,
    pub ruleset_name: String,
    pub message: String,
}

/// The answer to `publish/all`, exactly as the appliance shapes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishAllReport {
    pub error_messages: Vec<PublishError>,
    pub successful_publish_count: usize,
    pub total_count: usize,
}

pub struct Rulesets {
    store: Arc<dyn Store>,
    activator: Arc<Activator>,
    yara_sync: bool,
    max_bytes: u64,
    /// Bounds concurrent validations to the cores, so compiles never starve the API.
    validation_slots: Semaphore,
}

pub fn sha256_hex(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

impl Rulesets {
    pub fn new(
        store: Arc<dyn Store>,
        activator: Arc<Activator>,
        yara_sync: bool,
        max_bytes: u64,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Rulesets {
            store,
            activator,
            yara_sync,
            max_bytes,
            validation_slots: Semaphore::new(cores),
        }
    }

    pub fn yara_sync(&self) -> bool {
        self.yara_sync
    }

    pub fn activator(&self) -> &Arc<Activator> {
        &self.activator
    }

    pub fn current_generation(&self) -> Option<Arc<LoadedGeneration>> {
        self.activator.active().current()
    }

    pub async fn get(&self, name: &str) -> Result<Ruleset> {
        self.store
            .ruleset(name)
            .await?
            .ok_or_else(|| RulesetError::NotFound(format!("No ruleset named `{name}`.")))
    }

    /// Validates `content` off the async workers, bounded by the cores.
    pub async fn validate(&self, name: &str, content: String) -> Result<ValidationOutcome> {
        let _slot = self
            .validation_slots
            .acquire()
            .await
            .map_err(|e| RulesetError::Internal(e.to_string()))?;
        let namespace = name.to_owned();
        tokio::task::spawn_blocking(move || rules::validate(&namespace, &content))
            .await
            .map_err(|e| RulesetError::Internal(e.to_string()))
    }

    /// `POST /api/yara/ruleset/`: a new revision of `name` (created when new). With YARA Sync
    /// off, or with `publish`, a valid revision is published at once.
    pub async fn save(
        &self,
        user: &User,
        name: &str,
        content: String,
        publish: bool,
    ) -> Result<(SavedRevision, ValidationOutcome)> {
        let name = RulesetName::parse(name)
            .map_err(|m| RulesetError::invalid("invalid", Some("name"), m))?;
        if content.trim().is_empty() {
            return Err(RulesetError::invalid(
                "invalid",
                Some("content"),
                "This field may not be blank.",
            ));
        }
        if content.len() as u64 > self.max_bytes {
            return Err(RulesetError::invalid(
                "too_large",
                Some("content"),
                format!(
                    "The ruleset text is larger than the limit of {} bytes.",
                    self.max_bytes
                ),
            ));
        }
        if rules::contains_include(&content) {
            return Err(RulesetError::invalid(
                "include_not_allowed",
                Some("content"),
                "A ruleset sent through the API may not use `include`.",
            ));
        }
        let existing = self.store.ruleset(name.as_str()).await?;
        check_write(user, existing.as_ref())?;
        let sha256 = sha256_hex(&content);
        if let Some(ruleset) = &existing
            && let Some(latest) = self
                .store
                .revision(ruleset.id, ruleset.latest_revision)
                .await?
            && latest.sha256 == sha256
        {
            let saved = SavedRevision {
                ruleset: ruleset.clone(),
                created_ruleset: false,
                revision: latest.number,
                new_revision: false,
                published: false,
            };
            return Ok((saved, latest.outcome));
        }
        let outcome = self.validate(name.as_str(), content.clone()).await?;
        let saved = self
            .store
            .save_revision(&NewRevision {
                name,
                owner_id: Some(user.id),
                origin: Origin::Local,
                is_system: false,
                content,
                sha256,
                author: Author::User(user.id),
                outcome: outcome.clone(),
                publish_if_valid: !self.yara_sync || publish,
            })
            .await?;
        if saved.published {
            self.activator.request();
        }
        Ok((saved, outcome))
    }

    pub async fn delete(&self, user: &User, name: &str) -> Result<()> {
        let ruleset = self.get(name).await?;
        check_write(user, Some(&ruleset))?;
        self.store.delete_ruleset(ruleset.id).await?;
        self.activator.request();
        Ok(())
    }

    pub async fn set_enabled(&self, user: &User, name: &str, enabled: bool) -> Result<()> {
        let ruleset = self.get(name).await?;
        check_write(user, Some(&ruleset))?;
        self.store.set_ruleset_enabled(ruleset.id, enabled).await?;
        self.activator.request();
        Ok(())
    }

    /// `publish/all`: the latest revision of every enabled, non-system ruleset whose latest
    /// revision is not the published one.
    pub async fn publish_all(&self, user: &User) -> Result<PublishAllReport> {
        if !self.yara_sync {
            return Err(RulesetError::SyncDisabled);
        }
        if !user.is_superuser {
            return Err(RulesetError::Forbidden(
                "Only a superuser may publish all rulesets.".into(),
            ));
        }
        let candidates: Vec<Ruleset> = self
            .store
            .rulesets()
            .await?
            .into_iter()
            .filter(|r| {
                r.enabled
                    && !r.is_system
                    && r.latest_revision > 0
                    && r.published_revision != Some(r.latest_revision)
            })
            .collect();
        let mut picks = Vec::new();
        let mut errors = Vec::new();
        for ruleset in &candidates {
            if ruleset.latest_valid {
                picks.push((ruleset.id, ruleset.latest_revision));
                continue;
            }
            let revision = self
                .store
                .revision(ruleset.id, ruleset.latest_revision)
                .await?
                .ok_or_else(|| RulesetError::Internal("latest revision missing".into()))?;
            errors.push(PublishError {
                revision_id: revision.id,
                ruleset_name: ruleset.name.clone(),
                message: rules::first_error_message(&revision.outcome.diagnostics),
            });
        }
        self.store.publish(&picks).await?;
        if !picks.is_empty() {
            self.activator.request();
        }
        Ok(PublishAllReport {
            error_messages: errors,
            successful_publish_count: picks.len(),
            total_count: candidates.len(),
        })
    }

    /// Publishes the latest revision of one ruleset, or the given one (rollback).
    pub async fn publish_one(&self, user: &User, name: &str, revision: Option<i64>) -> Result<i64> {
        if !self.yara_sync {
            return Err(RulesetError::SyncDisabled);
        }
        let ruleset = self.get(name).await?;
        if ruleset.is_system {
            return Err(RulesetError::invalid(
                "system_ruleset",
                None,
                format!("`{name}` is a system ruleset; it cannot be published by hand."),
            ));
        }
        check_write(user, Some(&ruleset))?;
        let number = revision.unwrap_or(ruleset.latest_revision);
        if revision.is_none() && ruleset.published_revision == Some(number) {
            return Err(RulesetError::invalid(
                "nothing_to_publish",
                None,
                format!("Nothing to publish: revision {number} of `{name}` is already published."),
            ));
        }
        let chosen = self
            .store
            .revision(ruleset.id, number)
            .await?
            .ok_or_else(|| {
                RulesetError::invalid(
                    "unknown_revision",
                    Some("revision"),
                    format!("`{name}` has no revision {number}."),
                )
            })?;
        if !chosen.outcome.valid {
            return Err(RulesetError::invalid(
                "invalid_revision",
                None,
                format!(
                    "Revision {number} of `{name}` is invalid: {}",
                    rules::first_error_message(&chosen.outcome.diagnostics)
                ),
            ));
        }
        self.store.publish(&[(ruleset.id, number)]).await?;
        self.activator.request();
        Ok(number)
    }
}

/// Regular users write only their own rulesets; superusers any but system ones.
pub fn check_write(user: &User, ruleset: Option<&Ruleset>) -> Result<()> {
    match ruleset {
        Some(r) if r.is_system => Err(RulesetError::Forbidden(format!(
            "`{}` is a system ruleset and is read-only.",
            r.name
        ))),
        Some(r) if !user.is_superuser && r.owner_id != Some(user.id) => {
            Err(RulesetError::Forbidden(format!(
                "You may change only your own rulesets; `{}` is not yours.",
                r.name
            )))
        }
        _ => Ok(()),
    }
}

/// The status of a ruleset on this node (BEHAVIOUR.md 4).
pub fn status(ruleset: &Ruleset, generation: Option<&LoadedGeneration>) -> RulesetStatus {
    if !ruleset.enabled {
        return RulesetStatus::Disabled;
    }
    if ruleset.capped {
        return RulesetStatus::Capped;
    }
    match ruleset.published_revision {
        Some(published) => match generation {
            Some(g) if g.failed.contains_key(&ruleset.id) => RulesetStatus::Error,
            Some(g) if g.members.get(&ruleset.id) == Some(&published) => RulesetStatus::Active,
            _ => RulesetStatus::Pending,
        },
        None if ruleset.latest_valid => RulesetStatus::Pending,
        None => RulesetStatus::Invalid,
    }
}
