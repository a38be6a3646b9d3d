//! Rate and concurrency limits: refuse beyond the budget with a typed error, per scope.

mod support;

use std::time::Duration;

use cqrs_core::middleware::{ConcurrencyLimit, ManualClock, Quota, RateLimit, Scope, as_caller};
use cqrs_core::prelude::*;
use cqrs_core::{ConcurrencyLimited, ErrorKind, RateLimited};
use support::{Account, Deposit, Open, SlowDeposit, limits};

#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = u32, name = "echo")]
struct Echo(u32);

#[derive(Default)]
struct Echoes;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[projection]
impl Echoes {
    #[event_handler]
    fn on_opened(&mut self, _: &support::Opened) {}

    #[query_handler]
    async fn echo(&self, q: &Echo) -> Result<u32, Never> {
        tokio::time::sleep(Duration::from_millis(u64::from(q.0))).await;
        Ok(q.0)
    }
}

fn as_user(user: &str) -> Metadata {
    Metadata::default().with_user_id(user)
}

async fn open_accounts<R, M>(bus: &CommandBus<R, M>, ids: std::ops::Range<u32>)
where
    R: cqrs_core::list::Contains<Account, cqrs_core::list::Here> + Send + Sync + 'static,
    M: cqrs_core::middleware::CommandChain,
{
    for id in ids {
        bus.execute(Open {
            id,
            owner: "ada".into(),
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_per_user_rate_limit_refuses_beyond_the_quota_and_says_when_to_retry() {
    let clock = ManualClock::new();
    let limit = RateLimit::new("api", Quota::per_second(2))
        .scope(Scope::PerUser)
        .clock(clock.clone());
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .middleware(limit)
        .build();
    for id in 0..2 {
        let open = Open {
            id,
            owner: "ada".into(),
        };
        bus.execute_with(open, as_user("ada")).await.unwrap();
    }
    let error = bus
        .execute_with(Deposit { id: 0, amount: 1 }, as_user("ada"))
        .await
        .unwrap_err();
    let CommandError::RateLimited(RateLimited {
        limit,
        key,
        retry_after,
    }) = &error
    else {
        panic!("expected a rate limit, got {error:?}");
    };
    assert_eq!((*limit, key.as_deref()), ("api", Some("ada")));
    assert_eq!(*retry_after, Duration::from_millis(500));
    assert_eq!(error.code(), "rate_limited");

    bus.execute_with(Deposit { id: 0, amount: 1 }, as_user("bob"))
        .await
        .unwrap();

    // The refused call spent nothing: after one interval exactly one more is admitted.
    clock.advance(Duration::from_millis(500));
    bus.execute_with(Deposit { id: 0, amount: 1 }, as_user("ada"))
        .await
        .unwrap();
    let error = bus
        .execute_with(Deposit { id: 0, amount: 1 }, as_user("ada"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RateLimited);
}

#[tokio::test]
async fn a_per_name_rate_limit_gives_each_command_its_own_budget() {
    let clock = ManualClock::new();
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .middleware(
            RateLimit::new("per-command", Quota::per_minute(1))
                .scope(Scope::PerName)
                .clock(clock.clone()),
        )
        .build();
    open_accounts(&bus, 0..1).await;
    bus.execute(Deposit { id: 0, amount: 1 }).await.unwrap();
    let error = bus.execute(Deposit { id: 0, amount: 1 }).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "rate limit `per-command` exhausted for `account.deposit`; retry after 60s"
    );
}

#[tokio::test]
async fn a_rate_limit_keyed_by_metadata_applies_to_queries_through_the_caller() {
    let clock = ManualClock::new();
    let queries = QueryBus::builder()
        .handler(ReadModel::new(Echoes))
        .middleware(
            RateLimit::new("tenant", Quota::per_second(1))
                .scope(Scope::PerMetadata("tenant"))
                .clock(clock.clone()),
        )
        .build();
    let acme = Metadata::default().with("tenant", "acme");
    let initech = Metadata::default().with("tenant", "initech");
    assert_eq!(
        as_caller(acme.clone(), queries.execute(Echo(0)))
            .await
            .unwrap(),
        0
    );
    let error = as_caller(acme.clone(), queries.execute(Echo(0)))
        .await
        .unwrap_err();
    let QueryError::RateLimited(refused) = &error else {
        panic!("expected a rate limit, got {error:?}");
    };
    assert_eq!(refused.key.as_deref(), Some("acme"));
    assert_eq!(error.code(), "rate_limited");
    as_caller(initech, queries.execute(Echo(0))).await.unwrap();
    // Outside `as_caller` a query is anonymous, with a budget of its own.
    queries.execute(Echo(0)).await.unwrap();
    queries.execute(Echo(0)).await.unwrap_err();
}

#[tokio::test]
async fn a_concurrency_limit_refuses_while_max_commands_of_the_scope_run() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .middleware(ConcurrencyLimit::new("writers", 1).scope(Scope::PerUser))
        .build();
    open_accounts(&bus, 0..2).await;
    let slow = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let slow = SlowDeposit {
                id: 0,
                amount: 1,
                millis: 200,
            };
            bus.execute_with(slow, as_user("ada")).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let error = bus
        .execute_with(Deposit { id: 1, amount: 1 }, as_user("ada"))
        .await
        .unwrap_err();
    assert!(matches!(
        &error,
        CommandError::ConcurrencyLimited(ConcurrencyLimited { limit: "writers", key: Some(user), max: 1 })
            if user == "ada"
    ));
    assert_eq!(error.code(), "concurrency_limited");
    bus.execute_with(Deposit { id: 1, amount: 1 }, as_user("bob"))
        .await
        .unwrap();
    slow.await.unwrap().unwrap();
    bus.execute_with(Deposit { id: 1, amount: 1 }, as_user("ada"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_concurrency_limit_that_waits_admits_when_a_place_frees() {
    let queries = QueryBus::builder()
        .handler(ReadModel::new(Echoes))
        .middleware(ConcurrencyLimit::new("echo", 1).wait(Duration::from_secs(5)))
        .build();
    let (first, second) = tokio::join!(queries.execute(Echo(100)), queries.execute(Echo(1)));
    assert_eq!((first.unwrap(), second.unwrap()), (100, 1));

    let impatient = QueryBus::builder()
        .handler(ReadModel::new(Echoes))
        .middleware(ConcurrencyLimit::new("echo", 1).wait(Duration::from_millis(10)))
        .build();
    let (first, second) = tokio::join!(impatient.execute(Echo(200)), impatient.execute(Echo(1)));
    assert_eq!(first.unwrap(), 200);
    assert_eq!(second.unwrap_err().kind(), ErrorKind::ConcurrencyLimited);
}
