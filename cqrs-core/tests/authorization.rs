//! Authorization: the policy's refusal is a typed `Forbidden`, before anything is loaded.

mod support;

use std::borrow::Cow;

use cqrs_core::middleware::{Authorize, Request, RequestKind, as_caller};
use cqrs_core::prelude::*;
use cqrs_core::{ErrorKind, Forbidden};
use serde_json::json;
use support::{Account, Close, CountingStore, Deposit, Open, limits};

#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = usize, name = "accounts.count")]
struct CountAccounts;

#[derive(Default)]
struct Accounts(usize);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[projection]
impl Accounts {
    #[event_handler]
    fn on_opened(&mut self, _: &support::Opened) {
        self.0 += 1;
    }

    #[query_handler]
    fn count(&self, _: &CountAccounts) -> Result<usize, Never> {
        Ok(self.0)
    }
}

fn policy(request: &Request<'_>) -> Result<(), Cow<'static, str>> {
    match (request.kind, request.name) {
        (RequestKind::Command, "account.close") if !request.has_role("admin") => {
            Err("closing takes the `admin` role".into())
        }
        (RequestKind::Query, "accounts.count") if !request.has_role("auditor") => {
            Err("counting takes the `auditor` role".into())
        }
        _ if request.user().is_none() => Err("sign in first".into()),
        _ => Ok(()),
    }
}

fn user(name: &str, roles: serde_json::Value) -> Metadata {
    Metadata::default().with_user_id(name).with("roles", roles)
}

#[tokio::test]
async fn a_denied_command_is_forbidden_before_the_aggregate_is_loaded() {
    let store = CountingStore::default();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(limits())
        .middleware(Authorize::new(policy))
        .build();
    let open = Open {
        id: 1,
        owner: "ada".into(),
    };
    bus.execute_with(open, user("ada", json!([])))
        .await
        .unwrap();
    let loads = store.loads().len();

    let error = bus
        .execute_with(Close { id: 1 }, user("ada", json!(["teller"])))
        .await
        .unwrap_err();
    let CommandError::Forbidden(Forbidden {
        name,
        user: who,
        reason,
    }) = &error
    else {
        panic!("expected forbidden, got {error:?}");
    };
    assert_eq!((*name, who.as_deref()), ("account.close", Some("ada")));
    assert_eq!(reason, "closing takes the `admin` role");
    assert_eq!(
        (error.kind(), error.code()),
        (ErrorKind::Forbidden, "forbidden")
    );
    assert_eq!(store.loads().len(), loads, "nothing was loaded");

    let error = bus.execute(Deposit { id: 1, amount: 5 }).await.unwrap_err();
    assert!(matches!(
        error,
        CommandError::Forbidden(Forbidden { user: None, .. })
    ));

    bus.execute_with(Close { id: 1 }, user("root", json!("admin")))
        .await
        .unwrap();
}

#[tokio::test]
async fn queries_are_authorized_for_the_caller_named_by_as_caller() {
    let queries = QueryBus::builder()
        .handler(ReadModel::new(Accounts::default()))
        .middleware(Authorize::new(policy))
        .build();
    let error = queries.execute(CountAccounts).await.unwrap_err();
    assert!(matches!(
        &error,
        QueryError::Forbidden(Forbidden {
            name: "accounts.count",
            user: None,
            ..
        })
    ));
    assert_eq!(error.code(), "forbidden");

    let error = as_caller(
        user("ada", json!(["teller"])),
        queries.execute(CountAccounts),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden);

    let count = as_caller(
        user("eve", json!(["auditor"])),
        queries.execute(CountAccounts),
    )
    .await
    .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_forbidden_command_has_the_same_code_on_the_json_path() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .middleware(Authorize::new(policy))
        .build();
    let dispatcher = cqrs_core::CommandDispatcher::new(bus).unwrap();
    let error = dispatcher
        .dispatch_json("account.close", br#"{ "id": 1 }"#)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "forbidden");
}
