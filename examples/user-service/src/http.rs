//! The HTTP layer (axum): routes, authentication, the request's metadata, and failures as
//! `application/problem+json`.
//!
//! Where the HTTP layer ends: it parses the request (path, query string, JSON body into a
//! typed command or query), authenticates the caller (a JWT whose subject becomes the acting
//! user, [`Metadata::user_id`]), and turns the `Idempotency-Key`, `X-Request-Id` and
//! `traceparent` headers into the command's [`Metadata`]. Then it calls the buses, and maps
//! what they return: a commit to 200/201, a failure through the framework's
//! [`Problems`] to a status and a problem body. Everything
//! between (validation, the aggregate, unique keys, idempotency, the store, metrics of each
//! command) is the framework's.
//!
//! Request ids, tracing, CORS, timeouts and body limits are `tower-http` layers; a last
//! layer gives the bare error responses of those layers and of the router (413, 404, 405,
//! 504) a problem body too, so every error a client sees has the same shape.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self as axum_middleware, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use cqrs_core::problem::{AsProblem, Failure, Problem, Problems};
use cqrs_core::{
    Command, CommandError, Committed, DispatchError, DomainError, GlobalPosition, Metadata, Query,
    QueryError, TraceParent,
};
use cqrs_postgres::subscription::{AfterPosition, ReadYourWritesError};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{ChangeEmail, DeactivateUser, Email, RegisterUser, RenameUser, UserError};
use crate::read_model::{DirectoryError, GetUser, ListUsers};
use crate::wire::{self, Service};

/// The request id header, set when the client sent none.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The idempotency key header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The buses.
    pub service: Service,
    /// Token verification.
    pub auth: Arc<Auth>,
    /// Failures to problems.
    pub problems: Problems,
    /// The Prometheus recorder's handle, rendered by `/metrics`.
    pub metrics: PrometheusHandle,
    /// Set when shutdown begins: `/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
}

// ---------------------------------------------------------------- problems as responses

/// A problem as an HTTP response: its status, `application/problem+json`, and
/// `Retry-After` when the client should wait.
pub struct ProblemResponse(pub Problem);

impl IntoResponse for ProblemResponse {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.0.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(cqrs_core::problem::CONTENT_TYPE),
        );
        if let Some(value) = self
            .0
            .retry_after_header()
            .and_then(|seconds| HeaderValue::from_str(&seconds).ok())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        if self.0.status == 401 {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl AppState {
    fn fail(&self, error: &(impl AsProblem + ?Sized)) -> Response {
        let problem = self.problems.problem(error);
        if problem.status >= 500 {
            tracing::error!(code = %problem.code, domain_code = ?problem.domain_code, "request failed");
        }
        ProblemResponse(problem).into_response()
    }

    fn http_problem(
        &self,
        status: u16,
        code: &str,
        title: &str,
        detail: impl Into<String>,
    ) -> Response {
        ProblemResponse(self.problems.http(status, code, title, detail)).into_response()
    }

    /// A query failure, also when it went through `ReadYourWrites`: the wrapped handler's
    /// domain code, or `read_model_behind` when the read model did not catch up in time.
    fn query_failed(&self, error: &QueryError<ReadYourWritesError<DirectoryError>>) -> Response {
        let mut failure = Failure::of_query(error);
        failure.domain_code = match error.handler_error() {
            Some(ReadYourWritesError::Handler(inner)) => Some(inner.code()),
            Some(ReadYourWritesError::Wait(_)) => Some("read_model_behind"),
            None => None,
        };
        ProblemResponse(self.problems.from_failure(failure)).into_response()
    }
}

/// A JSON body that does not deserialize into `T`: the framework's own "malformed" failure,
/// naming the field, so the typed routes and `POST /commands/{name}` answer alike.
fn parse_body<T: DeserializeOwned>(name: &'static str, body: &[u8]) -> Result<T, DispatchError> {
    let malformed = |path: String, message: String| DispatchError::Malformed {
        name,
        path,
        message,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| malformed(error.path().to_string(), error.inner().to_string()))?;
    deserializer
        .end()
        .map_err(|error| malformed(".".to_owned(), error.to_string()))?;
    Ok(value)
}

fn parse_query<T: DeserializeOwned>(
    name: &'static str,
    query: Option<&str>,
) -> Result<T, DispatchError> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.unwrap_or("").as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|error| DispatchError::Malformed {
        name,
        path: error.path().to_string(),
        message: error.inner().to_string(),
    })
}

fn parse_id(state: &AppState, name: &'static str, id: &str) -> Result<Uuid, Box<Response>> {
    id.parse().map_err(|error: uuid::Error| {
        Box::new(state.fail(&DispatchError::Malformed {
            name,
            path: "id".to_owned(),
            message: error.to_string(),
        }))
    })
}

// ---------------------------------------------------------------- authentication

/// The claims of a bearer token: the subject is the acting user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The acting user.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
}

/// HS256 bearer tokens: verifies them, and issues them for tools and tests.
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("a bearer token is required")]
    Missing,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is malformed, or its signature does not verify.
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl Auth {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `subject`, valid for `ttl` (expired `ttl` ago when `expired`).
    ///
    /// # Panics
    ///
    /// Never: HS256 signs any claims.
    pub fn token(&self, subject: &str, ttl: Duration, expired: bool) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = if expired {
            now.saturating_sub(ttl.as_secs())
        } else {
            now + ttl.as_secs()
        };
        let claims = Claims {
            sub: subject.to_owned(),
            exp,
            iat: now,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signs any claims")
    }

    /// The acting user of a request with these headers.
    pub fn verify(&self, headers: &HeaderMap) -> Result<String, AuthError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(error.to_string()),
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("the subject is empty".to_owned()));
        }
        Ok(data.claims.sub)
    }
}

/// The authenticated caller's metadata: the token's subject as the acting user, the request
/// id as the correlation id, the `Idempotency-Key` (scoped by the user) and `traceparent`.
pub struct Caller(pub Metadata);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let user = state.auth.verify(&parts.headers).map_err(|error| {
            state.http_problem(401, "unauthorized", "Unauthorized", error.to_string())
        })?;
        let mut metadata = Metadata::default();
        if let Some(id) = header_text(&parts.headers, &REQUEST_ID).and_then(|id| id.parse().ok()) {
            metadata = metadata.with_correlation_id(id);
        }
        if let Some(key) = parts.headers.get(&IDEMPOTENCY_KEY) {
            let key = key
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY)
                .ok_or_else(|| {
                    state.http_problem(
                        400,
                        "invalid_idempotency_key",
                        "Invalid Idempotency-Key",
                        format!("1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                    )
                })?;
            // Keys are scoped by command name in the store; scope them by user too, so that
            // two users' keys never meet.
            metadata = metadata.with_idempotency_key(format!("{user}/{key}"));
        }
        if let Some(traceparent) =
            header_text(&parts.headers, &HeaderName::from_static("traceparent"))
                .and_then(|text| text.parse::<TraceParent>().ok())
        {
            metadata = metadata.with_traceparent(traceparent);
        }
        Ok(Caller(metadata.with_user_id(user)))
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

// ---------------------------------------------------------------- routes

/// What a write answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The user.
    pub id: Uuid,
    /// The user's stream version after the command.
    pub version: u64,
    /// The global position of the command's last event: pass it as `?after=` to read the
    /// write back.
    pub position: u64,
}

impl Written {
    fn new(id: Uuid, committed: &Committed) -> Self {
        Self {
            id,
            version: committed.stream_version,
            position: committed.position.0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserBody {
    email: Email,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    email: Email,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    after: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    page: Option<u32>,
    per_page: Option<u32>,
    active: Option<bool>,
    after: Option<u64>,
}

/// The id of a user created under an idempotency key: derived from the key, so that a
/// retried `POST /users` is the same command (same body) and gets the first outcome back.
fn user_id_for(metadata: &Metadata) -> Uuid {
    match metadata.idempotency_key() {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(RegisterUser::NAME)
                .chain_update([0])
                .chain_update(key)
                .finalize();
            let mut bytes = [0; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_custom_bytes(bytes).into_uuid()
        }
        None => Uuid::now_v7(),
    }
}

async fn create_user(
    State(state): State<AppState>,
    Caller(metadata): Caller,
    body: Bytes,
) -> Response {
    let body: CreateUserBody = match parse_body(RegisterUser::NAME, &body) {
        Ok(body) => body,
        Err(error) => return state.fail(&error),
    };
    let user_id = user_id_for(&metadata);
    let command = RegisterUser {
        user_id,
        email: body.email,
        name: body.name,
    };
    match state.service.commands.execute_with(command, metadata).await {
        Ok(committed) => {
            let location = format!("/users/{user_id}");
            (
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(Written::new(user_id, &committed)),
            )
                .into_response()
        }
        Err(error) => state.fail(&error),
    }
}

fn written(
    state: &AppState,
    id: Uuid,
    outcome: Result<Committed, CommandError<UserError>>,
) -> Response {
    match outcome {
        Ok(committed) => Json(Written::new(id, &committed)).into_response(),
        Err(error) => state.fail(&error),
    }
}

async fn change_email(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Caller(metadata): Caller,
    body: Bytes,
) -> Response {
    let user_id = match parse_id(&state, ChangeEmail::NAME, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body: EmailBody = match parse_body(ChangeEmail::NAME, &body) {
        Ok(body) => body,
        Err(error) => return state.fail(&error),
    };
    let command = ChangeEmail {
        user_id,
        email: body.email,
    };
    written(
        &state,
        user_id,
        state.service.commands.execute_with(command, metadata).await,
    )
}

async fn rename(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Caller(metadata): Caller,
    body: Bytes,
) -> Response {
    let user_id = match parse_id(&state, RenameUser::NAME, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let body: NameBody = match parse_body(RenameUser::NAME, &body) {
        Ok(body) => body,
        Err(error) => return state.fail(&error),
    };
    let command = RenameUser {
        user_id,
        name: body.name,
    };
    written(
        &state,
        user_id,
        state.service.commands.execute_with(command, metadata).await,
    )
}

async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Caller(metadata): Caller,
) -> Response {
    let user_id = match parse_id(&state, DeactivateUser::NAME, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let command = DeactivateUser { user_id };
    written(
        &state,
        user_id,
        state.service.commands.execute_with(command, metadata).await,
    )
}

/// `POST /commands/{name}`: any command by its wire name, the body as the command's JSON.
async fn command_by_name(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Caller(metadata): Caller,
    body: Bytes,
) -> Response {
    match state
        .service
        .command_json
        .dispatch_json_with(&name, &body, metadata)
        .await
    {
        Ok(committed) => Json(committed).into_response(),
        Err(error) => state.fail(&error),
    }
}

async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    Caller(_): Caller,
) -> Response {
    let user_id = match parse_id(&state, GetUser::NAME, &id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let params: ReadParams = match parse_query(GetUser::NAME, query.as_deref()) {
        Ok(params) => params,
        Err(error) => return state.fail(&error),
    };
    let query = GetUser { user_id };
    let answer = match params.after {
        Some(after) => {
            let waited = AfterPosition::new(GlobalPosition(after), query);
            state.service.queries.execute(waited).await
        }
        None => state.service.queries.execute(query).await.map_err(lift),
    };
    match answer {
        Ok(user) => Json(user).into_response(),
        Err(error) => state.query_failed(&error),
    }
}

async fn list_users(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    Caller(_): Caller,
) -> Response {
    let params: ListParams = match parse_query(ListUsers::NAME, query.as_deref()) {
        Ok(params) => params,
        Err(error) => return state.fail(&error),
    };
    let query = ListUsers {
        page: params.page.unwrap_or(1),
        per_page: params.per_page.unwrap_or(20),
        active: params.active,
    };
    let answer = match params.after {
        Some(after) => {
            let waited = AfterPosition::new(GlobalPosition(after), query);
            state.service.queries.execute(waited).await
        }
        None => state.service.queries.execute(query).await.map_err(lift),
    };
    match answer {
        Ok(page) => Json(page).into_response(),
        Err(error) => state.query_failed(&error),
    }
}

/// A plain query's failure in the type of one that went through `ReadYourWrites`.
fn lift(error: QueryError<DirectoryError>) -> QueryError<ReadYourWritesError<DirectoryError>> {
    match error {
        QueryError::Handler(inner) => QueryError::Handler(ReadYourWritesError::Handler(inner)),
        QueryError::Invalid(fields) => QueryError::Invalid(fields),
        QueryError::Timeout { query, after } => QueryError::Timeout { query, after },
        QueryError::Refused { middleware, reason } => QueryError::Refused { middleware, reason },
        QueryError::CircuitOpen(open) => QueryError::CircuitOpen(open),
        QueryError::RateLimited(limited) => QueryError::RateLimited(limited),
        QueryError::ConcurrencyLimited(limited) => QueryError::ConcurrencyLimited(limited),
        QueryError::Forbidden(forbidden) => QueryError::Forbidden(forbidden),
    }
}

async fn health() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return state.http_problem(
            503,
            "shutting_down",
            "Shutting down",
            "the service is stopping",
        );
    }
    match state.service.ready().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(reason) => state.http_problem(503, "not_ready", "Not ready", reason),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(
    State(state): State<AppState>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    state.http_problem(
        404,
        "not_found",
        "Not found",
        format!("no route for {method} {}", uri.path()),
    )
}

/// Counts requests and times them per route, method and status.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Gives bare error responses (from the body limit, the timeout, the router) a problem body.
async fn problem_bodies(State(state): State<AppState>, response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == cqrs_core::problem::CONTENT_TYPE.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (code, title) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "Payload too large"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "Method not allowed"),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => {
            ("request_timeout", "Request timed out")
        }
        StatusCode::NOT_FOUND => ("not_found", "Not found"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "Unsupported media type"),
        _ => ("http_error", "HTTP error"),
    };
    let detail = status.canonical_reason().unwrap_or("error").to_lowercase();
    let mut problem_response = state.http_problem(status.as_u16(), code, title, detail);
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem_response
                .headers_mut()
                .insert(name.clone(), value.clone());
        }
    }
    problem_response
}

/// The router with every layer, for `state`.
pub fn router(state: AppState, config: &Config) -> Router {
    let cors = match &config.cors_origins {
        None => CorsLayer::new().allow_origin(Any),
        Some(origins) => CorsLayer::new().allow_origin(AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )),
    }
    .allow_methods([Method::GET, Method::POST, Method::PATCH])
    .allow_headers([
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        IDEMPOTENCY_KEY,
        REQUEST_ID,
    ])
    .expose_headers([header::LOCATION, REQUEST_ID, header::RETRY_AFTER]);

    Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/email", patch(change_email))
        .route("/users/{id}/name", patch(rename))
        .route("/users/{id}/deactivate", post(deactivate))
        .route("/commands/{name}", post(command_by_name))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        // Innermost first: the body limit and the timeout wrap the handlers; request ids
        // and tracing wrap everything, so every response carries the id.
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ))
        .layer(cors)
        .layer(axum_middleware::from_fn(track))
        .layer(axum_middleware::map_response_with_state(state.clone(), problem_bodies))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
            let id = header_text(request.headers(), &REQUEST_ID).unwrap_or("-");
            tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// The problems of this service (see [`wire::problems`]).
pub fn problems() -> Problems {
    wire::problems()
}
