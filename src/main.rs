//! The `ruleyard` command: serve | migrate | user | token | print-config.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use ruleyard::app;
use ruleyard::auth;
use ruleyard::config::{LogFormat, Overrides, Settings};
use ruleyard::domain::Username;
use ruleyard::store;

#[derive(Parser)]
#[command(
    name = "ruleyard",
    version,
    about = "Self-hosted YARA rule management server"
)]
struct Cli {
    /// TOML configuration file (flags > environment > file > defaults).
    #[arg(long, short, env = "RULEYARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the effective configuration, secrets redacted.
    PrintConfig,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input (one line).
    Create {
        name: String,
        #[arg(long)]
        superuser: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token for a user and print it (shown once).
    Create { name: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref(), &cli.overrides)?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(run(cli.command, settings))
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate => {
            store::open(&settings).await?;
            println!("Database migrations applied.");
            Ok(())
        }
        Command::PrintConfig => {
            print!("{}", settings.to_redacted_toml());
            Ok(())
        }
        Command::User(UserCommand::Create { name, superuser }) => {
            let username = Username::parse(&name).map_err(anyhow::Error::msg)?;
            let password = read_password()?;
            let state = app::open_state(settings).await?;
            let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password)).await?;
            state
                .store
                .create_user(&username, &hash, superuser)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the user `{username}`: {e}"))?;
            println!(
                "Created the {} `{username}`.",
                if superuser { "superuser" } else { "user" }
            );
            Ok(())
        }
        Command::Token(TokenCommand::Create { name }) => {
            let state = app::open_state(settings).await?;
            let (user, _) = state
                .store
                .user_with_password(&name)
                .await?
                .with_context(|| format!("no user named `{name}`"))?;
            let token = auth::new_token();
            state
                .store
                .create_token(user.id, &auth::token_hash(&token), "cli")
                .await?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let backend = if settings.is_postgres() {
        "PostgreSQL".to_owned()
    } else {
        format!("SQLite in {}", settings.data_dir.display())
    };
    let built = app::build(settings).await?;
    let addr = built.local_addr();
    tracing::info!(%addr, node = %built.state.settings.node_name, "ruleyard started");
    println!(
        "Ruleyard {} listening on http://{addr} ({backend})",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "Log in: curl -X POST http://{addr}/api-token-auth/ -d username=admin -d password=<admin password>"
    );
    built.run_until(app::shutdown_signal()).await
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("the password (read from standard input) may not be empty");
    }
    Ok(password)
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RULEYARD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
