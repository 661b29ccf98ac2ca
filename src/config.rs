//! Settings: documented defaults, overlaid by a TOML file, then `RULEYARD_*` environment
//! variables, then command-line flags (clap reads flag and environment together, flag first).
//!
//! This module owns parsing and layering only; it must not open databases or sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Flags and environment variables; every field is optional and overrides the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Address to listen on.
    #[arg(long, env = "RULEYARD_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database, key file and git mirrors.
    #[arg(long, env = "RULEYARD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: absent means SQLite in the data directory; `postgres://...` is PostgreSQL.
    #[arg(
        long,
        env = "RULEYARD_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Password of the first superuser `admin`, used only when the database has no user yet.
    #[arg(
        long,
        env = "RULEYARD_ADMIN_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
    /// Allow `file://` repositories.
    #[arg(long, env = "RULEYARD_ALLOW_LOCAL_SOURCES", global = true, value_parser = parse_bool)]
    pub allow_local_sources: Option<bool>,
    /// YARA Sync (review before activation). Default: off on SQLite, on with PostgreSQL.
    #[arg(long, env = "RULEYARD_YARA_SYNC", global = true, value_parser = parse_bool)]
    pub yara_sync: Option<bool>,
    /// Name of this node in a cluster. Default: host name and port.
    #[arg(long, env = "RULEYARD_NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// Initial update cadence in seconds (then persisted).
    #[arg(long, env = "RULEYARD_UPDATE_INTERVAL_SECONDS", global = true)]
    pub update_interval_seconds: Option<u64>,
    /// Parallel repository fetches in one update run.
    #[arg(long, env = "RULEYARD_FETCH_CONCURRENCY", global = true)]
    pub fetch_concurrency: Option<usize>,
    /// Hard timeout of one repository fetch.
    #[arg(long, env = "RULEYARD_FETCH_TIMEOUT_SECONDS", global = true)]
    pub fetch_timeout_seconds: Option<u64>,
    /// Timeout of the connection test made when a repository is created or updated.
    #[arg(long, env = "RULEYARD_CONNECT_TIMEOUT_SECONDS", global = true)]
    pub connect_timeout_seconds: Option<u64>,
    /// Expiry of the update job's lease.
    #[arg(long, env = "RULEYARD_JOB_LEASE_SECONDS", global = true)]
    pub job_lease_seconds: Option<u64>,
    /// Largest file a scan accepts.
    #[arg(long, env = "RULEYARD_MAX_SCAN_BYTES", global = true)]
    pub max_scan_bytes: Option<u64>,
    /// Time limit of one scan.
    #[arg(long, env = "RULEYARD_SCAN_TIMEOUT_SECONDS", global = true)]
    pub scan_timeout_seconds: Option<u64>,
    /// Keep scanned samples for retro hunts.
    #[arg(long, env = "RULEYARD_STORE_SAMPLES", global = true, value_parser = parse_bool)]
    pub store_samples: Option<bool>,
    /// Base64 of the 32-byte key that encrypts repository access tokens.
    #[arg(
        long,
        env = "RULEYARD_SECRET_KEY",
        global = true,
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Total size of kept samples; the oldest are evicted past it.
    #[arg(long, env = "RULEYARD_SAMPLES_MAX_BYTES", global = true)]
    pub samples_max_bytes: Option<u64>,
    /// Samples a ruleset may match within the cap window before it is `capped`.
    #[arg(long, env = "RULEYARD_MATCH_CAP", global = true)]
    pub match_cap: Option<u64>,
    /// The cap window.
    #[arg(long, env = "RULEYARD_MATCH_CAP_WINDOW_SECONDS", global = true)]
    pub match_cap_window_seconds: Option<u64>,
    /// Largest request body outside scans.
    #[arg(long, env = "RULEYARD_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<u64>,
    /// Trust `X-Forwarded-Proto` and `X-Forwarded-Host` (only behind a reverse proxy).
    #[arg(long, env = "RULEYARD_TRUSTED_PROXY", global = true, value_parser = parse_bool)]
    pub trusted_proxy: Option<bool>,
    /// Serve `/metrics`.
    #[arg(long, env = "RULEYARD_METRICS", global = true, value_parser = parse_bool)]
    pub metrics: Option<bool>,
    /// Log format: `pretty` or `json`.
    #[arg(long, env = "RULEYARD_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

/// Parses the boolean spellings of API.md 1.2 (also used for configuration).
pub fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(format!("`{other}` is not a boolean (use true or false)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// A repository declared by configuration (`is_custom: false`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemRepository {
    pub url: String,
    pub name: String,
    pub branch: String,
    #[serde(default)]
    pub import_update_preferences: i64,
}

/// The TOML file: every key optional, same names as the environment variables without the
/// `RULEYARD_` prefix, in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    admin_password: Option<String>,
    allow_local_sources: Option<bool>,
    yara_sync: Option<bool>,
    node_name: Option<String>,
    update_interval_seconds: Option<u64>,
    fetch_concurrency: Option<usize>,
    fetch_timeout_seconds: Option<u64>,
    connect_timeout_seconds: Option<u64>,
    job_lease_seconds: Option<u64>,
    max_scan_bytes: Option<u64>,
    scan_timeout_seconds: Option<u64>,
    store_samples: Option<bool>,
    secret_key: Option<String>,
    samples_max_bytes: Option<u64>,
    match_cap: Option<u64>,
    match_cap_window_seconds: Option<u64>,
    max_body_bytes: Option<u64>,
    trusted_proxy: Option<bool>,
    metrics: Option<bool>,
    log_format: Option<LogFormat>,
    rule_extensions: Option<Vec<String>>,
    max_ruleset_bytes: Option<u64>,
    max_repository_bytes: Option<u64>,
    system_repositories: Option<Vec<SystemRepository>>,
}

/// The effective settings of one process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<SecretString>,
    pub admin_password: Option<SecretString>,
    pub allow_local_sources: bool,
    pub yara_sync: bool,
    pub node_name: String,
    pub update_interval_seconds: u64,
    pub fetch_concurrency: usize,
    pub fetch_timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    pub job_lease_seconds: u64,
    pub max_scan_bytes: u64,
    pub scan_timeout_seconds: u64,
    pub store_samples: bool,
    pub secret_key: Option<SecretString>,
    pub samples_max_bytes: u64,
    pub match_cap: u64,
    pub match_cap_window_seconds: u64,
    pub max_body_bytes: u64,
    pub trusted_proxy: bool,
    pub metrics: bool,
    pub log_format: LogFormat,
    pub rule_extensions: Vec<String>,
    pub max_ruleset_bytes: u64,
    pub max_repository_bytes: u64,
    pub system_repositories: Vec<SystemRepository>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./ruleyard-data";
const MIB: u64 = 1024 * 1024;

/// The system repository that ships with the default configuration (BEHAVIOUR.md 8).
pub fn default_system_repositories() -> Vec<SystemRepository> {
    vec![SystemRepository {
        url: "https://github.com/reversinglabs/reversinglabs-yara-rules".into(),
        name: "ReversingLabs YARA rules".into(),
        branch: "develop".into(),
        import_update_preferences: 0,
    }]
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads the file (when given), then applies the flag/environment overrides.
    pub fn load(file: Option<&Path>, over: &Overrides) -> Result<Self, ConfigError> {
        let file_settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?
            }
            None => FileSettings::default(),
        };
        Self::layer(file_settings, over)
    }

    fn layer(f: FileSettings, o: &Overrides) -> Result<Self, ConfigError> {
        let listen = o
            .listen
            .or(f.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"));
        let database_url = o
            .database_url
            .clone()
            .or(f.database_url)
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url",
                message: "must start with postgres://, postgresql:// or sqlite:".into(),
            });
        }
        let is_postgres = database_url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres"));
        let mut rule_extensions = f
            .rule_extensions
            .unwrap_or_else(|| vec![".yar".into(), ".yara".into()]);
        for ext in &mut rule_extensions {
            let trimmed = ext.trim().trim_start_matches('.').to_ascii_lowercase();
            if trimmed.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "rule_extensions",
                    message: "an extension may not be empty".into(),
                });
            }
            *ext = format!(".{trimmed}");
        }
        let fetch_concurrency = o.fetch_concurrency.or(f.fetch_concurrency).unwrap_or(4);
        if fetch_concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "fetch_concurrency",
                message: "must be at least 1".into(),
            });
        }
        let system_repositories = f
            .system_repositories
            .unwrap_or_else(default_system_repositories);
        for repo in &system_repositories {
            if !(0..=2).contains(&repo.import_update_preferences) {
                return Err(ConfigError::Invalid {
                    key: "system_repositories",
                    message: format!("{}: import_update_preferences must be 0, 1 or 2", repo.name),
                });
            }
        }
        Ok(Settings {
            listen,
            data_dir: o
                .data_dir
                .clone()
                .or(f.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            database_url: database_url.map(SecretString::from),
            admin_password: o
                .admin_password
                .clone()
                .or(f.admin_password)
                .filter(|p| !p.is_empty())
                .map(SecretString::from),
            allow_local_sources: o
                .allow_local_sources
                .or(f.allow_local_sources)
                .unwrap_or(false),
            yara_sync: o.yara_sync.or(f.yara_sync).unwrap_or(is_postgres),
            node_name: o
                .node_name
                .clone()
                .or(f.node_name)
                .unwrap_or_else(|| format!("{}:{}", host_name(), listen.port())),
            update_interval_seconds: o
                .update_interval_seconds
                .or(f.update_interval_seconds)
                .unwrap_or(3600),
            fetch_concurrency,
            fetch_timeout_seconds: o
                .fetch_timeout_seconds
                .or(f.fetch_timeout_seconds)
                .unwrap_or(120)
                .max(1),
            connect_timeout_seconds: o
                .connect_timeout_seconds
                .or(f.connect_timeout_seconds)
                .unwrap_or(30)
                .max(1),
            job_lease_seconds: o
                .job_lease_seconds
                .or(f.job_lease_seconds)
                .unwrap_or(30)
                .max(1),
            max_scan_bytes: o.max_scan_bytes.or(f.max_scan_bytes).unwrap_or(256 * MIB),
            scan_timeout_seconds: o
                .scan_timeout_seconds
                .or(f.scan_timeout_seconds)
                .unwrap_or(10)
                .max(1),
            store_samples: o.store_samples.or(f.store_samples).unwrap_or(true),
            secret_key: o
                .secret_key
                .clone()
                .or(f.secret_key)
                .filter(|k| !k.trim().is_empty())
                .map(SecretString::from),
            samples_max_bytes: o
                .samples_max_bytes
                .or(f.samples_max_bytes)
                .unwrap_or(10 * 1024 * MIB),
            match_cap: o.match_cap.or(f.match_cap).unwrap_or(10_000).max(1),
            match_cap_window_seconds: o
                .match_cap_window_seconds
                .or(f.match_cap_window_seconds)
                .unwrap_or(86_400)
                .max(1),
            max_body_bytes: o.max_body_bytes.or(f.max_body_bytes).unwrap_or(16 * MIB),
            trusted_proxy: o.trusted_proxy.or(f.trusted_proxy).unwrap_or(false),
            metrics: o.metrics.or(f.metrics).unwrap_or(true),
            log_format: o.log_format.or(f.log_format).unwrap_or_default(),
            rule_extensions,
            max_ruleset_bytes: f.max_ruleset_bytes.unwrap_or(10 * MIB),
            max_repository_bytes: f.max_repository_bytes.unwrap_or(512 * MIB),
            system_repositories,
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().starts_with("postgres"))
    }

    /// The effective configuration as TOML, secrets redacted (`ruleyard print-config`).
    pub fn to_redacted_toml(&self) -> String {
        #[derive(Serialize)]
        struct Printable<'a> {
            listen: String,
            data_dir: String,
            database_url: String,
            admin_password: &'a str,
            allow_local_sources: bool,
            yara_sync: bool,
            node_name: &'a str,
            update_interval_seconds: u64,
            fetch_concurrency: usize,
            fetch_timeout_seconds: u64,
            connect_timeout_seconds: u64,
            job_lease_seconds: u64,
            max_scan_bytes: u64,
            scan_timeout_seconds: u64,
            store_samples: bool,
            secret_key: &'a str,
            samples_max_bytes: u64,
            match_cap: u64,
            match_cap_window_seconds: u64,
            max_body_bytes: u64,
            trusted_proxy: bool,
            metrics: bool,
            log_format: LogFormat,
            rule_extensions: &'a [String],
            max_ruleset_bytes: u64,
            max_repository_bytes: u64,
            system_repositories: &'a [SystemRepository],
        }
        let redact = |s: &Option<SecretString>, unset: &'static str| {
            if s.is_some() { "<redacted>" } else { unset }
        };
        let printable = Printable {
            listen: self.listen.to_string(),
            data_dir: self.data_dir.display().to_string(),
            database_url: match &self.database_url {
                Some(url) => redact_url_password(url.expose_secret()),
                None => format!("sqlite file {}", self.sqlite_path().display()),
            },
            admin_password: redact(&self.admin_password, "<generated on first start>"),
            allow_local_sources: self.allow_local_sources,
            yara_sync: self.yara_sync,
            node_name: &self.node_name,
            update_interval_seconds: self.update_interval_seconds,
            fetch_concurrency: self.fetch_concurrency,
            fetch_timeout_seconds: self.fetch_timeout_seconds,
            connect_timeout_seconds: self.connect_timeout_seconds,
            job_lease_seconds: self.job_lease_seconds,
            max_scan_bytes: self.max_scan_bytes,
            scan_timeout_seconds: self.scan_timeout_seconds,
            store_samples: self.store_samples,
            secret_key: redact(&self.secret_key, "<key file in the data directory>"),
            samples_max_bytes: self.samples_max_bytes,
            match_cap: self.match_cap,
            match_cap_window_seconds: self.match_cap_window_seconds,
            max_body_bytes: self.max_body_bytes,
            trusted_proxy: self.trusted_proxy,
            metrics: self.metrics,
            log_format: self.log_format,
            rule_extensions: &self.rule_extensions,
            max_ruleset_bytes: self.max_ruleset_bytes,
            max_repository_bytes: self.max_repository_bytes,
            system_repositories: &self.system_repositories,
        };
        toml::to_string(&printable).expect("settings serialize to TOML")
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("ruleyard.sqlite3")
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:<redacted>@host/db`.
pub fn redact_url_password(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string().replacen(":REDACTED@", ":<redacted>@", 1)
        }
        Ok(url) => url.to_string(),
        Err(_) => "<unparsable, redacted>".into(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ruleyard".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let file = FileSettings {
            listen: Some("127.0.0.1:9000".parse().unwrap()),
            fetch_concurrency: Some(8),
            ..Default::default()
        };
        let over = Overrides {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        let s = Settings::layer(file, &over).unwrap();
        assert_eq!(s.listen.port(), 9100);
        assert_eq!(s.fetch_concurrency, 8);
        assert_eq!(s.update_interval_seconds, 3600);
        assert!(!s.yara_sync, "sync is off on SQLite by default");
        assert_eq!(s.system_repositories, default_system_repositories());
    }

    #[test]
    fn postgres_turns_sync_on_and_is_redacted() {
        let over = Overrides {
            database_url: Some("postgres://u:hunter2@db/ruleyard".into()),
            ..Default::default()
        };
        let s = Settings::layer(FileSettings::default(), &over).unwrap();
        assert!(s.yara_sync);
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn booleans_accept_the_api_spellings() {
        for t in ["true", "True", "1", "yes", "ON"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["false", "False", "0", "no", "off"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<FileSettings>("lisen = \"x\"").unwrap_err();
        assert!(err.message().contains("lisen"));
    }
}
