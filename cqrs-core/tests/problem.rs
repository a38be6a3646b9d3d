//! Failures as RFC 9457 problems: the same status, code and body from the typed path and
//! from JSON dispatch, for framework errors and domain errors alike, without downcasting.

use std::time::Duration;

use cqrs_core::middleware::{ManualClock, Quota, RateLimit};
use cqrs_core::prelude::*;
use cqrs_core::problem::{self, AsProblem, Failure, Problem, Problems};
use cqrs_core::{CommandDispatcher, DispatchError, StoreError};
use validator::Validate;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum MemberEvent {
    #[event(name = "member.named")]
    Named(Named),
}

#[derive(Debug, Serialize, Deserialize, Validate, Command)]
#[command(aggregate = Member, id = id, name = "member.name", validate, idempotent)]
struct Name {
    id: u32,
    #[validate(length(min = 1, max = 5))]
    name: String,
}

#[derive(Debug, thiserror::Error)]
enum MemberError {
    #[error("the name {0:?} is reserved")]
    Reserved(String),
}

impl DomainError for MemberError {
    fn code(&self) -> &'static str {
        "name_reserved"
    }
}

#[derive(Debug, Default)]
struct Member;

#[aggregate(event = MemberEvent, error = MemberError)]
impl Member {
    #[command_handler]
    fn name(&self, cmd: &Name) -> Result<Named, MemberError> {
        if cmd.name == "root" {
            return Err(MemberError::Reserved(cmd.name.clone()));
        }
        Ok(Named {
            name: cmd.name.clone(),
        })
    }

    #[event_handler]
    fn on_named(&mut self, _: &Named) {}
}

fn problems() -> Problems {
    Problems::new().domain_status("name_reserved", 409)
}

fn json(problem: &Problem) -> serde_json::Value {
    serde_json::to_value(problem).unwrap()
}

#[tokio::test]
async fn a_rejection_is_the_same_problem_on_both_paths_with_the_domain_status() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .build();
    let json_path = CommandDispatcher::new(bus.clone()).unwrap();

    let typed = bus
        .execute(Name {
            id: 1,
            name: "root".into(),
        })
        .await
        .unwrap_err();
    let dispatched = json_path
        .dispatch_json("member.name", br#"{"id": 1, "name": "root"}"#)
        .await
        .unwrap_err();

    let typed = problems().problem(&typed);
    assert_eq!(typed, problems().problem(&dispatched));
    assert_eq!(
        json(&typed),
        serde_json::json!({
            "type": "urn:cqrs:problem:rejected:name_reserved",
            "title": "The command was rejected",
            "status": 409,
            "detail": "the name \"root\" is reserved",
            "code": "rejected",
            "domain_code": "name_reserved",
        })
    );
    // Without an entry for the domain code, a rejection is 422.
    assert_eq!(Problems::new().problem(&dispatched).status, 422);
    assert_eq!(store.len(), 0);
}

#[tokio::test]
async fn invalid_fields_are_listed_by_name_on_both_paths() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Member>(())
        .build();
    let json_path = CommandDispatcher::new(bus.clone()).unwrap();
    let typed = bus
        .execute(Name {
            id: 1,
            name: "far too long".into(),
        })
        .await
        .unwrap_err();
    let dispatched = json_path
        .dispatch_json("member.name", br#"{"id": 1, "name": "far too long"}"#)
        .await
        .unwrap_err();
    let problem = problems().problem(&typed);
    assert_eq!(problem, problems().problem(&dispatched));
    assert_eq!(problem.status, 400);
    assert_eq!(problem.code, "validation");
    assert_eq!(problem.errors.len(), 1);
    assert_eq!(problem.errors[0].field, "name");
    assert_eq!(problem.errors[0].code, "length");
}

#[tokio::test]
async fn a_malformed_body_names_the_field_and_an_unknown_name_is_404() {
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Member>(())
        .build();
    let json_path = CommandDispatcher::new(bus).unwrap();
    let malformed = json_path
        .dispatch_json("member.name", br#"{"id": "one", "name": "ada"}"#)
        .await
        .unwrap_err();
    let problem = problems().problem(&malformed);
    assert_eq!(
        (problem.status, problem.code.as_str()),
        (400, "bad_request")
    );
    assert_eq!(problem.errors[0].field, "id");
    assert_eq!(problem.errors[0].code, "malformed");

    let unknown = json_path
        .dispatch_json("member.rename", b"{}")
        .await
        .unwrap_err();
    let problem = problems().problem(&unknown);
    assert_eq!(
        (problem.status, problem.problem_type.as_str()),
        (404, "urn:cqrs:problem:unknown_command")
    );
}

#[tokio::test]
async fn a_rate_limit_says_when_to_retry_on_both_paths() {
    let clock = ManualClock::new();
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Member>(())
        .middleware(RateLimit::new("api", Quota::per_second(1)).clock(clock))
        .build();
    let json_path = CommandDispatcher::new(bus.clone()).unwrap();
    bus.execute(Name {
        id: 1,
        name: "ada".into(),
    })
    .await
    .unwrap();
    let typed = bus
        .execute(Name {
            id: 1,
            name: "bob".into(),
        })
        .await
        .unwrap_err();
    let dispatched = json_path
        .dispatch_json("member.name", br#"{"id": 1, "name": "bob"}"#)
        .await
        .unwrap_err();
    assert_eq!(dispatched.retry_after(), Some(Duration::from_secs(1)));
    let problem = problems().problem(&typed);
    assert_eq!(problem, problems().problem(&dispatched));
    assert_eq!((problem.status, problem.retry_after), (429, Some(1)));
    assert_eq!(problem.retry_after_header().as_deref(), Some("1"));
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_carries_the_key_on_both_paths() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .build();
    let json_path = CommandDispatcher::new(bus.clone()).unwrap();
    let keyed = || Metadata::default().with_idempotency_key("req-7");
    bus.execute_with(
        Name {
            id: 1,
            name: "ada".into(),
        },
        keyed(),
    )
    .await
    .unwrap();
    let typed = bus
        .execute_with(
            Name {
                id: 1,
                name: "bob".into(),
            },
            keyed(),
        )
        .await
        .unwrap_err();
    let dispatched = json_path
        .dispatch_json_with("member.name", br#"{"id": 1, "name": "bob"}"#, keyed())
        .await
        .unwrap_err();
    let problem = problems().problem(&typed);
    assert_eq!(problem, problems().problem(&dispatched));
    assert_eq!(problem.status, 422);
    assert_eq!(problem.code, "idempotency_key_reused");
    assert_eq!(problem.idempotency_key.as_deref(), Some("req-7"));
    assert_eq!(store.len(), 1);
}

#[test]
fn internal_failures_keep_their_messages_out_of_the_body() {
    let error = StoreError::Backend("relation cqrs_events: permission denied on host db-7".into());
    let problem = problems().problem(&error);
    assert_eq!(problem.status, 503);
    assert_eq!(problem.code, "store_unavailable");
    assert_eq!(problem.detail.as_deref(), Some(problem::INTERNAL_DETAIL));
    assert!(!problem.to_json().contains("db-7"));
}

#[test]
fn every_kind_has_an_error_status_and_a_title() {
    for kind in ErrorKind::ALL {
        let status = problem::default_status(*kind);
        assert!((400..=599).contains(&status), "{kind}: {status}");
        assert!(!problem::title(*kind).is_empty());
        let problem = Problems::new().from_failure(Failure::new(*kind, "x"));
        assert_eq!(problem.code, kind.code());
        assert_eq!(problem.problem_type, format!("urn:cqrs:problem:{kind}"));
    }
    assert_eq!(problem::default_status(ErrorKind::UniqueKeyTaken), 409);
    assert_eq!(problem::default_status(ErrorKind::Forbidden), 403);
    assert_eq!(problem::default_status(ErrorKind::Timeout), 504);
}

#[test]
fn a_query_not_found_is_404_out_of_the_box_and_the_type_base_is_the_services() {
    #[derive(Debug, thiserror::Error)]
    #[error("no member 7")]
    struct Missing;
    impl DomainError for Missing {
        fn code(&self) -> &'static str {
            "not_found"
        }
    }
    let error: QueryError<Missing> = QueryError::Handler(Missing);
    let problem = Problems::new()
        .type_base("https://errors.example.com/")
        .problem(&error)
        .with_instance("/members/7");
    assert_eq!(problem.status, 404);
    assert_eq!(
        problem.problem_type,
        "https://errors.example.com/query_failed:not_found"
    );
    let back: Problem = serde_json::from_str(&problem.to_json()).unwrap();
    assert_eq!(back, problem);
    assert!(error.failure().domain_code == Some("not_found"));
}

#[test]
#[should_panic(expected = "error status")]
fn a_domain_status_outside_the_error_range_is_a_programming_error() {
    let _ = Problems::new().domain_status("fine", 200);
}

#[test]
fn dispatch_errors_without_a_failure_have_no_retry_or_key() {
    let error = DispatchError::UnknownName {
        kind: "query",
        name: "x".into(),
    };
    assert_eq!(error.retry_after(), None);
    assert_eq!(error.idempotency_key(), None);
    assert_eq!(problems().problem(&error).status, 404);
}
