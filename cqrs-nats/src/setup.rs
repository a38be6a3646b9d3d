//! The JetStream stream the relay publishes to: created when missing, checked when present.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::subject::covers;

/// The JetStream stream events are published to, and what it must be like.
///
/// At start the relay creates the stream with these settings if it does not exist, and
/// otherwise checks that the existing one is fit: it captures every subject the relay
/// publishes on, keeps messages by the expected retention, acknowledges publishes, and drops
/// a re-published message id for at least [`duplicate_window`](Self::duplicate_window).
/// Anything else is reported as [`SetupError::IncompatibleStream`], listing every problem.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The stream's name (no `.`, `*`, `>` or whitespace).
    pub name: String,
    /// How long JetStream remembers a message id to drop a re-publish. A relay restarted after
    /// a crash re-publishes its unconfirmed tail; within this window JetStream drops the
    /// copies. Default 2 minutes; an existing stream with a shorter window is refused.
    pub duplicate_window: Duration,
    /// What the stream keeps. Default [`RetentionPolicy::Limits`]: every consumer, now or
    /// later, sees every event (within the limits below).
    pub retention: RetentionPolicy,
    /// Where the stream keeps messages. Default [`StorageType::File`].
    pub storage: StorageType,
    /// Oldest message kept; zero (the default) keeps them without an age limit.
    pub max_age: Duration,
    /// Create the stream when it does not exist (default `true`); otherwise a missing stream
    /// is [`SetupError::MissingStream`].
    pub create: bool,
}

impl StreamSettings {
    /// Settings for a stream named `name`, with the defaults.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            duplicate_window: Duration::from_secs(120),
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            max_age: Duration::ZERO,
            create: true,
        }
    }

    fn config(&self, filter: &str) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![filter.to_owned()],
            retention: self.retention,
            storage: self.storage,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            ..Config::default()
        }
    }
}

/// What is wrong with the JetStream side, found at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The server does not run JetStream (started without `-js`), or this account has no
    /// access to it.
    #[error(
        "JetStream is not available on the NATS server (is it started with JetStream enabled, `-js`?): {0}"
    )]
    JetStreamUnavailable(String),
    /// The stream exists with settings the relay cannot work with.
    #[error("JetStream stream `{stream}` exists with incompatible settings: {}", problems.join("; "))]
    IncompatibleStream {
        /// The stream.
        stream: String,
        /// Every problem found, one sentence each.
        problems: Vec<String>,
    },
    /// The stream does not exist and [`StreamSettings::create`] is off.
    #[error("JetStream stream `{0}` does not exist (and creating it is turned off)")]
    MissingStream(String),
    /// The server refused or failed a request.
    #[error("JetStream request failed: {0}")]
    Request(String),
}

/// Creates the stream, or checks the existing one against `settings` and the subject filter
/// the relay publishes under.
pub(crate) async fn ensure_stream(
    client: &async_nats::Client,
    js: &Context,
    settings: &StreamSettings,
    filter: &str,
) -> Result<jetstream::stream::Info, SetupError> {
    jetstream_available(client).await?;
    match js.get_stream(&settings.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| SetupError::Request(e.to_string()))?
                .clone();
            let problems = problems(&info.config, settings, filter);
            if problems.is_empty() {
                Ok(info)
            } else {
                Err(SetupError::IncompatibleStream {
                    stream: settings.name.clone(),
                    problems,
                })
            }
        }
        Err(error) => match error.kind() {
            GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                if !settings.create {
                    return Err(SetupError::MissingStream(settings.name.clone()));
                }
                let mut created = js
                    .create_stream(settings.config(filter))
                    .await
                    .map_err(|e| SetupError::Request(format!("creating the stream: {e}")))?;
                created
                    .info()
                    .await
                    .cloned()
                    .map_err(|e| SetupError::Request(e.to_string()))
            }
            _ => Err(SetupError::Request(error.to_string())),
        },
    }
}

/// Asks the server's JetStream API for the account's information: no responder, or an error
/// saying JetStream is off, means JetStream is unavailable. (The answer is read loosely: its
/// fields differ between server versions.)
async fn jetstream_available(client: &async_nats::Client) -> Result<(), SetupError> {
    let unavailable = |reason: String| SetupError::JetStreamUnavailable(reason);
    let request = client.request("$JS.API.INFO", bytes::Bytes::new());
    let response = match tokio::time::timeout(Duration::from_secs(5), request).await {
        Err(_) => {
            return Err(SetupError::Request(
                "JetStream API request timed out".to_owned(),
            ));
        }
        Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
            return Err(unavailable("no responder on the JetStream API".to_owned()));
        }
        Ok(Err(error)) => return Err(SetupError::Request(error.to_string())),
        Ok(Ok(response)) => response,
    };
    let answer: serde_json::Value = serde_json::from_slice(&response.payload)
        .map_err(|e| SetupError::Request(format!("unreadable JetStream API answer: {e}")))?;
    if let Some(error) = answer.get("error") {
        let code = error.get("err_code").and_then(serde_json::Value::as_u64);
        let description = error
            .get("description")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no description")
            .to_owned();
        return Err(
            if code == Some(ErrorCode::JETSTREAM_NOT_ENABLED.0)
                || code == Some(ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT.0)
                || error.get("code").and_then(serde_json::Value::as_u64) == Some(503)
            {
                unavailable(description)
            } else {
                SetupError::Request(description)
            },
        );
    }
    Ok(())
}

/// Every way `config` falls short of what the relay needs.
fn problems(config: &Config, settings: &StreamSettings, filter: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !config
        .subjects
        .iter()
        .any(|subject| covers(subject, filter))
    {
        problems.push(format!(
            "its subjects {:?} do not capture `{filter}`, where the relay publishes",
            config.subjects
        ));
    }
    if config.retention != settings.retention {
        problems.push(format!(
            "its retention is {:?}, the relay expects {:?}",
            config.retention, settings.retention
        ));
    }
    if config.duplicate_window < settings.duplicate_window {
        problems.push(format!(
            "its duplicate window is {:?}, shorter than the {:?} the relay needs to drop a re-publish",
            config.duplicate_window, settings.duplicate_window
        ));
    }
    if config.no_ack {
        problems.push(
            "it does not acknowledge publishes (`no_ack`), so the relay could never confirm an event"
                .to_owned(),
        );
    }
    if config.sealed {
        problems.push("it is sealed: it takes no new messages".to_owned());
    }
    problems
}
