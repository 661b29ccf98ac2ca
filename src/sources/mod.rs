//! Git sources: resolving a remote's branch, fetching into a local mirror, reading a commit's
//! rule files and inlining their includes, with credentials kept in memory and hard timeouts.
//! Blocking code: callers run it with `spawn_blocking`.
//!
//! Must not import `http` or `store`.

pub mod fetch;
pub mod git;
pub mod includes;
pub mod tree;

#[cfg(test)]
mod testing;

pub use fetch::{FetchLimits, Fetched, fetch_branch};
pub use git::{ConnectionFailure, ConnectionTest, RemoteAuth, probe_remote};
pub use includes::{IncludeProblem, Inlined, inline_includes};
pub use tree::{FileKind, TreeFile, read_text, rule_files};
