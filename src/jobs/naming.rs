//! Ruleset names for imported files (BEHAVIOUR.md 2): the file's stem with every character
//! outside `[A-Za-z0-9_-]` replaced by `_`; when taken, prefixed with the repository's name;
//! then `_2`, `_3`, ...

use std::collections::HashSet;

use crate::domain::RulesetName;

pub fn sanitize(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The file name without its last extension.
pub fn stem(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    match file.rfind('.') {
        Some(dot) if dot > 0 => &file[..dot],
        _ => file,
    }
}

fn fit(name: &str, room: usize) -> String {
    name.chars().take(64 - room).collect()
}

/// The first free valid name for the file at `path` of the repository named `repository`.
pub fn allocate(path: &str, repository: &str, taken: &HashSet<String>) -> RulesetName {
    let base = sanitize(stem(path));
    let prefixed = format!("{}_{}", sanitize(repository), base);
    let usable = |candidate: &str| {
        RulesetName::parse(candidate)
            .ok()
            .filter(|n| !taken.contains(n.as_str()))
    };
    if let Some(name) = usable(&fit(&base, 0)) {
        return name;
    }
    if let Some(name) = usable(&fit(&prefixed, 0)) {
        return name;
    }
    for n in 2u64.. {
        let suffix = format!("_{n}");
        let candidate = format!("{}{suffix}", fit(&prefixed, suffix.len()));
        if let Some(name) = usable(&candidate) {
            return name;
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let mut taken = HashSet::new();
        let path = "yara/ransomware/Win32.Ransomware.GandCrab.yara";
        assert_eq!(
            allocate(path, "acme rules", &taken).as_str(),
            "Win32_Ransomware_GandCrab"
        );
        taken.insert("Win32_Ransomware_GandCrab".to_owned());
        assert_eq!(
            allocate(path, "acme rules", &taken).as_str(),
            "acme_rules_Win32_Ransomware_GandCrab"
        );
        taken.insert("acme_rules_Win32_Ransomware_GandCrab".to_owned());
        assert_eq!(
            allocate(path, "acme rules", &taken).as_str(),
            "acme_rules_Win32_Ransomware_GandCrab_2"
        );
    }

    #[test]
    fn short_long_and_reserved_stems_still_get_valid_names() {
        let taken = HashSet::new();
        assert_eq!(allocate("a.yar", "repo", &taken).as_str(), "repo_a");
        assert_eq!(allocate("all.yar", "repo", &taken).as_str(), "repo_all");
        let long = format!("{}.yar", "x".repeat(100));
        assert_eq!(allocate(&long, "repo", &taken).as_str().len(), 64);
        assert_eq!(
            allocate("rules/REDFLARE (Gorat)/x (1).yar", "m", &taken).as_str(),
            "x__1_"
        );
    }
}
