//! `include "..."` directives of YARA sources: finding them outside comments, telling index files
//! (only includes and comments) apart, and inlining them from the same commit's tree, so the
//! compiler never follows an include on the server's file system.
//!
//! Owns the reading of included files; must not import `http` or `store`.

use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree};

use syntax::{Directive, directives};

mod syntax;

pub(crate) use syntax::is_index;

/// An include that could not be inlined; the directive is left out of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeProblem {
    /// 1-based line, in the file being inlined, of the directive that led to the problem.
    pub line: u64,
    pub message: String,
}

/// A source with its includes inlined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inlined {
    pub text: String,
    /// The source had at least one include directive (inlined or not).
    pub has_includes: bool,
    pub problems: Vec<IncludeProblem>,
}

/// Inlined files per source at most: diamonds of includes can otherwise grow exponentially.
const MAX_INCLUSIONS: usize = 1000;

/// Inlines `include "x"` directives of the file at `path` (text `text`) from the same commit's
/// tree, relative to the including file's folder, recursively. An absolute path, a path that
/// leaves the repository (`..` above the root), a missing file and a cycle are problems (line of
/// the directive in the including file, message naming the path), and that directive is left out.
/// Nothing is ever read from the server's file system.
///
/// A problem inside an included file is reported at the line of the top-level directive that
/// led to it, and its message names the file and line where it occurred.
pub fn inline_includes(mirror: &Path, commit: &str, path: &str, text: &str) -> Inlined {
    let found = directives(text);
    if found.is_empty() {
        return Inlined {
            text: text.to_owned(),
            has_includes: false,
            problems: Vec::new(),
        };
    }
    let repo = match Repository::open_bare(mirror) {
        Ok(repo) => repo,
        Err(e) => return unreadable(text, &found, e.message()),
    };
    let tree = match commit_tree(&repo, commit) {
        Ok(tree) => tree,
        Err(e) => return unreadable(text, &found, e.message()),
    };
    let mut inliner = Inliner {
        repo: &repo,
        tree,
        problems: Vec::new(),
        inclusions: 0,
    };
    let mut stack = vec![path.to_owned()];
    let text = inliner.expand(text, &mut stack, None);
    Inlined {
        text,
        has_includes: true,
        problems: inliner.problems,
    }
}

fn commit_tree<'r>(repo: &'r Repository, commit: &str) -> Result<Tree<'r>, git2::Error> {
    repo.find_commit(Oid::from_str(commit)?)?.tree()
}

/// Every directive left out, as a problem, when the commit cannot be read.
fn unreadable(text: &str, found: &[Directive], why: &str) -> Inlined {
    let problems = found.iter().map(|d| IncludeProblem {
        line: d.line,
        message: format!("include \"{}\": the commit cannot be read: {why}", d.path),
    });
    Inlined {
        text: splice(text, found, |_| String::new()),
        has_includes: true,
        problems: problems.collect(),
    }
}

struct Inliner<'r> {
    repo: &'r Repository,
    tree: Tree<'r>,
    problems: Vec<IncludeProblem>,
    inclusions: usize,
}

impl Inliner<'_> {
    /// `text` of the file on top of `stack`, with its includes inlined; `top_line` is the line of
    /// the top-level directive when this file is itself included.
    fn expand(&mut self, text: &str, stack: &mut Vec<String>, top_line: Option<u64>) -> String {
        let including = stack.last().cloned().unwrap_or_default();
        splice(text, &directives(text), |d| {
            let line = top_line.unwrap_or(d.line);
            let inlined = resolve(&including, &d.path).and_then(|target| {
                if let Some(start) = stack.iter().position(|p| *p == target) {
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(target);
                    return Err(format!("include cycle ({})", cycle.join(" -> ")));
                }
                self.inclusions += 1;
                if self.inclusions > MAX_INCLUSIONS {
                    return Err(format!("more than {MAX_INCLUSIONS} files included"));
                }
                let content = self.read(&target)?;
                stack.push(target);
                let expanded = self.expand(&content, stack, Some(line));
                stack.pop();
                Ok(expanded)
            });
            inlined.unwrap_or_else(|why| {
                let at = match top_line {
                    Some(_) => format!(" in {including} line {}", d.line),
                    None => String::new(),
                };
                self.problems.push(IncludeProblem {
                    line,
                    message: format!("include \"{}\"{at}: {why}", d.path),
                });
                String::new()
            })
        })
    }

    /// The text of a regular file of the commit's tree (never a symlink, never from disk).
    fn read(&self, target: &str) -> Result<String, String> {
        let entry = self
            .tree
            .get_path(Path::new(target))
            .map_err(|_| format!("`{target}` does not exist in this commit"))?;
        if entry.filemode() == 0o120000 {
            return Err(format!("`{target}` is a symlink"));
        }
        if entry.kind() != Some(ObjectType::Blob) {
            return Err(format!("`{target}` is not a file"));
        }
        let blob = self
            .repo
            .find_blob(entry.id())
            .map_err(|e| format!("`{target}` cannot be read: {}", e.message()))?;
        String::from_utf8(blob.content().to_vec()).map_err(|_| format!("`{target}` is not UTF-8"))
    }
}

/// The repository path `target` names, relative to the folder of `including`.
fn resolve(including: &str, target: &str) -> Result<String, String> {
    let bytes = target.as_bytes();
    let drive = bytes.len() > 1 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if target.starts_with(['/', '\\']) || drive {
        return Err("absolute paths are not allowed".into());
    }
    let mut parts: Vec<&str> = including.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts
                    .pop()
                    .ok_or_else(|| "the path leaves the repository".to_owned())?;
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err("the path names no file".into());
    }
    Ok(parts.join("/"))
}

/// `text` with each directive replaced by what `replace` returns for it.
fn splice(
    text: &str,
    found: &[Directive],
    mut replace: impl FnMut(&Directive) -> String,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for d in found {
        out.push_str(&text[last..d.start]);
        out.push_str(&replace(d));
        last = d.end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::Upstream;

    const FILES: &[(&str, &[u8])] = &[
        (
            "rules/main.yar",
            b"include \"common/base.yar\"\nrule m { condition: base }\n",
        ),
        (
            "rules/common/base.yar",
            b"include \"../lib/util.yar\"\nrule base { condition: util }\n",
        ),
        ("rules/lib/util.yar", b"rule util { condition: true }"),
        (
            "rules/cyc/a.yar",
            b"include \"b.yar\"\nrule a { condition: true }\n",
        ),
        (
            "rules/cyc/b.yar",
            b"include \"a.yar\"\nrule b { condition: true }\n",
        ),
        ("rules/nested.yar", b"include \"cyc/a.yar\"\n"),
    ];

    fn inline(path: &str, text: &str) -> Inlined {
        let (mirror, commit) = Upstream::mirror_of(FILES);
        inline_includes(mirror.path(), &commit, path, text)
    }

    fn lines_and_messages(inlined: &Inlined) -> Vec<(u64, &str)> {
        let problems = inlined.problems.iter();
        problems.map(|p| (p.line, p.message.as_str())).collect()
    }

    #[test]
    fn relative_and_nested_includes_are_inlined() {
        let text = std::str::from_utf8(FILES[0].1).unwrap();
        let inlined = inline("rules/main.yar", text);
        assert!(inlined.has_includes);
        assert_eq!(inlined.problems, []);
        assert_eq!(
            inlined.text,
            "rule util { condition: true }\nrule base { condition: util }\n\
             \nrule m { condition: base }\n"
        );
    }

    #[test]
    fn paths_outside_the_repository_absolute_or_missing_are_problems() {
        let text = "rule before { condition: true }\n\
                    include \"../../etc/passwd\"\n\
                    \tinclude \"/etc/passwd\" // absolute\n\
                    include \"missing.yar\"\n\
                    include \"../rules/lib/util.yar\"\n";
        let inlined = inline("rules/top.yar", text);
        assert_eq!(
            lines_and_messages(&inlined),
            [
                (
                    2,
                    "include \"../../etc/passwd\": the path leaves the repository"
                ),
                (3, "include \"/etc/passwd\": absolute paths are not allowed"),
                (
                    4,
                    "include \"missing.yar\": `rules/missing.yar` does not exist in this commit"
                ),
            ]
        );
        assert_eq!(
            inlined.text,
            "rule before { condition: true }\n\n\t // absolute\n\n\
             rule util { condition: true }\n"
        );
    }

    #[test]
    fn a_cycle_is_a_problem_and_ends() {
        let text = std::str::from_utf8(FILES[5].1).unwrap();
        let inlined = inline("rules/nested.yar", text);
        assert_eq!(
            lines_and_messages(&inlined),
            [(
                1,
                "include \"a.yar\" in rules/cyc/b.yar line 1: include cycle \
                 (rules/cyc/a.yar -> rules/cyc/b.yar -> rules/cyc/a.yar)"
            )]
        );
        assert_eq!(
            inlined.text,
            "\nrule b { condition: true }\n\nrule a { condition: true }\n\n"
        );

        let text = std::str::from_utf8(FILES[3].1).unwrap();
        let inlined = inline("rules/cyc/a.yar", text);
        assert_eq!(inlined.problems.len(), 1);
        assert_eq!(inlined.problems[0].line, 1);
    }

    #[test]
    fn includes_in_comments_are_ignored() {
        let text = "// include \"nope.yar\"\n\
                    /* a block\n\
                    include \"nope.yar\"\n\
                    */ rule r {\n\
                    strings: $a = \"http://x /* not a comment\" $b = /a\\/*b/\n\
                    condition: any of them }\n\
                    include \"lib/util.yar\"\n";
        let inlined = inline("rules/r.yar", text);
        assert!(inlined.has_includes);
        assert_eq!(inlined.problems, []);
        assert!(inlined.text.ends_with("}\nrule util { condition: true }\n"));
        assert!(
            inlined
                .text
                .starts_with("// include \"nope.yar\"\n/* a block")
        );

        let plain = "rule r { condition: true } // include \"x\"\n";
        let inlined = inline("r.yar", plain);
        assert!(!inlined.has_includes);
        assert_eq!(inlined.text, plain);
    }

    #[test]
    fn resolution_stays_inside_the_repository() {
        assert_eq!(resolve("a/b/c.yar", "../d.yar").unwrap(), "a/d.yar");
        assert_eq!(resolve("c.yar", "./x/./y.yar").unwrap(), "x/y.yar");
        assert!(resolve("a/c.yar", "../../d.yar").is_err());
        assert!(resolve("c.yar", "C:\\rules\\x.yar").is_err());
        assert!(resolve("c.yar", "\\\\server\\x.yar").is_err());
        assert!(resolve("c.yar", "").is_err());
    }
}
