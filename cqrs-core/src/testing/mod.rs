//! Test support: the given/when/then [`Fixture`] for aggregates, [`SagaFixture`] for sagas, and (feature `testing`) the
//! `conformance` kit any [`EventStore`](crate::EventStore) implementation can run, plus the
//! `unique_keys` checks for stores that reserve unique keys and the `idempotency` checks for
//! stores that record idempotency keys.

use std::fmt::Debug;

use crate::{
    Aggregate, Command, CommandContext, CommandError, Event, Handles, Metadata, Payload,
    ValidationErrors,
};

mod saga;

pub use saga::{SagaFixture, SagaOutcome};

/// Given events, when a command, then expect events or an error — with no store at all.
///
/// `when` validates the command first, as the command bus does, so a command's field rules
/// (`#[command(validate)]`) are tested without repeating them: an invalid command reaches no
/// handler, and [`Outcome::then_expect_invalid`] returns its [`ValidationErrors`].
///
/// ```
/// use cqrs_core::prelude::*;
/// use cqrs_core::testing::Fixture;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct Deposited { pub amount: u64 }
///
/// #[derive(Debug, Clone, PartialEq, Event)]
/// pub enum AccountEvent {
///     Deposited(Deposited),
///     Closed,
/// }
///
/// #[derive(Debug, Command)]
/// #[command(aggregate = Account, id = id)]
/// pub struct Deposit { pub id: u32, pub amount: u64 }
///
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("the account is closed")]
/// pub struct Closed;
///
/// #[derive(Debug, Default)]
/// pub struct Account { balance: u64, closed: bool }
///
/// #[aggregate(event = AccountEvent, error = Closed)]
/// impl Account {
///     #[command_handler]
///     fn deposit(&self, cmd: &Deposit) -> Result<Deposited, Closed> {
///         if self.closed { return Err(Closed) }
///         Ok(Deposited { amount: cmd.amount })
///     }
///     #[event_handler]
///     fn on_deposited(&mut self, e: &Deposited) { self.balance += e.amount }
///     #[event_handler(Closed)]
///     fn on_closed(&mut self) { self.closed = true }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let account = Fixture::<Account>::default()
///     .given([AccountEvent::Deposited(Deposited { amount: 5 })])
///     .when(Deposit { id: 1, amount: 10 })
///     .await
///     .then_expect_events([AccountEvent::Deposited(Deposited { amount: 10 })]);
/// assert_eq!(account.balance, 15);
///
/// Fixture::<Account>::default()
///     .given([AccountEvent::Closed])
///     .when(Deposit { id: 1, amount: 10 })
///     .await
///     .then_expect_error(Closed);
/// # }
/// ```
pub struct Fixture<A: Aggregate> {
    services: A::Services,
    state: A,
    version: u64,
    metadata: Metadata,
}

impl<A: Aggregate> Fixture<A> {
    /// A fixture whose handlers get `services`.
    pub fn new(services: A::Services) -> Self {
        Self {
            services,
            state: A::default(),
            version: 0,
            metadata: Metadata::default(),
        }
    }

    /// Events that already happened, applied in order.
    #[must_use]
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for event in events {
            self.state.apply(&event);
            self.version += 1;
        }
        self
    }

    /// Events that already happened, in their stored form `(type name, schema version,
    /// JSON payload)`, read as the store's events are: old names and versions are upcast, and
    /// a stored event an upcaster splits applies all of its events (one stream version).
    ///
    /// ```
    /// # use cqrs_core::prelude::*;
    /// # use cqrs_core::testing::Fixture;
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// # pub struct Deposited { pub cents: u64 }
    /// #[derive(Debug, Deserialize)]
    /// pub struct DepositedV1 { pub amount: u64 }
    /// impl cqrs_core::Upcast for DepositedV1 {
    ///     type Next = Deposited;
    ///     fn upcast(self) -> Deposited { Deposited { cents: self.amount * 100 } }
    /// }
    /// #[derive(Debug, Clone, PartialEq, Event)]
    /// pub enum AccountEvent {
    ///     #[event(name = "account.deposited", version = 2, upcast(from = 1, with = DepositedV1))]
    ///     Deposited(Deposited),
    /// }
    /// # #[derive(Debug, Default)]
    /// # pub struct Account { cents: u64 }
    /// # #[aggregate(event = AccountEvent, error = std::convert::Infallible)]
    /// # impl Account {
    /// #     #[event_handler]
    /// #     fn on_deposited(&mut self, e: &Deposited) { self.cents += e.cents }
    /// # }
    /// let fixture = Fixture::<Account>::default()
    ///     .given_stored([("account.deposited", 1, serde_json::json!({ "amount": 5 }))]);
    /// assert_eq!(fixture.state().cents, 500);
    /// ```
    ///
    /// # Panics
    ///
    /// When a stored event does not decode, with the decoder's error: a fixture's givens
    /// are part of the test.
    #[must_use]
    #[track_caller]
    pub fn given_stored<'a>(
        mut self,
        events: impl IntoIterator<Item = (&'a str, u32, serde_json::Value)>,
    ) -> Self {
        for (event_type, version, payload) in events {
            let decoded = A::Event::decode_all(event_type, version, &Payload::from(payload))
                .unwrap_or_else(|error| {
                    panic!("given stored event `{event_type}` version {version}: {error}")
                });
            for event in decoded {
                self.state.apply(&event);
            }
            self.version += 1;
        }
        self
    }

    /// The state after the given events.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Caller metadata the command runs with.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Validates the command ([`Command::validate`], as the bus does), then runs its handler
    /// against the state.
    pub async fn when<C>(self, command: C) -> Outcome<A>
    where
        C: Command<Aggregate = A>,
        A: Handles<C>,
    {
        let mut state = self.state;
        if let Err(errors) = command.validate() {
            return Outcome {
                result: Err(CommandError::Invalid(errors)),
                state,
            };
        }
        let ctx = CommandContext::for_command(&command, self.metadata);
        let result = state
            .handle(&command, &self.services, &ctx)
            .await
            .map_err(CommandError::Rejected);
        if let Ok(events) = &result {
            for event in events {
                state.apply(event);
            }
        }
        Outcome { result, state }
    }
}

impl<A: Aggregate<Services = ()>> Default for Fixture<A> {
    fn default() -> Self {
        Self::new(())
    }
}

/// What a command did in a [`Fixture`].
pub struct Outcome<A: Aggregate> {
    /// Events, or [`CommandError::Rejected`] / [`CommandError::Invalid`].
    result: Result<Vec<A::Event>, CommandError<A::Error>>,
    state: A,
}

impl<A: Aggregate> Outcome<A> {
    /// Asserts that the command produced exactly these events, in order, and returns the
    /// state after them.
    ///
    /// # Panics
    ///
    /// When the command was invalid, rejected, or produced other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected, "the command produced other events"),
            Err(CommandError::Invalid(errors)) => {
                panic!("expected events {expected:?}, the command is invalid: {errors}")
            }
            Err(error) => {
                panic!("expected events {expected:?}, the command was rejected: {error:?}")
            }
        }
        self.state
    }

    /// Asserts that the command was rejected with exactly this error, and returns the state.
    ///
    /// # Panics
    ///
    /// When the command was accepted, invalid, or rejected with another error.
    #[track_caller]
    // Taking the error by value reads better at call sites: `.then_expect_error(Error::X)`.
    #[allow(clippy::needless_pass_by_value)]
    pub fn then_expect_error(self, expected: A::Error) -> A
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, the command produced {events:?}"),
            Err(CommandError::Rejected(error)) => assert_eq!(
                error, expected,
                "the command was rejected with another error"
            ),
            Err(CommandError::Invalid(errors)) => {
                panic!("expected error {expected:?}, the command is invalid: {errors}")
            }
            Err(error) => panic!("expected error {expected:?}, the command failed: {error:?}"),
        }
        self.state
    }

    /// Asserts that the command failed validation ([`Command::validate`]) and returns which
    /// fields failed; no handler ran.
    ///
    /// # Panics
    ///
    /// When the command was valid.
    #[track_caller]
    pub fn then_expect_invalid(self) -> ValidationErrors
    where
        A::Event: Debug,
        A::Error: Debug,
    {
        match self.result {
            Err(CommandError::Invalid(errors)) => errors,
            Ok(events) => panic!("expected the command to be invalid, it produced {events:?}"),
            Err(error) => panic!("expected the command to be invalid, it was rejected: {error:?}"),
        }
    }

    /// The raw outcome, for assertions the helpers do not cover: the events, or
    /// [`CommandError::Rejected`] with the handler's error, or [`CommandError::Invalid`].
    pub fn into_result(self) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        self.result
    }

    /// The state after applying the produced events (unchanged if rejected).
    pub fn state(&self) -> &A {
        &self.state
    }
}

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod idempotency;
#[cfg(feature = "testing")]
pub mod unique_keys;

/// Runs one check against `store` in a task of its own; `Err` holds its panic message (or
/// why the task did not finish). The store kits run each of their checks this way, and a
/// test that expects a check to fail on a broken store can call it directly.
#[cfg(feature = "testing")]
pub async fn run_check<S: crate::EventStore + Clone>(
    check: conformance::Check<S>,
    store: &S,
) -> Result<(), String> {
    let (_, check) = check;
    let store = store.clone();
    match tokio::spawn(async move { check(&store).await }).await {
        Ok(()) => Ok(()),
        Err(error) if error.is_panic() => {
            let payload = error.into_panic();
            Err(payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default())
        }
        Err(error) => Err(format!("did not finish: {error}")),
    }
}

/// Runs each of `checks` against `store`, in order, panicking with the kit's and the check's
/// name at the first that fails.
#[cfg(feature = "testing")]
async fn run_checks<S: crate::EventStore + Clone>(
    kit: &str,
    checks: Vec<conformance::Check<S>>,
    store: &S,
) {
    for check in checks {
        let name = check.0;
        if let Err(message) = run_check(check, store).await {
            panic!("{kit} check `{name}` failed: {message}");
        }
    }
}
