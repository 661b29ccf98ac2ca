//! Validation of one revision: compiled on its own, in its own namespace.

use serde_json::Value;

use crate::domain::{Diagnostic, ValidationOutcome};

/// External variables declared for every compilation (BEHAVIOUR.md 3).
pub const EXTERNALS: [&str; 5] = ["filename", "filepath", "extension", "filetype", "owner"];

/// Compiles `source` alone. Valid only when YARA-X reported no error: YARA-X keeps the good
/// rules of a source with errors, so "it built" never means "it is valid". Blocking.
pub fn validate(namespace: &str, source: &str) -> ValidationOutcome {
    let mut compiler = super::new_compiler();
    compiler.new_namespace(namespace);
    let _ = compiler.add_source(yara_x::SourceCode::from(source).with_origin(namespace));
    let mut diagnostics: Vec<Diagnostic> = compiler
        .errors()
        .iter()
        .map(|e| diagnostic("error", serde_json::to_value(e).unwrap_or(Value::Null)))
        .collect();
    let valid = diagnostics.is_empty();
    diagnostics.extend(
        compiler
            .warnings()
            .iter()
            .map(|w| diagnostic("warning", serde_json::to_value(w).unwrap_or(Value::Null))),
    );
    let rules = compiler.build();
    ValidationOutcome {
        valid,
        diagnostics,
        rule_count: i64::try_from(rules.iter().count()).unwrap_or(i64::MAX),
    }
}

fn diagnostic(severity: &str, report: Value) -> Diagnostic {
    let text = |key: &str| report.get(key).and_then(Value::as_str).map(str::to_owned);
    let number = |key: &str| report.get(key).and_then(Value::as_u64);
    Diagnostic {
        severity: severity.to_owned(),
        code: text("code").unwrap_or_else(|| "E000".into()),
        message: text("title").unwrap_or_else(|| "unknown compiler error".into()),
        line: number("line"),
        column: number("column"),
    }
}

/// True when the text has an `include` directive (a line that starts with `include "`).
/// Rulesets sent through the API may not include anything.
pub fn contains_include(source: &str) -> bool {
    let mut in_block_comment = false;
    for line in source.lines() {
        let mut rest = line.trim_start();
        if in_block_comment {
            match rest.find("*/") {
                Some(end) => {
                    rest = rest[end + 2..].trim_start();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(after) = rest.strip_prefix("include")
            && after.trim_start().starts_with('"')
            && after.starts_with(|c: char| c.is_whitespace() || c == '"')
        {
            return true;
        }
        if rest.starts_with("/*") && !rest.contains("*/") {
            in_block_comment = true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_rule_is_valid_with_its_count() {
        let out = validate(
            "t",
            "rule a { strings: $x = \"evil\" condition: $x }\nrule b { condition: filesize < 10 }",
        );
        assert!(out.valid, "{:?}", out.diagnostics);
        assert_eq!(out.rule_count, 2);
    }

    #[test]
    fn a_source_with_an_error_is_invalid_even_though_its_good_rules_build() {
        let out = validate(
            "t",
            "rule good { condition: true }\nrule bad { condition: undefined_thing }\n",
        );
        assert!(!out.valid);
        assert_eq!(out.rule_count, 1, "YARA-X keeps the good rule");
        let first = out.first_error().unwrap();
        assert!(first.code.starts_with('E'), "{first:?}");
        assert_eq!(first.line, Some(2));
        assert!(first.column.is_some());
    }

    #[test]
    fn externals_and_relaxed_regexps_compile() {
        let out = validate(
            "t",
            "rule x { strings: $r = /a\\Rb/ condition: $r and filename == \"a.exe\" and owner != \"\" }",
        );
        assert!(out.valid, "{:?}", out.diagnostics);
    }

    #[test]
    fn unknown_modules_are_named() {
        let out = validate("t", "import \"magic\"\nrule x { condition: true }");
        assert!(!out.valid);
        assert!(
            out.diagnostics[0].message.contains("magic"),
            "{:?}",
            out.diagnostics
        );
    }

    #[test]
    fn include_detection() {
        assert!(contains_include(
            "include \"other.yar\"\nrule x { condition: true }"
        ));
        assert!(contains_include("  include  \"a.yar\""));
        assert!(!contains_include(
            "// include \"a.yar\"\nrule x { condition: true }"
        ));
        assert!(!contains_include(
            "/*\ninclude \"a.yar\"\n*/\nrule x { condition: true }"
        ));
        assert!(!contains_include("rule includes { condition: true }"));
    }
}
