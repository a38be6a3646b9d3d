//! What upcasting costs on read: an aggregate load of `UPCAST_EVENTS` (default 10 000) events
//! from the in-memory store, the same aggregate logic over three event enums.
//!
//! ```text
//! cargo bench -p cqrs-benchmarks --bench upcast
//! ```
//!
//! - **plain**: the enum declares version 3 and no upcasters; the stream holds version 3.
//! - **declared**: the same enum with upcasters from versions 1 and 2 and an old name; the
//!   stream holds version 3 (the upcasters are declared, never run). Target: at least 0.95x
//!   the events per second of plain.
//! - **chain**: the enum of declared; the stream holds version 1, each event read through
//!   v1 → v2 → v3 (typed `Upcast` steps). Target: at most 2x the time of plain.
//! - **raw chain** (no target; shown for the choice it informs): the v1 → v2 step is a raw
//!   JSON function, so each event goes through a `serde_json::Value`.
//!
//! Each variant is timed twice: a whole `Repository::load` (the store's read, decoding,
//! applying) and decoding alone (`RecordedEvent::decode_all` over the stored events), where
//! the difference between the enums is not diluted by the rest of the load. `UPCAST_ROUNDS`
//! (default 201) rounds rotate which variant runs first; medians are compared. Times are the
//! thread's CPU time (all the work runs on one thread), so other jobs on a shared machine
//! move the spread, not the medians.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cqrs_benchmarks::measure::{Summary, env_or, per_second, table, turns};
use cqrs_core::prelude::*;
use cqrs_core::{Aggregate, ExpectedVersion, NewEvent, Payload, Repository, RepositoryOptions};
use serde_json::json;

/// Version 3 of a deposit (amount in cents and its currency), and one account's balance
/// built from it: the same in each module below, since a payload type belongs to one enum.
macro_rules! current {
    ($stream:literal) => {
        /// Version 3 of a deposit.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct Deposited {
            /// Cents.
            pub cents: u64,
            /// ISO currency code.
            pub currency: String,
        }

        /// The benchmark's aggregate.
        #[derive(Debug, Default)]
        pub struct Account {
            /// The balance.
            pub cents: u64,
        }

        #[aggregate(event = Events, error = std::convert::Infallible, name = $stream)]
        impl Account {
            #[event_handler]
            fn on_deposited(&mut self, e: &Deposited) {
                self.cents += e.cents;
            }
        }
    };
}

/// Version 2: whole units and a currency, and how it becomes version 3.
macro_rules! version_2 {
    () => {
        /// Version 2 of a deposit.
        #[derive(Debug, Serialize, Deserialize)]
        pub struct DepositedV2 {
            /// Whole units.
            pub amount: u64,
            /// ISO currency code.
            pub currency: String,
        }

        impl Upcast for DepositedV2 {
            type Next = Deposited;
            fn upcast(self) -> Deposited {
                Deposited {
                    cents: self.amount * 100,
                    currency: self.currency,
                }
            }
        }
    };
}

/// No upcasters.
pub mod plain {
    use cqrs_core::prelude::*;

    current!("plain");

    /// The events.
    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum Events {
        /// A deposit.
        #[event(name = "bench.deposited", version = 3)]
        Deposited(Deposited),
    }
}

/// Typed upcasters from versions 1 and 2, and an old name.
pub mod declared {
    use cqrs_core::Upcast;
    use cqrs_core::prelude::*;

    current!("declared");
    version_2!();

    /// Version 1: whole units, no currency.
    #[derive(Debug, Deserialize)]
    pub struct DepositedV1 {
        /// Whole units.
        pub amount: u64,
    }

    impl Upcast for DepositedV1 {
        type Next = DepositedV2;
        fn upcast(self) -> DepositedV2 {
            DepositedV2 {
                amount: self.amount,
                currency: "EUR".to_owned(),
            }
        }
    }

    /// The events.
    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum Events {
        /// A deposit.
        #[event(name = "bench.deposited", version = 3, alias = "bench.credited",
                upcast(from = 1, with = DepositedV1), upcast(from = 2, with = DepositedV2))]
        Deposited(Deposited),
    }
}

/// A raw step from version 1, a typed one from version 2.
pub mod raw {
    use cqrs_core::Upcast;
    use cqrs_core::prelude::*;
    use serde_json::{Value, json};

    current!("raw");
    version_2!();

    /// The v1 → v2 step as a raw JSON function.
    ///
    /// # Errors
    ///
    /// When the payload is not an object.
    pub fn deposited_v1(mut payload: Value) -> Result<Value, String> {
        payload
            .as_object_mut()
            .ok_or_else(|| "not an object".to_owned())?
            .insert("currency".to_owned(), json!("EUR"));
        Ok(payload)
    }

    /// The events.
    #[derive(Debug, Clone, PartialEq, Event)]
    pub enum Events {
        /// A deposit.
        #[event(name = "bench.deposited", version = 3,
                upcast(from = 1, raw = deposited_v1), upcast(from = 2, with = DepositedV2))]
        Deposited(Deposited),
    }
}

fn stored(version: u32, i: u64) -> NewEvent {
    let payload = match version {
        1 => json!({ "amount": i % 100 }),
        _ => json!({ "cents": (i % 100) * 100, "currency": "EUR" }),
    };
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: Cow::Borrowed("bench.deposited"),
        schema_version: version,
        payload: Payload::from(payload),
        metadata: Metadata::default(),
    }
}

/// A store holding `events` deposits of version 3 in stream `current` and of version 1 in
/// stream `old`.
async fn store(events: u64) -> InMemoryEventStore {
    let store = InMemoryEventStore::new();
    for (stream, version) in [("current", 3), ("old", 1)] {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                (0..events).map(|i| stored(version, i)).collect(),
            )
            .await
            .expect("append");
    }
    store
}

fn repository<A: Aggregate<Services = ()>>(store: &InMemoryEventStore) -> Repository<A> {
    Repository::new(
        Arc::new(store.clone()),
        (),
        RepositoryOptions {
            snapshot_every: None,
            ..RepositoryOptions::default()
        },
    )
}

/// The CPU time this thread has used. Everything measured runs on this thread (a
/// current-thread runtime and the in-memory store), so this is the work's cost without the
/// time the thread waited to run on a machine shared with other jobs.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable `timespec` for the duration of the call.
    #[allow(unsafe_code)]
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(
        u64::try_from(now.tv_sec).expect("a positive time"),
        u32::try_from(now.tv_nsec).expect("below one second"),
    )
}

/// Times one load of `stream`.
async fn load<A: Aggregate<Services = ()>>(repository: &Repository<A>, stream: &str) -> Duration {
    let started = thread_cpu();
    let loaded = repository.load(stream).await.expect("load");
    let elapsed = thread_cpu().saturating_sub(started);
    black_box(loaded.state);
    elapsed
}

/// Times decoding every event of `events` as `E`.
fn decode<E: Event>(events: &[RecordedEvent]) -> Duration {
    let started = thread_cpu();
    for event in events {
        for decoded in event.decode_all::<E>().expect("decode") {
            black_box(decoded);
        }
    }
    thread_cpu().saturating_sub(started)
}

/// The variants, in table order.
const VARIANTS: [&str; 4] = ["plain", "declared", "chain", "raw chain"];

fn main() {
    let events: u64 = env_or("UPCAST_EVENTS", 10_000);
    let rounds: usize = env_or("UPCAST_ROUNDS", 201);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = store(events).await;
        let plain = repository::<plain::Account>(&store);
        let upcast = repository::<declared::Account>(&store);
        let raw = repository::<raw::Account>(&store);
        let current = store.load_stream("current", 1).await.expect("read");
        let old = store.load_stream("old", 1).await.expect("read");
        // Warm-up: every path once, and the outcome of each checked to be the same state.
        let plain_state = plain.load("current").await.expect("load").state.cents;
        for cents in [
            upcast.load("current").await.expect("load").state.cents,
            upcast.load("old").await.expect("load").state.cents,
            raw.load("old").await.expect("load").state.cents,
        ] {
            assert_eq!(cents, plain_state, "every variant builds the same state");
        }

        let mut loads: [Vec<f64>; 4] = Default::default();
        let mut decodes: [Vec<f64>; 4] = Default::default();
        for round in 0..rounds {
            for variant in turns(round, VARIANTS.len()) {
                let (load_time, decode_time) = match variant {
                    0 => (
                        load(&plain, "current").await,
                        decode::<plain::Events>(&current),
                    ),
                    1 => (
                        load(&upcast, "current").await,
                        decode::<declared::Events>(&current),
                    ),
                    2 => (load(&upcast, "old").await, decode::<declared::Events>(&old)),
                    _ => (load(&raw, "old").await, decode::<raw::Events>(&old)),
                };
                loads[variant].push(per_second(events, load_time));
                decodes[variant].push(per_second(events, decode_time));
            }
        }
        report(events, rounds, &loads, &decodes);
    });
}

fn report(events: u64, rounds: usize, loads: &[Vec<f64>; 4], decodes: &[Vec<f64>; 4]) {
    println!("{events} events per load, {rounds} rounds, median (min–max)\n");
    let summary = |values: &[f64]| Summary::of(values).expect("rounds");
    let mut rows = Vec::new();
    for (variant, name) in VARIANTS.iter().enumerate() {
        let load = summary(&loads[variant]);
        let decode = summary(&decodes[variant]);
        let plain_load = summary(&loads[0]).median;
        let plain_decode = summary(&decodes[0]).median;
        rows.push(vec![
            (*name).to_owned(),
            load.cell(0),
            format!("{:.2}x", load.median / plain_load),
            format!("{:.2}x", plain_load / load.median),
            decode.cell(0),
            format!("{:.2}x", decode.median / plain_decode),
            format!("{:.2}x", plain_decode / decode.median),
        ]);
    }
    table(
        &[
            "variant",
            "load events/s",
            "load speed vs plain",
            "load time vs plain",
            "decode events/s",
            "decode speed vs plain",
            "decode time vs plain",
        ],
        1,
        &rows,
    );
    let ratio = |values: &[Vec<f64>; 4], variant: usize| {
        summary(&values[variant]).median / summary(&values[0]).median
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let declared = ratio(loads, 1);
    let chain = 1.0 / ratio(loads, 2);
    println!(
        "declared / plain load speed: {declared:.2}x (target >= 0.95x: {})",
        verdict(declared >= 0.95)
    );
    println!(
        "chain / plain load time: {chain:.2}x (target <= 2x: {})",
        verdict(chain <= 2.0)
    );
}
