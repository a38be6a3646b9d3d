//! What the NATS tests share: a fresh PostgreSQL database per test (the helper of
//! `cqrs-postgres`'s tests), and a JetStream stream and subject prefix of its own per test,
//! deleted at the end.
#![allow(dead_code)]

#[path = "../../../cqrs-postgres/tests/common/mod.rs"]
mod pg;

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use futures_util::StreamExt;
pub use pg::TestDb;

/// The NATS server tests run against.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "127.0.0.1:4222".to_owned())
}

/// Runs `scripts/ensure-nats` once per test binary: starts the local server if it is
/// installed but stopped. Returns whether NATS is up.
fn ensure_nats() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    *UP.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-nats");
        match std::process::Command::new("bash").arg(script).status() {
            Ok(status) => status.success(),
            Err(error) => {
                eprintln!("cannot run {script}: {error}");
                false
            }
        }
    })
}

/// Connects to NATS, or says loudly that the test is skipped and returns `None`.
pub async fn connect(test: &str) -> Option<async_nats::Client> {
    if !ensure_nats() {
        skipped(test);
        return None;
    }
    match async_nats::connect(nats_url()).await {
        Ok(client) => Some(client),
        Err(error) => {
            eprintln!("cannot connect to NATS at {}: {error}", nats_url());
            skipped(test);
            None
        }
    }
}

fn skipped(test: &str) {
    eprintln!(
        "\n==================== SKIPPED: {test} ====================\n\
         No NATS server with JetStream at {} and none could be started\n\
         (scripts/ensure-nats). This test did NOT run.\n\
         ==========================================================\n",
        nats_url()
    );
}

/// A JetStream stream name and subject prefix that belong to one test; the stream is deleted
/// when this goes away (also when the test panics).
pub struct TestStream {
    pub name: String,
    pub prefix: String,
}

impl TestStream {
    pub fn new() -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Self {
            name: format!("TEST_{id}"),
            prefix: format!("t{id}"),
        }
    }

    pub fn js(client: &async_nats::Client) -> Context {
        jetstream::new(client.clone())
    }

    /// Every message in the stream, in stream order: (stream sequence, subject, headers,
    /// payload).
    pub async fn messages(&self, client: &async_nats::Client) -> Vec<StoredMessage> {
        let js = Self::js(client);
        let mut stream = js.get_stream(&self.name).await.expect("the test stream");
        let count = stream.info().await.expect("stream info").state.messages;
        if count == 0 {
            return Vec::new();
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut out = Vec::new();
        while (out.len() as u64) < count {
            let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .expect("the stream's messages arrive")
                .expect("stream open")
                .expect("message");
            let sequence = message.info().expect("jetstream message").stream_sequence;
            out.push(StoredMessage {
                sequence,
                subject: message.subject.to_string(),
                headers: message.headers.clone(),
                payload: message.payload.to_vec(),
            });
        }
        out
    }
}

/// One message as JetStream stored it.
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub headers: Option<async_nats::HeaderMap>,
    pub payload: Vec<u8>,
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A runtime of its own on a thread of its own: the test's runtime is blocked here.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = async_nats::connect(nats_url()).await?;
                let js = jetstream::new(client);
                match js.delete_stream(&name).await {
                    Ok(_) => Ok::<_, async_nats::Error>(()),
                    // Never created (the test stopped early or checked a refusal).
                    Err(error) if error.to_string().contains("not found") => Ok(()),
                    Err(error) => Err(error.into()),
                }
            })
        })
        .join();
        if !std::thread::panicking() {
            match deleted {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("could not delete test stream {}: {error}", self.name),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }
}
