//! The generation this node serves, swapped atomically: a reader holds one whole generation
//! (an `Arc`) for as long as it needs it, never a mix of two.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::domain::Timestamp;

/// A generation loaded in memory.
pub struct LoadedGeneration {
    pub number: i64,
    pub created_at: Timestamp,
    pub rules: Arc<yara_x::Rules>,
    /// Ruleset id to the revision number it serves.
    pub members: HashMap<i64, i64>,
    /// Rulesets whose published revision failed to load, with the reason.
    pub failed: HashMap<i64, String>,
    /// The published set (ruleset id to revision number) this generation was built from.
    pub inputs: BTreeMap<i64, i64>,
    /// Namespace (ruleset name) to ruleset id, for the matches a scan reports.
    pub ruleset_ids: HashMap<String, i64>,
}

impl std::fmt::Debug for LoadedGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedGeneration")
            .field("number", &self.number)
            .field("members", &self.members.len())
            .field("failed", &self.failed)
            .finish()
    }
}

#[derive(Default)]
pub struct ActiveRules {
    current: RwLock<Option<Arc<LoadedGeneration>>>,
}

impl ActiveRules {
    pub fn current(&self) -> Option<Arc<LoadedGeneration>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Installs `generation` unless a newer one is already in place; returns whether it did.
    pub fn install(&self, generation: Arc<LoadedGeneration>) -> bool {
        let mut slot = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|g| g.number >= generation.number) {
            return false;
        }
        *slot = Some(generation);
        true
    }
}
