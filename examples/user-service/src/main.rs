//! The user service: `cargo run -p user-service` (needs `JWT_SECRET`, at least 32 bytes).
//!
//! On the in-memory store unless `DATABASE_URL` is set. `cargo run -p user-service -- token
//! <user>` prints a bearer token for `<user>`, valid for an hour, signed with `JWT_SECRET`.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use user_service::config::Config;
use user_service::http::Auth;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::from_env()?;
    let mut args = std::env::args().skip(1);
    if let Some(command) = args.next() {
        return match (command.as_str(), args.next()) {
            ("token", Some(user)) => {
                println!(
                    "{}",
                    Auth::new(&config.jwt_secret).token(&user, Duration::from_secs(3600), false)
                );
                Ok(())
            }
            _ => Err("usage: user-service [token <user>]".into()),
        };
    }
    let store = if config.database_url.is_some() {
        "PostgreSQL"
    } else {
        "in memory"
    };
    let running = user_service::start(config).await?;
    tracing::info!(addr = %running.addr(), store, "listening");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight");
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Ctrl-C, or SIGTERM (what container runtimes send) on Unix.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
