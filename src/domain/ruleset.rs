//! Rulesets and their immutable revisions.

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// A ruleset name: `[A-Za-z0-9_-]`, 3 to 64 characters; `all` and `ruleset` are reserved
/// because they would shadow the publish routes (API.md 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RulesetName(String);

impl RulesetName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(3..=64).contains(&len) {
            return Err("A ruleset name is 3 to 64 characters long.".into());
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("A ruleset name may contain only letters, digits, `_` and `-`.".into());
        }
        if raw == "all" || raw == "ruleset" {
            return Err(format!("`{raw}` is a reserved name."));
        }
        Ok(RulesetName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One error or warning of a revision, as YARA-X reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `error` or `warning`.
    pub severity: String,
    /// YARA-X's stable code, such as `E009`.
    pub code: String,
    pub message: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

/// What validation found in one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOutcome {
    pub valid: bool,
    pub diagnostics: Vec<Diagnostic>,
    pub rule_count: i64,
}

impl ValidationOutcome {
    pub fn first_error(&self) -> Option<&Diagnostic> {
        self.diagnostics.iter().find(|d| d.severity == "error")
    }
}

/// Ruleset status, as the v2 list reports it (BEHAVIOUR.md 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesetStatus {
    Active,
    Disabled,
    Pending,
    Invalid,
    Error,
    Capped,
}

impl RulesetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RulesetStatus::Active => "active",
            RulesetStatus::Disabled => "disabled",
            RulesetStatus::Pending => "pending",
            RulesetStatus::Invalid => "invalid",
            RulesetStatus::Error => "error",
            RulesetStatus::Capped => "capped",
        }
    }
}

/// A stored ruleset (without its revisions' text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub id: i64,
    pub name: String,
    pub owner_id: Option<i64>,
    pub owner: Option<String>,
    pub repository_id: Option<i64>,
    pub source_path: Option<String>,
    pub enabled: bool,
    pub is_system: bool,
    pub latest_revision: i64,
    pub published_revision: Option<i64>,
    pub removed_upstream: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Validity and rule count of the latest revision.
    pub latest_valid: bool,
    pub latest_rule_count: i64,
    /// Matched more samples than the match cap: no longer records matches.
    pub capped: bool,
}

/// Who made a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    User(i64),
    Repository { id: i64, commit: String },
}

/// One immutable revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: i64,
    pub ruleset_id: i64,
    pub number: i64,
    pub content: String,
    pub sha256: String,
    pub author_user_id: Option<i64>,
    pub author_repository_id: Option<i64>,
    pub author_commit: Option<String>,
    pub created_at: Timestamp,
    pub outcome: ValidationOutcome,
}

/// One active revision going into a generation, with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ruleset_id: i64,
    pub ruleset: String,
    pub revision_id: i64,
    pub revision: i64,
    pub content: String,
}

/// Where a ruleset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Uploaded through the API.
    Local,
    /// Imported from a file of a repository.
    Repository { id: i64, path: String },
}

/// A new revision to store (and the ruleset to create when the name is new).
#[derive(Debug, Clone)]
pub struct NewRevision {
    pub name: RulesetName,
    /// Owner of a ruleset this creates.
    pub owner_id: Option<i64>,
    pub origin: Origin,
    pub is_system: bool,
    pub content: String,
    pub sha256: String,
    pub author: Author,
    pub outcome: ValidationOutcome,
    /// Publish the revision at once when it is valid (YARA Sync off, or `publish=true`).
    pub publish_if_valid: bool,
}

/// What storing a revision did.
#[derive(Debug, Clone)]
pub struct SavedRevision {
    pub ruleset: Ruleset,
    pub created_ruleset: bool,
    /// The revision number that now holds this content (the existing one when unchanged).
    pub revision: i64,
    pub new_revision: bool,
    pub published: bool,
}

/// A member of a stored generation (no text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMember {
    pub ruleset_id: i64,
    pub ruleset: String,
    pub revision_id: i64,
    pub revision: i64,
}

/// A generation as stored.
#[derive(Debug, Clone)]
pub struct StoredGeneration {
    pub number: i64,
    pub created_at: Timestamp,
    pub engine_version: String,
    pub members: Vec<GenerationMember>,
    pub failed: Vec<(i64, String)>,
    pub artifact: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_policy() {
        for ok in ["abc", "Win32_Ransomware_GandCrab", "a-b_c", &"x".repeat(64)] {
            assert!(RulesetName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "all",
            "ruleset",
            "a b",
            "a.b",
            "ünï",
            &"x".repeat(65),
            "",
        ] {
            assert!(RulesetName::parse(bad).is_err(), "{bad}");
        }
        assert!(
            RulesetName::parse("All").is_ok(),
            "names are case-sensitive"
        );
    }
}
