//! A command or query that declares rules is validated on every path: bus with or without the
//! `Validation` middleware (exactly once either way), JSON dispatch, and the test fixture.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::middleware::{
    CommandMiddleware, CommandResult, Next, QueryMiddleware, QueryNext, Timeout, Tracing,
    Validation,
};
use cqrs_core::prelude::*;
use cqrs_core::testing::Fixture;
use cqrs_core::{CommandDispatcher, DispatchError, FieldError, QueryDispatcher, ValidationErrors};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Event)]
pub enum MemberEvent {
    #[event(name = "member.registered")]
    Registered(Registered),
}

/// Field rules through `validator`.
#[derive(Debug, Clone, Deserialize, validator::Validate, Command)]
#[command(aggregate = Member, id = id, name = "member.register", validate)]
pub struct Register {
    pub id: u32,
    #[validate(email)]
    pub email: String,
}

/// Field rules written by hand, counting how often they run.
#[derive(Debug, Clone, Deserialize)]
pub struct CountedRegister {
    pub id: u32,
    pub email: String,
    #[serde(skip)]
    pub validations: Arc<AtomicUsize>,
}

impl Command for CountedRegister {
    const NAME: &'static str = "member.counted_register";
    type Aggregate = Member;

    fn aggregate_id(&self) -> String {
        self.id.to_string()
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        self.validations.fetch_add(1, Ordering::SeqCst);
        if self.email.contains('@') {
            Ok(())
        } else {
            Err(ValidationErrors::field("email", "email"))
        }
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("already registered")]
pub struct AlreadyRegistered;

#[derive(Debug, Default)]
pub struct Member {
    email: Option<String>,
}

#[aggregate(event = MemberEvent, error = AlreadyRegistered)]
impl Member {
    #[command_handler]
    fn register(&self, cmd: &Register) -> Result<Registered, AlreadyRegistered> {
        if self.email.is_some() {
            return Err(AlreadyRegistered);
        }
        Ok(Registered {
            email: cmd.email.clone(),
        })
    }

    #[command_handler]
    fn counted_register(&self, cmd: &CountedRegister) -> Result<Registered, AlreadyRegistered> {
        if self.email.is_some() {
            return Err(AlreadyRegistered);
        }
        Ok(Registered {
            email: cmd.email.clone(),
        })
    }

    #[event_handler]
    fn on_registered(&mut self, e: &Registered) {
        self.email = Some(e.email.clone());
    }
}

#[derive(Debug, Clone, Deserialize, validator::Validate, Query)]
#[query(output = u64, name = "member.count", validate)]
pub struct CountMembers {
    #[validate(length(min = 1))]
    pub domain: String,
}

/// Query rules written by hand, counting how often they run.
#[derive(Debug, Clone, Deserialize)]
pub struct CountedQuery {
    pub domain: String,
    #[serde(skip)]
    pub validations: Arc<AtomicUsize>,
}

impl Query for CountedQuery {
    const NAME: &'static str = "member.counted_count";
    type Output = u64;

    fn validate(&self) -> Result<(), ValidationErrors> {
        self.validations.fetch_add(1, Ordering::SeqCst);
        if self.domain.is_empty() {
            Err(ValidationErrors::field("domain", "length"))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

/// Counts the handler's calls: an invalid query must never reach it.
#[derive(Default)]
pub struct Members {
    answered: Arc<AtomicUsize>,
}

#[projection]
impl Members {
    #[event_handler]
    fn on_registered(&mut self, _e: &Registered) {}

    #[query_handler]
    fn count(&self, _q: &CountMembers) -> Result<u64, Never> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    #[query_handler]
    fn counted(&self, _q: &CountedQuery) -> Result<u64, Never> {
        self.answered.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// Counts the commands and queries that reach it.
#[derive(Clone, Default)]
struct Seen(Arc<AtomicUsize>);

impl CommandMiddleware for Seen {
    async fn handle<C: Command, N: Next<C>>(
        &self,
        command: C,
        ctx: CommandContext,
        next: N,
    ) -> CommandResult<C> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(command, ctx).await
    }
}

impl QueryMiddleware for Seen {
    async fn handle_query<Q: Query, E: Send, N: QueryNext<Q, E>>(
        &self,
        query: Q,
        next: N,
    ) -> Result<Q::Output, QueryError<E>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        next.run(query).await
    }
}

fn invalid_register() -> Register {
    Register {
        id: 1,
        email: "not an address".into(),
    }
}

fn counted(email: &str, validations: &Arc<AtomicUsize>) -> CountedRegister {
    CountedRegister {
        id: 1,
        email: email.into(),
        validations: Arc::clone(validations),
    }
}

fn assert_invalid_email<E: std::fmt::Debug>(result: Result<Committed, CommandError<E>>) {
    match result {
        Err(CommandError::Invalid(errors)) => {
            let paths: Vec<_> = errors.fields.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(paths, ["email"]);
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bus_without_the_validation_middleware_refuses_an_invalid_command_and_writes_nothing() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .build();
    assert_invalid_email(bus.execute(invalid_register()).await);
    assert_eq!(store.len(), 0, "an invalid command wrote events");

    // Other middleware does not make validation optional either.
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .middleware(Tracing)
        .middleware(Timeout::new(std::time::Duration::from_secs(5)))
        .build();
    assert_invalid_email(bus.execute(invalid_register()).await);
    assert_eq!(store.len(), 0, "an invalid command wrote events");

    let valid = Register {
        id: 1,
        email: "ada@example.com".into(),
    };
    bus.execute(valid).await.unwrap();
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn a_command_is_validated_exactly_once_with_or_without_the_middleware() {
    let validations = Arc::new(AtomicUsize::new(0));

    let without = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Member>(())
        .build();
    without
        .execute(counted("ada@example.com", &validations))
        .await
        .unwrap();
    assert_eq!(
        validations.swap(0, Ordering::SeqCst),
        1,
        "without middleware"
    );

    let store = InMemoryEventStore::new();
    let with = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .middleware(Tracing)
        .middleware(Validation)
        .middleware(Timeout::new(std::time::Duration::from_secs(5)))
        .build();
    with.execute(counted("ada@example.com", &validations))
        .await
        .unwrap();
    assert_eq!(validations.swap(0, Ordering::SeqCst), 1, "with middleware");

    let invalid = with.execute(counted("ada", &validations)).await;
    assert_invalid_email(invalid);
    assert_eq!(
        validations.load(Ordering::SeqCst),
        1,
        "invalid, with middleware"
    );
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn the_validation_middleware_chooses_where_in_the_chain_validation_happens() {
    let validations = Arc::new(AtomicUsize::new(0));

    // Validation first: the layers after it never see an invalid command.
    let seen = Seen::default();
    let early = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Member>(())
        .middleware(Validation)
        .middleware(seen.clone())
        .build();
    assert_invalid_email(early.execute(counted("ada", &validations)).await);
    assert_eq!(seen.0.load(Ordering::SeqCst), 0);

    // No Validation: the bus validates last, after every layer.
    let seen = Seen::default();
    let store = InMemoryEventStore::new();
    let late = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .middleware(seen.clone())
        .build();
    assert_invalid_email(late.execute(counted("ada", &validations)).await);
    assert_eq!(seen.0.load(Ordering::SeqCst), 1);
    assert_eq!(validations.load(Ordering::SeqCst), 2);
    assert_eq!(store.len(), 0);
}

#[tokio::test]
async fn json_commands_are_validated_on_a_bus_without_the_middleware() {
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Member>(())
        .build();
    let commands = CommandDispatcher::new(bus).unwrap();
    let error = commands
        .dispatch_json("member.register", br#"{"id": 1, "email": "nope"}"#)
        .await
        .unwrap_err();
    match error {
        DispatchError::Failed {
            name,
            kind,
            validation,
            ..
        } => {
            assert_eq!(name, "member.register");
            assert_eq!(kind, cqrs_core::ErrorKind::Validation);
            assert_eq!(
                validation.expect("the invalid fields").fields[0].path,
                "email"
            );
        }
        other => panic!("expected a failed dispatch, got {other:?}"),
    }
    assert_eq!(store.len(), 0);
}

#[tokio::test]
async fn a_query_bus_without_the_validation_middleware_refuses_an_invalid_query() {
    let members = Members::default();
    let answered = Arc::clone(&members.answered);
    let queries = QueryBus::builder().handler(ReadModel::new(members)).build();
    match queries
        .execute(CountMembers {
            domain: String::new(),
        })
        .await
    {
        Err(QueryError::Invalid(errors)) => assert_eq!(errors.fields[0].path, "domain"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(answered.load(Ordering::SeqCst), 0, "the handler ran");

    let dispatcher = QueryDispatcher::new(queries).unwrap();
    match dispatcher
        .dispatch_json("member.count", br#"{"domain": ""}"#)
        .await
    {
        Err(DispatchError::Failed { source, .. }) => assert!(
            matches!(
                source.downcast_ref::<QueryError<Never>>(),
                Some(QueryError::Invalid(_))
            ),
            "expected a validation error, got {source:?}"
        ),
        other => panic!("expected a failed dispatch, got {other:?}"),
    }
    assert_eq!(answered.load(Ordering::SeqCst), 0, "the handler ran");
}

#[tokio::test]
async fn a_query_is_validated_exactly_once_with_or_without_the_middleware() {
    let validations = Arc::new(AtomicUsize::new(0));
    let query = |domain: &str| CountedQuery {
        domain: domain.into(),
        validations: Arc::clone(&validations),
    };

    let without = QueryBus::builder()
        .handler(ReadModel::new(Members::default()))
        .build();
    without.execute(query("example.com")).await.unwrap();
    assert_eq!(
        validations.swap(0, Ordering::SeqCst),
        1,
        "without middleware"
    );

    let seen = Seen::default();
    let with = QueryBus::builder()
        .handler(ReadModel::new(Members::default()))
        .middleware(Validation)
        .middleware(seen.clone())
        .build();
    with.execute(query("example.com")).await.unwrap();
    assert_eq!(validations.swap(0, Ordering::SeqCst), 1, "with middleware");
    assert!(matches!(
        with.execute(query("")).await,
        Err(QueryError::Invalid(_))
    ));
    assert_eq!(
        validations.load(Ordering::SeqCst),
        1,
        "invalid, with middleware"
    );
    assert_eq!(
        seen.0.load(Ordering::SeqCst),
        1,
        "an invalid query passed Validation"
    );
}

#[tokio::test]
async fn the_fixture_refuses_an_invalid_command_with_its_validation_errors() {
    let errors = Fixture::<Member>::default()
        .when(invalid_register())
        .await
        .then_expect_invalid();
    assert_eq!(
        errors.fields,
        [FieldError {
            path: "email".into(),
            code: "email".into(),
            message: None,
        }]
    );

    let validations = Arc::new(AtomicUsize::new(0));
    Fixture::<Member>::default()
        .when(counted("ada@example.com", &validations))
        .await
        .then_expect_events([MemberEvent::Registered(Registered {
            email: "ada@example.com".into(),
        })]);
    assert_eq!(validations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
#[should_panic(expected = "the command is invalid: invalid `email` (email)")]
async fn the_fixture_names_the_failed_fields_when_an_error_was_expected() {
    Fixture::<Member>::default()
        .when(invalid_register())
        .await
        .then_expect_error(AlreadyRegistered);
}
