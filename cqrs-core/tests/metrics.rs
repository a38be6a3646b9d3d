//! Metrics: per name and outcome counters and histograms, in-flight gauges, events per type.
#![cfg(feature = "metrics")]

mod support;

use std::collections::BTreeMap;

use cqrs_core::middleware::{EventMetrics, Metrics};
use cqrs_core::prelude::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use support::{Account, AccountEvent, Deposit, Open, Withdraw, limits};

#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = u32, name = "echo")]
struct Echo(u32);

#[derive(Default)]
struct Echoes;

#[derive(Debug, thiserror::Error)]
#[error("odd")]
struct Odd;

#[projection]
impl Echoes {
    #[event_handler]
    fn on_opened(&mut self, _: &support::Opened) {}

    #[query_handler]
    fn echo(&self, q: &Echo) -> Result<u32, Odd> {
        if q.0 % 2 == 1 { Err(Odd) } else { Ok(q.0) }
    }
}

/// `name{label=value,...}` → value, for every metric recorded.
fn recorded(run: impl FnOnce()) -> BTreeMap<String, DebugValue> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, run);
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (describe(&key), value))
        .collect()
}

fn describe(key: &CompositeKey) -> String {
    let kind = match key.kind() {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    let labels: Vec<String> = key
        .key()
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{kind} {}{{{}}}", key.key().name(), labels.join(","))
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn counter(metrics: &BTreeMap<String, DebugValue>, key: &str) -> u64 {
    match metrics.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("no counter `{key}`: {other:?} in {:#?}", metrics.keys()),
    }
}

#[test]
fn commands_are_counted_and_timed_per_name_and_outcome_and_events_per_type() {
    let metrics = recorded(|| {
        block_on(async {
            let bus = CommandBus::builder(InMemoryEventStore::new())
                .aggregate::<Account>(limits())
                .middleware(Metrics)
                .subscribe(EventMetrics::of::<AccountEvent>())
                .build();
            let open = Open {
                id: 1,
                owner: "ada".into(),
            };
            bus.execute(open).await.unwrap();
            bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
            bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap();
            bus.execute(Withdraw { id: 1, amount: 50 })
                .await
                .unwrap_err();
        });
    });
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_commands_total{command=account.deposit,outcome=ok}"
        ),
        2
    );
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_commands_total{command=account.open,outcome=ok}"
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_commands_total{command=account.withdraw,outcome=rejected}"
        ),
        1
    );
    let Some(DebugValue::Histogram(samples)) =
        metrics.get("histogram cqrs_command_duration_seconds{command=account.deposit,outcome=ok}")
    else {
        panic!("no latency histogram in {:#?}", metrics.keys());
    };
    assert_eq!(samples.len(), 2);
    let Some(DebugValue::Gauge(in_flight)) =
        metrics.get("gauge cqrs_commands_in_flight{command=account.deposit}")
    else {
        panic!("no in-flight gauge in {:#?}", metrics.keys());
    };
    assert!(
        in_flight.0.abs() < f64::EPSILON,
        "back to zero: {in_flight}"
    );
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_events_appended_total{event_type=account.deposited}"
        ),
        2
    );
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_events_appended_total{event_type=account.opened}"
        ),
        1
    );
}

#[test]
fn the_in_flight_gauge_counts_running_commands() {
    let (seen, metrics) = {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let seen = metrics::with_local_recorder(&recorder, || {
            block_on(async {
                let bus = CommandBus::builder(InMemoryEventStore::new())
                    .aggregate::<Account>(limits())
                    .middleware(Metrics)
                    .build();
                let open = Open {
                    id: 1,
                    owner: "ada".into(),
                };
                bus.execute(open).await.unwrap();
                let slow = support::SlowDeposit {
                    id: 1,
                    amount: 1,
                    millis: 50,
                };
                let running = bus.execute(slow);
                tokio::pin!(running);
                // Poll the command once so it is in flight, then look at the gauge.
                let _ = futures_poll_once(running.as_mut()).await;
                let during = snapshotter.snapshot().into_vec();
                running.await.unwrap();
                during
            })
        });
        (seen, snapshotter.snapshot().into_vec())
    };
    let gauge = |snapshot: &[(CompositeKey, _, _, DebugValue)]| {
        snapshot
            .iter()
            .find(|(key, ..)| {
                describe(key) == "gauge cqrs_commands_in_flight{command=account.slow_deposit}"
            })
            .map(|(.., value)| match value {
                DebugValue::Gauge(v) => v.0,
                other => panic!("{other:?}"),
            })
    };
    // A snapshot of the debugging recorder drains the values recorded since the last one.
    assert_eq!(gauge(&seen), Some(1.0), "one command running");
    assert_eq!(gauge(&metrics), Some(-1.0), "and then it ended");
}

/// Polls a future once and returns whether it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut future: F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut future).poll(cx).is_ready())
    })
    .await
}

#[test]
fn queries_are_counted_per_name_and_outcome() {
    let metrics = recorded(|| {
        block_on(async {
            let queries = QueryBus::builder()
                .handler(ReadModel::new(Echoes))
                .middleware(Metrics)
                .build();
            queries.execute(Echo(2)).await.unwrap();
            queries.execute(Echo(3)).await.unwrap_err();
        });
    });
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_queries_total{query=echo,outcome=ok}"
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_queries_total{query=echo,outcome=query_failed}"
        ),
        1
    );
    assert!(metrics.contains_key("histogram cqrs_query_duration_seconds{query=echo,outcome=ok}"));
}

#[test]
fn circuit_transitions_are_counted() {
    use cqrs_core::middleware::CircuitBreaker;
    let metrics = recorded(|| {
        block_on(async {
            let breaker = CircuitBreaker::new("mail").failure_threshold(1);
            let _ = breaker
                .call(async { Err::<(), _>(std::io::Error::other("down")) })
                .await;
        });
    });
    assert_eq!(
        counter(
            &metrics,
            "counter cqrs_circuit_transitions_total{circuit=mail,state=open}"
        ),
        1
    );
}
