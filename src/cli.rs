//! The command line: `questech [serve]`, `questech migrate`, `questech admin create-user`.

use std::io::Read;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::state::AppState;

#[derive(Parser)]
#[command(name = "questech", version, about = "Questech chat engine")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a user; the password is read from standard input.
    CreateUser {
        #[arg(long)]
        username: String,
        #[arg(long, default_value = "user")]
        role: String,
    },
}

fn init_tracing(debug: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,tower_http=warn,hyper=warn,ractor=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if debug {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

/// Entry point of the binary. Returns the process exit code.
pub async fn run() -> i32 {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    init_tracing(config.service_debug);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Admin {
            command: AdminCommand::CreateUser { username, role },
        } => create_user(config, username, role).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.bind_addr;
    let state = AppState::build(config).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "questech listening");
    crate::server::run_until(listener, state, crate::server::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let db = crate::storage::Db::connect(&config.database_url, config.database_read_url.as_deref())
        .await?;
    db.migrate().await?;
    println!("migrations applied");
    Ok(())
}

async fn create_user(config: Config, username: String, role: String) -> anyhow::Result<()> {
    crate::auth::account::validate_username(&username).map_err(|e| anyhow::anyhow!("{e}"))?;
    if crate::auth::Role::parse(&role).is_none() {
        anyhow::bail!("role must be user or admin");
    }
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    crate::auth::account::validate_password(&password, "password")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = AppState::build(config).await?;
    let hash = crate::auth::password::hash(password, state.config.bcrypt_cost).await?;
    let user = crate::storage::users::create(
        &state.db,
        crate::storage::users::NewUser {
            id: crate::ids::next_id(),
            username: &username,
            password_hash: Some(&hash),
            nickname: &username,
            role: &role,
            phone_enc: None,
            phone_hash: None,
            apple_sub: None,
            signup_bonus: state.config.signup_bonus_credits,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "created user {} ({}) with role {}",
        user.username, user.id, user.role
    );
    Ok(())
}
