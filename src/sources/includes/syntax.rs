//! The syntax of YARA's `include "..."` directive, as the lexer sees it: at the start of a line
//! (after whitespace), outside `//` and `/* */` comments; and what makes a file an index file.
//! Pure text functions, no git.

/// One `include "path"` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Directive {
    /// 1-based line.
    pub line: u64,
    /// Byte range of `include "path"` in the text.
    pub start: usize,
    pub end: usize,
    pub path: String,
}

/// The include directives of a source: `include` and a quoted path at the start of a line (after
/// whitespace), outside comments.
pub(super) fn directives(text: &str) -> Vec<Directive> {
    let code = blank_comments(text);
    let mut found = Vec::new();
    let mut offset = 0;
    for (index, line) in code.split_inclusive('\n').enumerate() {
        let indent = line.len() - line.trim_start().len();
        if let Some((path, len)) = directive_at(&line[indent..]) {
            found.push(Directive {
                line: index as u64 + 1,
                start: offset + indent,
                end: offset + indent + len,
                path,
            });
        }
        offset += line.len();
    }
    found
}

/// A file made only of include directives, comments and blank lines, with at least one include.
pub(crate) fn is_index(text: &str) -> bool {
    let code = blank_comments(text);
    let mut includes = 0;
    for line in code.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match directive_at(line) {
            Some((_, len)) if line[len..].trim().is_empty() => includes += 1,
            _ => return false,
        }
    }
    includes > 0
}

/// The path and length of a directive at the start of `s`.
fn directive_at(s: &str) -> Option<(String, usize)> {
    let rest = s.strip_prefix("include")?;
    let after = rest.trim_start_matches([' ', '\t']);
    let quoted = after.strip_prefix('"')?;
    let mut path = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((path, s.len() - quoted.len() + i + 1)),
            '\\' => path.push(chars.next()?.1),
            '\n' | '\r' => return None,
            c => path.push(c),
        }
    }
    None
}

/// `text` with the characters of `//` and `/* */` comments replaced by spaces (line breaks and
/// byte offsets kept); double-quoted strings and `/regex/` literals are skipped over, so a `//`
/// inside them is not a comment.
fn blank_comments(text: &str) -> String {
    #[derive(PartialEq)]
    enum State {
        Code,
        Str,
        Regex,
        Line,
        Block,
    }
    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    let mut chars = text.chars().peekable();
    let blank = |out: &mut String, c: char| match c {
        '\n' => out.push('\n'),
        c => out.extend(std::iter::repeat_n(' ', c.len_utf8())),
    };
    while let Some(c) = chars.next() {
        match state {
            State::Code => match (c, chars.peek()) {
                ('"', _) => state = State::Str,
                ('/', Some('/')) => state = State::Line,
                ('/', Some('*')) => {
                    chars.next();
                    out.push_str("  ");
                    state = State::Block;
                    continue;
                }
                ('/', _) => state = State::Regex,
                _ => {}
            },
            State::Str | State::Regex => match c {
                '\\' => {
                    out.push(c);
                    if let Some(&next) = chars.peek().filter(|&&n| n != '\n') {
                        out.push(next);
                        chars.next();
                    }
                    continue;
                }
                '"' if state == State::Str => state = State::Code,
                '/' if state == State::Regex => state = State::Code,
                '\n' => state = State::Code,
                _ => {}
            },
            State::Line | State::Block => {
                if c == '\n' && state == State::Line {
                    state = State::Code;
                } else if c == '*' && state == State::Block && chars.peek() == Some(&'/') {
                    chars.next();
                    out.push_str("  ");
                    state = State::Code;
                    continue;
                }
                blank(&mut out, c);
                continue;
            }
        }
        if state == State::Line {
            blank(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_found_at_line_starts_only() {
        let text = "include \"a.yar\"\r\n  include\t\"b \\\"q\\\".yar\"\nrule included_x { \
                    condition: true }\nx include \"c.yar\"\ninclude_me\n";
        let found = directives(text);
        let paths: Vec<_> = found.iter().map(|d| (d.line, d.path.as_str())).collect();
        assert_eq!(paths, [(1, "a.yar"), (2, "b \"q\".yar")]);
        assert_eq!(&text[found[0].start..found[0].end], "include \"a.yar\"");
    }

    #[test]
    fn index_files_hold_only_includes_and_comments() {
        assert!(is_index(
            "// x\ninclude \"a.yar\"\r\n/* y\n */\n\ninclude \"b.yar\" // z"
        ));
        assert!(!is_index("// only comments\n"));
        assert!(!is_index("include \"a.yar\"\nrule r { condition: true }\n"));
        assert!(!is_index("include \"a.yar\" rule r { condition: true }\n"));
        assert!(!is_index("import \"pe\"\ninclude \"a.yar\"\n"));
    }
}
