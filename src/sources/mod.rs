//! Git sources: resolving a remote's branch, fetching, reading trees, with credentials kept in
//! memory and hard timeouts. Blocking code: callers run it with `spawn_blocking`.
//!
//! Must not import `http` or `store`.

pub mod git;

pub use git::{ConnectionFailure, ConnectionTest, RemoteAuth, probe_remote};
