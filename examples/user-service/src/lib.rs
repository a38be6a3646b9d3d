//! Users over HTTP, as a template for a production-shaped service built on `cqrs-core`.
//!
//! - [`domain`]: the `User` aggregate, the `Email` value object, commands, events and typed
//!   errors; e-mail uniqueness through an injected async service and the framework's unique
//!   keys;
//! - [`read_model`]: the user directory (one user, pages with the total count), in memory or
//!   in a PostgreSQL table fed by a durable subscription;
//! - [`wire`]: the buses and the read model's feed, one [`Service`] type for
//!   both stores;
//! - [`http`]: the axum routes, JWT authentication, `tower-http` layers and failures as
//!   `application/problem+json`;
//! - [`config`]: settings from the environment.
//!
//! [`start`] runs the whole service on a listener and returns a [`Running`] handle whose
//! [`shutdown`](Running::shutdown) stops taking requests, lets those in flight finish, then
//! stops the read model's subscription.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! let config = user_service::config::Config::from_env()?;
//! let running = user_service::start(config).await?;
//! println!("listening on {}", running.addr());
//! tokio::signal::ctrl_c().await?;
//! running.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Crates: `axum` (routing, extractors), `tower-http` (request id, tracing, CORS, timeout,
//! body limit: the layers most axum services use), `jsonwebtoken` (HS256 tokens, with the
//! pure-Rust `rust_crypto` backend), `metrics-exporter-prometheus` (the recorder behind the
//! `metrics` facade that `cqrs-core`'s `Metrics` middleware writes to; rendered by our own
//! `/metrics` route, so without its HTTP listener).

pub mod config;
pub mod domain;
pub mod http;
pub mod read_model;
pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::http::{AppState, Auth};
use crate::wire::{Service, StartError};

/// The process's Prometheus recorder: installed once, shared by every service the process
/// starts (tests start several).
///
/// # Panics
///
/// If another metrics recorder was installed in the process first.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The service (store, read model) could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listener could not be bound, or serving failed.
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
    /// The read model's subscription had failed when it was stopped.
    #[error("subscription: {0}")]
    Subscription(#[from] cqrs_postgres::subscription::SubscriptionError),
}

/// The service from `config`: on PostgreSQL when `database_url` is set, else in memory.
pub async fn service(config: &Config) -> Result<Service, StartError> {
    match &config.database_url {
        Some(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?;
            Service::postgres(pool).await
        }
        None => Ok(Service::in_memory()),
    }
}

/// Starts the service from `config` on `0.0.0.0:{port}`.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let service = service(&config).await?;
    let listener = TcpListener::bind(("0.0.0.0", config.port)).await?;
    serve(service, listener, &config)
}

/// Serves `service` on `listener` until [`Running::shutdown`].
pub fn serve(
    service: Service,
    listener: TcpListener,
    config: &Config,
) -> Result<Running, ServerError> {
    let addr = listener.local_addr()?;
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        service: service.clone(),
        auth: Arc::new(Auth::new(&config.jwt_secret)),
        problems: http::problems(),
        metrics: metrics_handle(),
        draining: draining.clone(),
    };
    let app = http::router(state, config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        service,
        draining,
        stop,
        task,
    })
}

/// A running server.
pub struct Running {
    addr: SocketAddr,
    service: Service,
    draining: Arc<AtomicBool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The service behind the routes.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Stops taking connections, waits for the requests in flight to finish, then stops the
    /// read model's subscription after its current batch.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.draining.store(true, Ordering::SeqCst);
        let _ = self.stop.send(());
        match self.task.await {
            Ok(served) => served?,
            Err(join) => return Err(std::io::Error::other(join).into()),
        }
        self.service.stop().await?;
        Ok(())
    }
}
