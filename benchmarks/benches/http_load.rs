//! Load check of the user service over loopback HTTP: p50/p99 latency and requests per second
//! of `POST /users` and `GET /users/{id}` at 1, 16 and 64 concurrent clients, each cell for a
//! bounded time, on the in-memory store and on PostgreSQL; and the framework's share of each
//! request's time.
//!
//! ```sh
//! cargo bench -p cqrs-benchmarks --bench http_load            # 3 s per cell
//! LOAD_SECONDS=10 cargo bench -p cqrs-benchmarks --bench http_load
//! LOAD_STORES=memory cargo bench -p cqrs-benchmarks --bench http_load
//! ```
//!
//! The framework's share is read from the service's own `/metrics`, scraped before and after
//! each cell: the time the buses spent (`cqrs_command_duration_seconds` /
//! `cqrs_query_duration_seconds`, recorded by `cqrs-core`'s `Metrics` middleware) over the
//! time the HTTP handler stack spent on the same requests (`http_request_duration_seconds`,
//! recorded around routing, authentication, body parsing, the bus and serialization). The
//! rest of the server's time is axum, JWT verification and JSON; the client-side latency
//! adds the loopback and the client itself. Server and clients run in this one process, on
//! runtimes of their own, so on a small machine they compete for the same cores: compare
//! cells with each other, not with another machine's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cqrs_benchmarks::db::BenchDb;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use user_service::config::Config;
use user_service::http::Auth;
use user_service::wire::Service;

const SECRET: &[u8] = b"the load check's secret, thirty-two bytes or more";
const CLIENTS: [usize; 3] = [1, 16, 64];

fn main() {
    let seconds: u64 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let stores = std::env::var("LOAD_STORES").unwrap_or_else(|_| "memory,postgres".to_owned());
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "user service over loopback HTTP, {seconds} s per cell; server and clients share this machine"
    );
    println!(
        "{:<9} {:<18} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "store", "request", "clients", "req/s", "p50 ms", "p99 ms", "bus/server", "bus/client"
    );
    for store in stores.split(',').map(str::trim) {
        let db = match store {
            "memory" => None,
            "postgres" => Some(server_runtime.block_on(BenchDb::create(24))),
            other => panic!("LOAD_STORES: unknown store {other:?} (memory, postgres)"),
        };
        let running = server_runtime.block_on(async {
            let service = match &db {
                None => Service::in_memory(),
                Some(db) => Service::postgres(db.pool.clone())
                    .await
                    .expect("the service starts on PostgreSQL"),
            };
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            user_service::serve(service, listener, &Config::for_tests(SECRET)).expect("serve")
        });
        let base = format!("http://{}", running.addr());
        client_runtime.block_on(measure(store, &base, Duration::from_secs(seconds)));
        server_runtime
            .block_on(running.shutdown())
            .expect("a clean shutdown");
        drop(db);
    }
}

/// One cell's client-side latencies, and the server-side sums scraped around it.
struct Cell {
    latencies: Vec<Duration>,
    elapsed: Duration,
    bus_seconds: f64,
    server_seconds: f64,
}

async fn measure(store: &str, base: &str, duration: Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    let token = Auth::new(SECRET).token("load", Duration::from_secs(3600), false);
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));

    for clients in CLIENTS {
        let (ids, counter, http, token, base_owned) = (
            ids.clone(),
            counter.clone(),
            client.clone(),
            token.clone(),
            base.to_owned(),
        );
        let cell = cell(
            base,
            &client,
            clients,
            duration,
            (
                "cqrs_command_duration_seconds_sum",
                ("command", "user.register"),
            ),
            ("POST", "/users"),
            move || {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let request = http
                    .post(format!("{base_owned}/users"))
                    .bearer_auth(&token)
                    .json(&json!({ "email": format!("load-{n}@example.com"), "name": "Load" }));
                let ids = ids.clone();
                async move {
                    let response = request.send().await.expect("send");
                    assert_eq!(response.status(), StatusCode::CREATED);
                    let body: serde_json::Value = response.json().await.expect("json");
                    let id = body["id"].as_str().expect("an id").to_owned();
                    ids.lock().expect("ids").push(id);
                }
            },
        )
        .await;
        report(store, "POST /users", clients, &cell);
    }

    let ids: Arc<Vec<String>> = Arc::new(ids.lock().expect("ids").clone());
    // Reads of users created by an earlier cell: on PostgreSQL, wait until the directory has
    // them (the last write's position would do; a read of the last id is simpler here).
    let last = ids.last().expect("users were created").clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .get(format!("{base}/users/{last}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("send")
            .status();
        if status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the directory did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for clients in CLIENTS {
        let (ids, client_owned, token, base_owned) =
            (ids.clone(), client.clone(), token.clone(), base.to_owned());
        let next = Arc::new(AtomicUsize::new(0));
        let cell = cell(
            base,
            &client,
            clients,
            duration,
            ("cqrs_query_duration_seconds_sum", ("query", "user.get")),
            ("GET", "/users/{id}"),
            move || {
                let i = next.fetch_add(7919, Ordering::Relaxed) % ids.len();
                let request = client_owned
                    .get(format!("{base_owned}/users/{}", ids[i]))
                    .bearer_auth(&token);
                async move {
                    let response = request.send().await.expect("send");
                    assert_eq!(response.status(), StatusCode::OK);
                    response.bytes().await.expect("body");
                }
            },
        )
        .await;
        report(store, "GET /users/{id}", clients, &cell);
    }
}

/// Runs `clients` loops of `request` for `duration`; scrapes `/metrics` before and after.
async fn cell<F, Fut>(
    base: &str,
    client: &reqwest::Client,
    clients: usize,
    duration: Duration,
    bus: (&str, (&str, &str)),
    route: (&str, &str),
    request: F,
) -> Cell
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let server = |text: &str| {
        sum(
            text,
            "http_request_duration_seconds_sum",
            &[("method", route.0), ("route", route.1)],
        )
    };
    let before = scrape(base, client).await;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    request().await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    let after = scrape(base, client).await;
    Cell {
        latencies,
        elapsed,
        bus_seconds: sum(&after, bus.0, &[bus.1]) - sum(&before, bus.0, &[bus.1]),
        server_seconds: server(&after) - server(&before),
    }
}

async fn scrape(base: &str, client: &reqwest::Client) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// The sum of the samples of `metric` whose labels include every pair of `labels`.
fn sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (name_and_labels, value) = line.rsplit_once(' ')?;
            let (name, rest) = name_and_labels
                .split_once('{')
                .unwrap_or((name_and_labels, "}"));
            (name == metric
                && labels
                    .iter()
                    .all(|(key, wanted)| rest.contains(&format!("{key}=\"{wanted}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The `permille`-th per mille of `sorted` (nearest rank).
fn percentile(sorted: &[Duration], permille: usize) -> Duration {
    let rank = ((sorted.len() - 1) * permille + 500) / 1000;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(store: &str, request: &str, clients: usize, cell: &Cell) {
    let mut sorted = cell.latencies.clone();
    sorted.sort_unstable();
    let count = sorted.len();
    let client_seconds: f64 = sorted.iter().map(Duration::as_secs_f64).sum();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{store:<9} {request:<18} {clients:>7} {:>9.0} {:>9.3} {:>9.3} {:>9.0}% {:>9.0}%",
        f64::from(u32::try_from(count).unwrap_or(u32::MAX)) / cell.elapsed.as_secs_f64(),
        ms(percentile(&sorted, 500)),
        ms(percentile(&sorted, 990)),
        100.0 * cell.bus_seconds / cell.server_seconds,
        100.0 * cell.bus_seconds / client_seconds,
    );
}
