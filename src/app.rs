//! The application: shared state, start-up (store, key check, first superuser, system
//! repositories), and serving until SIGINT or SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::ServiceExt;
use axum::extract::Request;
use axum::serve::ListenerExt;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tower::Layer;

use crate::auth;
use crate::config::Settings;
use crate::domain::{Branch, ImportPreference, NewRepository, RepoUrl, RepositoryName, Username};
use crate::http::auth::TokenCache;
use crate::http::compat::NormalizePathLayer;
use crate::jobs::{Importer, UpdateJob};
use crate::rules::ActiveRules;
use crate::rulesets::{Activator, Rulesets};
use crate::scanning::{RetroHunt, Scanning};
use crate::secrets::{KEY_CHECK_SETTING, SecretBox};
use crate::store::{self, Store, StoreError};

/// How often a node reports the generation it serves.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent for this long is `Unavailable`.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub settings: Arc<Settings>,
    pub secrets: Arc<SecretBox>,
    pub rulesets: Arc<Rulesets>,
    pub update_job: Arc<UpdateJob>,
    pub scanning: Arc<Scanning>,
    pub retro_hunt: Arc<RetroHunt>,
    /// Valid tokens seen lately (`http::auth`).
    pub tokens: Arc<TokenCache>,
}

/// A started application, bound to its address.
pub struct App {
    pub state: AppState,
    listener: TcpListener,
}

/// Opens the store and checks the secret key against it.
pub async fn open_state(settings: Settings) -> anyhow::Result<AppState> {
    let store = store::open(&settings)
        .await
        .context("cannot open the database")?;
    let secrets = SecretBox::load(settings.secret_key.as_ref(), &settings.data_dir)?;
    let stored_check = store
        .put_setting_if_absent(KEY_CHECK_SETTING, &secrets.check_value())
        .await?;
    if !secrets.verifies(&stored_check) {
        anyhow::bail!(
            "the secret key does not match the one this database was set up with: every node \
             must use the same RULEYARD_SECRET_KEY (or key file); refusing to start"
        );
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let activator = Activator::new(store.clone(), Arc::new(ActiveRules::default()));
    let rulesets = Rulesets::new(
        store.clone(),
        activator,
        settings.yara_sync,
        settings.max_ruleset_bytes,
    );
    let settings = Arc::new(settings);
    let secrets = Arc::new(secrets);
    let rulesets = Arc::new(rulesets);
    let importer = Arc::new(Importer {
        store: store.clone(),
        rulesets: rulesets.clone(),
        secrets: secrets.clone(),
        settings: settings.clone(),
        cancel: Arc::default(),
    });
    let update_job = UpdateJob::new(store.clone(), importer);
    let scanning = Arc::new(Scanning::new(
        store.clone(),
        rulesets.clone(),
        settings.clone(),
    ));
    let retro_hunt = Arc::new(RetroHunt::open(settings.data_dir.join("retro-hunts.json")));
    Ok(AppState {
        store,
        settings,
        secrets,
        rulesets,
        update_job,
        scanning,
        retro_hunt,
        tokens: Arc::default(),
    })
}

/// Start-up: state, the first superuser, system repositories, the listening socket.
pub async fn build(settings: Settings) -> anyhow::Result<App> {
    let state = open_state(settings).await?;
    ensure_first_superuser(&state).await?;
    apply_system_repositories(&state).await?;
    let listener = TcpListener::bind(state.settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", state.settings.listen))?;
    Ok(App { state, listener })
}

impl App {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let activator = self.state.rulesets.activator().clone();
        let job = self.state.update_job.clone();
        job.recover().await?;
        let scheduler = tokio::spawn(job.scheduler());
        let follower = tokio::spawn(
            self.state
                .rulesets
                .activator()
                .clone()
                .follow(Duration::from_secs(1)),
        );
        let listener = self
            .state
            .settings
            .database_url
            .as_ref()
            .filter(|_| self.state.settings.is_postgres())
            .map(|url| {
                tokio::spawn(
                    self.state
                        .rulesets
                        .activator()
                        .clone()
                        .listen(url.expose_secret().to_owned()),
                )
            });
        let heartbeat = {
            let (store, rulesets, node) = (
                self.state.store.clone(),
                self.state.rulesets.clone(),
                self.state.settings.node_name.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let serving = rulesets.current_generation().map(|g| g.number);
                    if let Err(e) = store.heartbeat(&node, serving).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        // Load (or build) the generation in the background: the API answers meanwhile, and
        // /readyz says when scanning is ready.
        let background = tokio::spawn(async move {
            if let Err(e) = activator.start().await {
                tracing::error!(error = %e, "loading the current generation failed");
            }
            activator.run().await
        });
        let scanning = self.state.scanning.clone();
        let router = crate::http::router(self.state);
        let service = NormalizePathLayer.layer(router);
        // Answers leave at once instead of waiting on Nagle's algorithm for the client's ACK.
        let accepting = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
            }
        });
        let served = axum::serve(accepting, ServiceExt::<Request>::into_make_service(service))
            .with_graceful_shutdown(shutdown)
            .await
            .context("server error");
        background.abort();
        scheduler.abort();
        follower.abort();
        if let Some(listener) = listener {
            listener.abort();
        }
        heartbeat.abort();
        // What the last scans found is written before the process ends.
        if tokio::time::timeout(Duration::from_secs(30), scanning.flush())
            .await
            .is_err()
        {
            tracing::warn!("the last scans were still being recorded at shutdown");
        }
        served
    }
}

/// Creates `admin` when the database has no user: with the configured password, else a
/// generated one printed once to standard output.
async fn ensure_first_superuser(state: &AppState) -> anyhow::Result<()> {
    if state.store.user_count().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match &state.settings.admin_password {
        Some(p) => (p.expose_secret().to_owned(), false),
        None => (auth::generate_password(), true),
    };
    let hash = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || auth::hash_password(&password)).await?
    };
    let admin = Username::parse("admin").expect("valid user name");
    match state.store.create_user(&admin, &hash, true).await {
        Ok(_) => {
            if generated {
                println!(
                    "Created the superuser `admin` with the password: {password}\n\
                     (shown once; set RULEYARD_ADMIN_PASSWORD before the first start to choose it)"
                );
            } else {
                println!(
                    "Created the superuser `admin` with the password from RULEYARD_ADMIN_PASSWORD."
                );
            }
            Ok(())
        }
        // Another node created it at the same moment.
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the stored system repositories equal to configuration.
async fn apply_system_repositories(state: &AppState) -> anyhow::Result<()> {
    let mut specs = Vec::new();
    for repo in &state.settings.system_repositories {
        let invalid = |m: String| anyhow::anyhow!("system repository `{}`: {m}", repo.name);
        // Configuration is trusted to name local mirrors (air-gapped installations).
        specs.push(NewRepository {
            url: RepoUrl::parse(&repo.url, true).map_err(invalid)?,
            name: RepositoryName::parse(&repo.name).map_err(invalid)?,
            source_branch: Branch::parse(&repo.branch).map_err(invalid)?,
            token_ciphertext: None,
            import_update_preferences: ImportPreference::from_code(repo.import_update_preferences)
                .map_err(invalid)?,
            is_custom: false,
            user_id: None,
        });
    }
    for name in state.store.sync_system_repositories(&specs).await? {
        tracing::warn!(
            repository = %name,
            "system repository not added: a custom repository already uses its name or URL"
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
