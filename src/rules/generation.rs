//! A generation: every active revision compiled together, one namespace per ruleset.

use crate::domain::Diagnostic;
pub use crate::domain::Member;

/// The outcome of compiling a set: the rules, and the members that could not be compiled into
/// it (left out, so the others still load).
pub struct CompiledSet {
    pub rules: yara_x::Rules,
    pub failed: Vec<(i64, String)>,
}

/// Compiles `members`, each in a namespace named after its ruleset. A member whose source fails
/// here (it validated alone, so this is rare: an engine change, say) is left out and reported,
/// and the set is compiled again without it, because YARA-X would keep its good rules. Blocking.
pub fn compile_set(members: &[Member]) -> CompiledSet {
    let mut compiler = super::new_compiler();
    let failed = add_all(&mut compiler, members, &[]);
    if failed.is_empty() {
        return CompiledSet {
            rules: compiler.build(),
            failed,
        };
    }
    let excluded: Vec<i64> = failed.iter().map(|(id, _)| *id).collect();
    let mut compiler = super::new_compiler();
    let again = add_all(&mut compiler, members, &excluded);
    debug_assert!(again.is_empty());
    CompiledSet {
        rules: compiler.build(),
        failed,
    }
}

fn add_all(
    compiler: &mut yara_x::Compiler<'_>,
    members: &[Member],
    excluded: &[i64],
) -> Vec<(i64, String)> {
    let mut failed = Vec::new();
    for member in members.iter().filter(|m| !excluded.contains(&m.ruleset_id)) {
        compiler.new_namespace(&member.ruleset);
        let before = compiler.errors().len();
        let source = yara_x::SourceCode::from(member.content.as_str()).with_origin(&member.ruleset);
        if compiler.add_source(source).is_err() || compiler.errors().len() > before {
            let message = compiler
                .errors()
                .get(before)
                .and_then(|e| serde_json::to_value(e).ok())
                .and_then(|v| v.get("title").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "the ruleset failed to compile".into());
            failed.push((member.ruleset_id, message));
        }
    }
    failed
}

/// The first error of a stored diagnostic list, for `error_messages` and 400 answers.
pub fn first_error_message(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .find(|d| d.severity == "error")
        .map(|d| match (d.line, d.column) {
            (Some(line), Some(column)) => {
                format!("{}: {} (line {line}, column {column})", d.code, d.message)
            }
            _ => format!("{}: {}", d.code, d.message),
        })
        .unwrap_or_else(|| "the revision does not compile".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: i64, name: &str, content: &str) -> Member {
        Member {
            ruleset_id: id,
            ruleset: name.into(),
            revision_id: id,
            revision: 1,
            content: content.into(),
        }
    }

    #[test]
    fn namespaces_keep_same_named_rules_apart() {
        let set = compile_set(&[
            member(1, "one", "rule same { condition: true }"),
            member(2, "two", "rule same { condition: true }"),
        ]);
        assert!(set.failed.is_empty());
        assert_eq!(set.rules.iter().count(), 2);
    }

    #[test]
    fn a_failing_member_is_left_out_entirely() {
        let set = compile_set(&[
            member(1, "good", "rule g { condition: true }"),
            member(
                2,
                "bad",
                "rule ok { condition: true }\nrule b { condition: nope }",
            ),
        ]);
        assert_eq!(set.failed.len(), 1);
        assert_eq!(set.failed[0].0, 2);
        let names: Vec<&str> = set.rules.iter().map(|r| r.identifier()).collect();
        assert_eq!(names, vec!["g"], "no rule of the failing member survives");
    }
}
