//! Jobs: importing repositories, and the update job that does it on a schedule or on demand.
//!
//! Must not import `http`.

pub mod import;
pub mod naming;
pub mod update;

pub use import::{ImportFailure, ImportMode, Importer};
pub use update::{JobError, UpdateJob};
