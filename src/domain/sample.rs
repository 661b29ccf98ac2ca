//! Scanned samples and the matches recorded for them.

use super::Timestamp;

/// One rule that matched a sample, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchRecord {
    pub ruleset_id: i64,
    pub rule: String,
    pub classification: String,
}

/// A scanned sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub sha256: String,
    pub size: i64,
    pub filename: Option<String>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// What one scan leaves to record: the sample and the rules that matched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedSample {
    pub sample: Sample,
    pub matches: Vec<MatchRecord>,
}

/// Match counters of one ruleset (the v2 list's `*_match_count` and `last_matched`), counted in
/// distinct samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchStats {
    pub malicious: i64,
    pub suspicious: i64,
    pub goodware: i64,
    pub unknown: i64,
    pub last_matched: Option<Timestamp>,
}
