//! The user service over real HTTP, on the in-memory store and on PostgreSQL: each scenario
//! runs on both. Every failure case checks that nothing was written.

mod common;

use std::time::Duration;

use common::{Store, TestServer, json, problem};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use user_service::http::Auth;

/// Creates a user as `alice`; returns (id, position).
async fn create(server: &TestServer, email: &str, name: &str) -> (String, u64) {
    let response = server
        .post("/users", json!({ "email": email, "name": name }))
        .await;
    let location = response
        .headers()
        .get("location")
        .map(|value| value.to_str().unwrap().to_owned());
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(format!("/users/{id}").as_str()));
    (id, body["position"].as_u64().unwrap())
}

fn position(body: &Value) -> u64 {
    body["position"]
        .as_u64()
        .expect("a write answers its position")
}

// One story, told in the order a client lives it.
#[allow(clippy::too_many_lines)]
async fn story(store: Store) {
    let server = TestServer::start(store).await;

    // Create; the same address again (other case, other spaces) is a conflict.
    let (ada, _) = create(&server, "ada@example.com", "Ada").await;
    let (status, body) = problem(
        server
            .post(
                "/users",
                json!({ "email": " ADA@example.com", "name": "Impostor" }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["domain_code"], "email_taken", "{body}");
    assert_eq!(
        body["type"],
        "urn:user-service:problem:rejected:email_taken"
    );
    let (bob, _) = create(&server, "bob@example.com", "Bob").await;

    // Update: a changed address frees the old one.
    let (status, body) = json(
        server
            .patch(
                &format!("/users/{ada}/email"),
                json!({ "email": "ada@lovelace.org" }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (carol, _) = create(&server, "ada@example.com", "Carol").await;
    let (status, body) = json(
        server
            .patch(&format!("/users/{bob}/name"), json!({ "name": "Robert" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = position(&body);

    // Read back, waiting for the read model to pass the last write.
    let (status, user) = json(server.get(&format!("/users/{bob}?after={after}")).await).await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(
        user,
        json!({ "id": bob, "email": "bob@example.com", "name": "Robert", "active": true })
    );
    let (_, user) = json(server.get(&format!("/users/{ada}?after={after}")).await).await;
    assert_eq!(user["email"], "ada@lovelace.org");

    // Pagination with the total count, in registration order.
    let (status, page) = json(
        server
            .get(&format!("/users?page=1&per_page=2&after={after}"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (page["total"].as_u64(), page["page"].as_u64()),
        (Some(3), Some(1))
    );
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ada.as_str(), bob.as_str()]);
    let (_, page) = json(server.get("/users?page=2&per_page=2").await).await;
    assert_eq!(page["items"][0]["id"], carol.as_str());
    assert_eq!(page["total"], 3);
    let (_, page) = json(server.get("/users?page=3&per_page=2").await).await;
    assert_eq!(
        (
            page["items"].as_array().unwrap().len(),
            page["total"].as_u64()
        ),
        (0, Some(3))
    );

    // Deactivate; a later change is refused, and nothing is written for it.
    let (status, body) = json(
        server
            .request(Method::POST, &format!("/users/{ada}/deactivate"), "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = position(&body);
    let before = server.events().await.len();
    let (status, body) = problem(
        server
            .patch(&format!("/users/{ada}/name"), json!({ "name": "Ada L." }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["domain_code"], "user_deactivated");
    assert_eq!(server.events().await.len(), before);

    let (_, inactive) = json(
        server
            .get(&format!("/users?active=false&after={after}"))
            .await,
    )
    .await;
    assert_eq!(inactive["total"], 1);
    assert_eq!(inactive["items"][0]["id"], ada.as_str());
    let (_, active) = json(server.get("/users?active=true").await).await;
    assert_eq!(active["total"], 2);

    // JSON dispatch by wire name reaches the same aggregate.
    let (status, body) = json(
        server
            .post(
                "/commands/user.rename",
                json!({ "user_id": carol, "name": "Caroline" }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stream_id"], format!("user-{carol}"));

    // An unknown user is a 404 problem.
    let missing = uuid::Uuid::now_v7();
    let (status, body) = problem(server.get(&format!("/users/{missing}")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["domain_code"], "not_found");

    // The token's subject is the acting user of every event.
    let events = server.events().await;
    assert_eq!(events.len(), 7);
    assert!(
        events
            .iter()
            .all(|event| event.metadata.user_id.as_deref() == Some("alice"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_story_on_memory() {
    story(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_story_on_postgres() {
    story(Store::Postgres).await;
}

async fn auth_failures(store: Store) {
    let server = TestServer::start(store).await;
    let body = json!({ "email": "eve@example.com", "name": "Eve" });

    let none = server
        .client
        .post(server.url("/users"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        none.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap()),
        Some("Bearer")
    );
    let (status, problem_body) = problem(none).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_body["code"], "unauthorized");

    let forged = Auth::new(b"another secret, also more than thirty-two bytes").token(
        "alice",
        Duration::from_secs(600),
        false,
    );
    let (status, problem_body) = problem(
        server
            .client
            .post(server.url("/users"))
            .bearer_auth(forged)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        problem_body["detail"].as_str().unwrap().contains("invalid"),
        "{problem_body}"
    );

    let expired = server.auth.token("alice", Duration::from_secs(3600), true);
    let (status, problem_body) = problem(
        server
            .client
            .post(server.url("/users"))
            .bearer_auth(expired)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_body["detail"], "the token has expired");

    let (status, _) = problem(
        server
            .client
            .get(server.url("/users"))
            .header("authorization", "Basic YWxpY2U6c2VjcmV0")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    assert!(server.events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_failures_on_memory() {
    auth_failures(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_failures_on_postgres() {
    auth_failures(Store::Postgres).await;
}

// Every kind of bad request against one server, then one check that none wrote anything.
#[allow(clippy::too_many_lines)]
async fn bad_requests(store: Store) {
    let server = TestServer::start(store).await;
    let (ada, _) = create(&server, "ada@example.com", "Ada").await;
    let written = server.events().await.len();

    // Malformed bodies: 400 with the field named.
    let cases = [
        (json!({ "email": 5, "name": "Eve" }), "email"),
        (json!({ "email": "not an address", "name": "Eve" }), "email"),
        (
            json!({ "email": "eve@example.com", "name": ["Eve"] }),
            "name",
        ),
        (
            json!({ "email": "eve@example.com", "name": "Eve", "role": "admin" }),
            "role",
        ),
    ];
    for (body, field) in cases {
        let (status, problem_body) = problem(server.post("/users", body.clone()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(problem_body["code"], "bad_request");
        let named = problem_body["errors"][0]["field"] == field
            || problem_body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`"));
        assert!(named, "{body} -> {problem_body}");
    }
    let (status, problem_body) = problem(
        server
            .post("/users", json!({ "email": "eve@example.com" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        problem_body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`name`")
    );
    let (status, problem_body) = problem(
        server
            .request(Method::POST, "/users", "alice")
            .header("content-type", "application/json")
            .body("{\"email\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem_body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );

    // Invalid fields (the command's own validation): 400 naming the field.
    let (status, problem_body) = problem(
        server
            .post("/users", json!({ "email": "eve@example.com", "name": "" }))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem_body["code"], "validation");
    assert_eq!(problem_body["errors"][0]["field"], "name");
    let (status, problem_body) = problem(server.get("/users?per_page=1000").await).await;
    assert_eq!(
        (status, &problem_body["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("per_page"))
    );
    let (status, problem_body) = problem(server.get("/users?page=first").await).await;
    assert_eq!(
        (status, &problem_body["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("page"))
    );
    let (status, problem_body) = problem(
        server
            .patch("/users/not-a-uuid/name", json!({ "name": "X" }))
            .await,
    )
    .await;
    assert_eq!(
        (status, &problem_body["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("id"))
    );

    // A body over the limit: 413, as a problem.
    let huge = "x".repeat(server.config.body_limit + 1);
    let (status, problem_body) = problem(
        server
            .post(
                "/users",
                json!({ "email": "eve@example.com", "name": huge }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem_body["code"], "payload_too_large");

    // An unknown command name: 404; a malformed body by name: 400 naming the field.
    let (status, problem_body) =
        problem(server.post("/commands/user.explode", json!({})).await).await;
    assert_eq!(
        (status, problem_body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_command"))
    );
    let (status, problem_body) = problem(
        server
            .post(
                "/commands/user.rename",
                json!({ "user_id": ada, "name": 7 }),
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, &problem_body["errors"][0]["field"]),
        (StatusCode::BAD_REQUEST, &json!("name"))
    );

    // An unknown route and a wrong method are problems too.
    let (status, _) = problem(server.get("/nowhere").await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = problem(
        server
            .request(Method::DELETE, "/users", "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    assert_eq!(
        server.events().await.len(),
        written,
        "a failed request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_on_memory() {
    bad_requests(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_on_postgres() {
    bad_requests(Store::Postgres).await;
}

async fn one_address_many_registrations(store: Store) {
    let server = TestServer::start(store).await;
    let attempts = (0..50).map(|i| {
        let request = server
            .request(Method::POST, "/users", "alice")
            .json(&json!({ "email": "race@example.com", "name": format!("Racer {i}") }));
        async move { request.send().await.expect("send").status() }
    });
    let statuses = futures_join_all(attempts).await;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, 49), "{statuses:?}");
    assert_eq!(server.events().await.len(), 1);
}

/// Runs the futures concurrently, each on its own task.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_registrations_of_one_address_give_one_user_on_memory() {
    one_address_many_registrations(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_registrations_of_one_address_give_one_user_on_postgres() {
    one_address_many_registrations(Store::Postgres).await;
}

async fn idempotency(store: Store) {
    let server = TestServer::start(store).await;
    let send = |key: &'static str, user: &'static str, name: &'static str| {
        server
            .request(Method::POST, "/users", user)
            .header("idempotency-key", key)
            .json(&json!({ "email": "once@example.com", "name": name }))
            .send()
    };
    let (first_status, first) = json(send("k-1", "alice", "Once").await.unwrap()).await;
    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    let (again_status, again) = json(send("k-1", "alice", "Once").await.unwrap()).await;
    assert_eq!((again_status, &again), (StatusCode::CREATED, &first));
    assert_eq!(server.events().await.len(), 1);

    let (status, body) = problem(send("k-1", "alice", "Twice").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(body["idempotency_key"], "alice/k-1");

    // Another user's key of the same text is another key: this one is a new registration,
    // refused because the address is taken.
    let (status, body) = problem(send("k-1", "bob", "Once").await.unwrap()).await;
    assert_eq!(
        (status, body["domain_code"].as_str()),
        (StatusCode::CONFLICT, Some("email_taken"))
    );
    assert_eq!(server.events().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_a_retry_safe_on_memory() {
    idempotency(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_a_retry_safe_on_postgres() {
    idempotency(Store::Postgres).await;
}

async fn operations(store: Store) {
    let mut server = TestServer::start(store).await;
    let (status, body) = json(
        server
            .client
            .get(server.url("/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "status": "ok" })));
    let (status, body) = json(
        server
            .client
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "status": "ready" }))
    );

    create(&server, "metrics@example.com", "M").await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("x-request-id").is_some());
    let text = response.text().await.unwrap();
    for metric in [
        "cqrs_commands_total",
        "cqrs_command_duration_seconds",
        "http_requests_total",
        "http_request_duration_seconds",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }
    assert!(text.contains("command=\"user.register\""), "{text}");

    // The caller's request id is kept and echoed.
    let response = server
        .request(Method::GET, "/users", "alice")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-42");

    // On PostgreSQL, readiness includes the directory's subscription: stopped, not ready.
    if store == Store::Postgres {
        server
            .service()
            .stop()
            .await
            .expect("the subscription stops");
        let (status, body) = problem(
            server
                .client
                .get(server.url("/ready"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready"))
        );
    }

    // After a graceful shutdown nothing is listening any more.
    let url = server.url("/health");
    server.shutdown().await;
    assert!(server.client.get(url).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_shutdown_on_memory() {
    operations(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_metrics_and_shutdown_on_postgres() {
    operations(Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_directory_on_postgres_resumes_after_a_restart_without_applying_twice() {
    let server = TestServer::start(Store::Postgres).await;
    let (ada, _) = create(&server, "ada@example.com", "Ada").await;
    let (_, bob_position) = create(&server, "bob@example.com", "Bob").await;
    let (_, page) = json(server.get(&format!("/users?after={bob_position}")).await).await;
    assert_eq!(page["total"], 2);

    let server = server.restart().await;
    let (status, body) = json(
        server
            .patch(
                &format!("/users/{ada}/name"),
                json!({ "name": "Ada Lovelace" }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = position(&body);
    let (_, page) = json(server.get(&format!("/users?after={after}")).await).await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["items"][0]["name"], "Ada Lovelace");
    // The uniqueness of addresses survived the restart too.
    let (status, _) = problem(
        server
            .post(
                "/users",
                json!({ "email": "bob@example.com", "name": "Bob II" }),
            )
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

/// A request in flight when shutdown begins is finished and answered; only then does the
/// server stop. The request's body arrives in two parts, shutdown starting in between.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_the_requests_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut server = TestServer::start(Store::Memory).await;
    let body = json!({ "email": "late@example.com", "name": "Late" }).to_string();
    let (first, second) = body.split_at(10);
    let mut stream = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /users HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        server.token("alice"),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let health = server.url("/health");
    let running = server.running.take().unwrap();
    let store = running.service().store.clone();
    let shutdown = tokio::spawn(running.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the request in flight"
    );
    // No new connections are taken meanwhile.
    assert!(server.client.get(health).send().await.is_err());

    stream.write_all(second.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    shutdown.await.unwrap().expect("a clean shutdown");
    let events = store
        .read_all_from(cqrs_core::GlobalPosition::START, 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

/// A request that outlasts `REQUEST_TIMEOUT_MS` (here: its body never finishes) is answered
/// 504 with a problem, and writes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_over_the_time_limit_is_a_504_problem() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = user_service::config::Config::for_tests(common::SECRET);
    config.request_timeout = Duration::from_millis(300);
    let server = TestServer::on(None, config).await;
    let mut stream = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /users HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{{\"email\"",
        server.token("alice"),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answered within the limit")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(
        response.contains("\"code\":\"request_timeout\""),
        "{response}"
    );
    assert!(server.events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_allows_the_configured_origins_only() {
    let preflight = |server: &TestServer, origin: &'static str| {
        server
            .client
            .request(Method::OPTIONS, server.url("/users"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,idempotency-key",
            )
            .send()
    };
    let open = TestServer::start(Store::Memory).await;
    let response = preflight(&open, "https://anywhere.example").await.unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");

    let mut config = user_service::config::Config::for_tests(common::SECRET);
    config.cors_origins = Some(vec!["https://app.example".to_owned()]);
    let closed = TestServer::on(None, config).await;
    let response = preflight(&closed, "https://app.example").await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let response = preflight(&closed, "https://evil.example").await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
