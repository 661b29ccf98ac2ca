//! YARA-X: validating a revision, building a generation (all active revisions compiled
//! together, one namespace per ruleset), and holding the generation this node serves.
//!
//! Blocking code (compilation) is called from `spawn_blocking`. Must not import `http`.

pub mod active;
pub mod generation;
pub mod scan;
pub mod validate;

pub use active::{ActiveRules, LoadedGeneration};
pub use generation::{CompiledSet, Member, compile_set, first_error_message};
pub use scan::{RuleMatch, ScanGlobals, ScanOutcome, ScanPool, classify};
pub use validate::{EXTERNALS, contains_include, validate};

/// The YARA-X version that compiles here; stored with every compiled artifact.
pub fn engine_version() -> String {
    format!("yara-x {}", yara_x::VERSION)
}

/// A compiler with the options every compilation here uses: relaxed regular expressions
/// (libyara-era rules), includes disabled (they are inlined from git, never read from disk),
/// and the external variables public rule sets use, declared as strings.
pub(crate) fn new_compiler<'a>() -> yara_x::Compiler<'a> {
    let mut compiler = yara_x::Compiler::new();
    compiler
        .relaxed_re_syntax(true)
        .enable_includes(false)
        .max_warnings(50);
    for name in EXTERNALS {
        compiler
            .define_global(name, "")
            .expect("external variable names are valid identifiers");
    }
    compiler
}
