//! `tower::Service` for the dispatchers and typed services: same results, same error codes.
#![cfg(feature = "tower")]

mod support;

use cqrs_core::middleware::{Authorize, CommandService, JsonRequest, Request};
use cqrs_core::prelude::*;
use cqrs_core::{CommandDispatcher, ErrorKind, QueryDispatcher};
use support::{Account, AccountError, Open, Withdraw, limits};
use tower_service::Service;

#[derive(Debug, Clone, Deserialize, Query)]
#[query(output = Vec<String>, name = "owners")]
struct Owners;

#[derive(Default)]
struct OwnerList(Vec<String>);

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

#[projection]
impl OwnerList {
    #[event_handler]
    fn on_opened(&mut self, e: &support::Opened) {
        self.0.push(e.owner.clone());
    }

    #[query_handler]
    fn owners(&self, _: &Owners) -> Result<Vec<String>, Never> {
        Ok(self.0.clone())
    }
}

fn signed_in(request: &Request<'_>) -> Result<(), std::borrow::Cow<'static, str>> {
    request.user().map(|_| ()).ok_or_else(|| "sign in".into())
}

async fn ready<S: Service<R>, R>(service: &mut S) {
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap_or_else(|_| panic!("always ready"));
}

#[tokio::test]
async fn the_json_dispatchers_serve_requests_with_the_callers_metadata() {
    let owners = ReadModel::new(OwnerList::default());
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .subscribe(owners.clone())
        .build();
    let queries = QueryBus::builder()
        .handler(owners)
        .middleware(Authorize::new(signed_in))
        .build();
    let mut commands = CommandDispatcher::new(bus).unwrap();
    let mut answers = QueryDispatcher::new(queries).unwrap();
    let ada = Metadata::default().with_user_id("ada");

    ready(&mut commands).await;
    let committed = commands
        .call(JsonRequest::new(
            "account.open",
            r#"{"id":1,"owner":"ada"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(committed.events, 1);
    let error = commands
        .call(JsonRequest::new(
            "account.withdraw",
            r#"{"id":1,"amount":5}"#,
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "rejected");

    ready(&mut answers).await;
    let error = answers
        .call(JsonRequest::new("owners", "null"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden, "anonymous");
    let owners = answers
        .call(JsonRequest::new("owners", "null").with_metadata(ada.clone()))
        .await
        .unwrap();
    assert_eq!(owners, serde_json::json!(["ada"]));
    let error = answers
        .call(JsonRequest::new("nope", "{}").with_metadata(ada))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "unknown_query");
}

#[tokio::test]
async fn a_typed_command_service_returns_the_typed_error() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(limits())
        .build();
    let mut open = CommandService::<Open, _, _, _>::new(bus.clone());
    let mut withdraw = CommandService::<Withdraw, _, _, _>::new(bus);
    ready::<_, Open>(&mut open).await;
    open.call(Open {
        id: 1,
        owner: "ada".into(),
    })
    .await
    .unwrap();
    let error = withdraw
        .call((Withdraw { id: 1, amount: 5 }, Metadata::default()))
        .await
        .unwrap_err();
    assert!(matches!(
        error.rejection(),
        Some(AccountError::InsufficientFunds { .. })
    ));
}
