//! Repositories ("YARA online sources"): their URL, name, branch and import preference.

use serde::Serialize;
use url::Url;

use super::Timestamp;

/// `source_type` of API.md 2, derived from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceType {
    Generic = 0,
    GitHub = 1,
    GitLab = 2,
    Bitbucket = 3,
    Local = 4,
}

impl SourceType {
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Self {
        match code {
            1 => SourceType::GitHub,
            2 => SourceType::GitLab,
            3 => SourceType::Bitbucket,
            4 => SourceType::Local,
            _ => SourceType::Generic,
        }
    }

    /// The user name sent with an access token over HTTP basic authentication; each hosting
    /// service documents its own, and plain git servers ignore it.
    pub fn token_username(self) -> &'static str {
        match self {
            SourceType::GitLab => "oauth2",
            SourceType::Bitbucket => "x-token-auth",
            _ => "x-access-token",
        }
    }
}

/// A repository URL that passed the policy of API.md 2: an allowed scheme, no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl(Url);

impl RepoUrl {
    pub fn parse(raw: &str, allow_local: bool) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("This field may not be blank.".into());
        }
        let url = Url::parse(raw).map_err(|_| {
            "Enter a valid URL such as https://github.com/owner/repository (scp-style git@host:path is not supported; use ssh://)."
                .to_owned()
        })?;
        match url.scheme() {
            "https" | "http" | "ssh" | "git" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err("The URL has no host.".into());
                }
            }
            "file" => {
                if !allow_local {
                    return Err("Local (file://) repositories are not allowed by this server's configuration.".into());
                }
                if url.path().is_empty() || url.path() == "/" {
                    return Err("A file:// URL needs a path.".into());
                }
            }
            other => {
                return Err(format!(
                    "The scheme `{other}` is not allowed; use https, http, ssh or git."
                ));
            }
        }
        if !url.username().is_empty() && url.scheme() != "ssh" || url.password().is_some() {
            return Err(
                "The URL may not carry credentials; put the access token in api_token.".into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("The URL may not have a query or a fragment.".into());
        }
        Ok(RepoUrl(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn source_type(&self) -> SourceType {
        if self.0.scheme() == "file" {
            return SourceType::Local;
        }
        let host = self.0.host_str().unwrap_or_default().to_ascii_lowercase();
        let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if is("github.com") {
            SourceType::GitHub
        } else if is("gitlab.com") || host.starts_with("gitlab.") {
            SourceType::GitLab
        } else if is("bitbucket.org") || host.starts_with("bitbucket.") {
            SourceType::Bitbucket
        } else {
            SourceType::Generic
        }
    }

    pub fn is_local(&self) -> bool {
        self.0.scheme() == "file"
    }
}

/// A repository name: 1 to 128 characters, not only white space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("This field may not be blank.".into());
        }
        if name.chars().count() > 128 {
            return Err("Ensure this field has no more than 128 characters.".into());
        }
        if name.chars().any(char::is_control) {
            return Err("The name may not contain control characters.".into());
        }
        Ok(RepositoryName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A branch name that git accepts as `refs/heads/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch(String);

impl Branch {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.trim();
        let valid = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('-')
            && !name.starts_with('/')
            && !name.ends_with('/')
            && !name.ends_with(".lock")
            && !name.ends_with('.')
            && !name.contains("..")
            && !name.contains("//")
            && !name.contains("@{")
            && name != "@"
            && !name
                .chars()
                .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
            && !name.split('/').any(|part| part.starts_with('.'));
        if valid {
            Ok(Branch(name.to_owned()))
        } else {
            Err(format!("`{name}` is not a valid git branch name."))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `import_update_preferences`: what the update job does with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPreference {
    Manual = 0,
    AutoUpdate = 1,
    AutoImport = 2,
}

impl ImportPreference {
    pub fn from_code(code: i64) -> Result<Self, String> {
        match code {
            0 => Ok(ImportPreference::Manual),
            1 => Ok(ImportPreference::AutoUpdate),
            2 => Ok(ImportPreference::AutoImport),
            other => Err(format!(
                "`{other}` is not a valid choice; use 0 (Manual), 1 (Auto-Update) or 2 (Auto-Update and Auto-Import)."
            )),
        }
    }

    pub fn code(self) -> i64 {
        self as i64
    }
}

/// Which repositories a list shows (`active_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryFilter {
    All,
    User,
    System,
}

impl RepositoryFilter {
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "" | "all" => Ok(RepositoryFilter::All),
            "user" => Ok(RepositoryFilter::User),
            "system" => Ok(RepositoryFilter::System),
            other => Err(format!(
                "`{other}` is not a valid active_filter; use all, user or system."
            )),
        }
    }
}

/// The fetch state of a repository (BEHAVIOUR.md 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncState {
    pub commit: Option<String>,
    pub fetched_at: Option<Timestamp>,
    pub error: Option<String>,
    pub state: String,
}

/// A stored repository. The access token stays encrypted here; only `has_token` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub id: i64,
    pub url: String,
    pub name: String,
    pub source_branch: String,
    pub source_type: SourceType,
    pub token_ciphertext: Option<String>,
    pub import_update_preferences: ImportPreference,
    pub is_custom: bool,
    pub user_id: Option<i64>,
    pub created_at: Timestamp,
    pub last_modified: Timestamp,
    pub sync: SyncState,
}

/// What a create or a full update stores.
#[derive(Debug, Clone)]
pub struct NewRepository {
    pub url: RepoUrl,
    pub name: RepositoryName,
    pub source_branch: Branch,
    pub token_ciphertext: Option<String>,
    pub import_update_preferences: ImportPreference,
    pub is_custom: bool,
    pub user_id: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_policy() {
        assert!(RepoUrl::parse("https://github.com/a/b", false).is_ok());
        assert!(RepoUrl::parse("git://127.0.0.1:9418/x.git", false).is_ok());
        assert!(RepoUrl::parse("ssh://git@host/x.git", false).is_ok());
        let creds = RepoUrl::parse("https://user:tok@github.com/a/b", false).unwrap_err();
        assert!(creds.contains("api_token"), "{creds}");
        assert!(!creds.contains("tok@"));
        assert!(RepoUrl::parse("https://tok@github.com/a/b", false).is_err());
        assert!(RepoUrl::parse("file:///srv/x.git", false).is_err());
        assert!(RepoUrl::parse("file:///srv/x.git", true).is_ok());
        assert!(RepoUrl::parse("ftp://host/x", true).is_err());
        assert!(RepoUrl::parse("not a url", true).is_err());
        assert!(RepoUrl::parse("git@github.com:a/b.git", true).is_err());
    }

    #[test]
    fn source_type_from_host() {
        let t = |u: &str| RepoUrl::parse(u, true).unwrap().source_type();
        assert_eq!(t("https://github.com/a/b"), SourceType::GitHub);
        assert_eq!(t("https://gitlab.com/a/b"), SourceType::GitLab);
        assert_eq!(t("https://bitbucket.org/a/b"), SourceType::Bitbucket);
        assert_eq!(t("https://git.example.org/a/b"), SourceType::Generic);
        assert_eq!(t("file:///srv/a.git"), SourceType::Local);
        assert_eq!(t("https://notgithub.com/a"), SourceType::Generic);
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "develop", "release/1.2", "feature-x_y"] {
            assert!(Branch::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "-x",
            "a..b",
            "x.lock",
            "a:b",
            "refs/../x",
            ".hidden",
        ] {
            assert!(Branch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_preferences() {
        assert!(RepositoryName::parse("  ").is_err());
        assert!(RepositoryName::parse(&"x".repeat(129)).is_err());
        assert_eq!(RepositoryName::parse(" ACME ").unwrap().as_str(), "ACME");
        assert_eq!(
            ImportPreference::from_code(2),
            Ok(ImportPreference::AutoImport)
        );
        assert!(ImportPreference::from_code(3).is_err());
    }
}
