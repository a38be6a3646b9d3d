//! The code the macros generate, written by hand: the contract between `cqrs-macros` and
//! `cqrs-core`, kept compiling so a change to either side that breaks it is caught here.
// Hand-written stand-ins for generated code; the generated code itself is linted by
// tests/lints.rs in the `tests` crate.
#![allow(missing_docs, clippy::pedantic, clippy::single_match)]

use cqrs_core::__private as p;
use cqrs_core::{
    Aggregate, Command, CommandBus, CommandContext, CommandDispatcher, DispatchError, Event,
    EventDecodeError, InMemoryEventStore, Projection, Query, QueryBus, QueryDispatcher, ReadModel,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- what the user writes
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

// #[derive(Event)]
#[derive(Debug, Clone, PartialEq)]
pub enum AccountEvent {
    // #[event(name = "account.opened")]
    Opened(Opened),
    // #[event(name = "account.deposited", version = 2)]
    Deposited(Deposited),
    // default name: "AccountEvent.Closed"? the macro's default is documented there
    Closed,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AccountError {
    #[error("account is closed")]
    Closed,
}

// #[derive(Command)] #[command(aggregate = Account, id = account_id)]
#[derive(Debug, Deserialize)]
pub struct Deposit {
    pub account_id: String,
    pub amount: u64,
}

// #[derive(Command)] #[command(aggregate = Account, id = account_id, name = "account.close")]
#[derive(Debug, Deserialize)]
pub struct Close {
    pub account_id: String,
}

#[derive(Debug, Default)]
pub struct Account {
    balance: u64,
    closed: bool,
}

pub struct Services {
    pub limit: u64,
}

// #[aggregate(event = AccountEvent, error = AccountError, services = Services)]
impl Account {
    // #[command_handler]
    fn deposit(&self, cmd: &Deposit, services: &Services) -> Result<Deposited, AccountError> {
        if self.closed {
            return Err(AccountError::Closed);
        }
        Ok(Deposited {
            amount: cmd.amount.min(services.limit),
        })
    }

    // #[command_handler]
    async fn close(
        &self,
        _cmd: &Close,
        ctx: &CommandContext,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        let _ = ctx.now;
        Ok(if self.closed {
            vec![]
        } else {
            vec![AccountEvent::Closed]
        })
    }

    // #[event_handler]
    fn on_opened(&mut self, _e: &Opened) {}
    // #[event_handler]
    fn on_deposited(&mut self, e: &Deposited) {
        self.balance += e.amount;
    }
    // #[event_handler(Closed)]
    fn on_closed(&mut self) {
        self.closed = true;
    }
}

// ---------------------------------------------------------------- #[derive(Event)] output
const _: () = {
    #[automatically_derived]
    impl p::Event for AccountEvent {
        const TYPES: &'static [p::EventType] = &[
            p::EventType {
                name: "account.opened",
                version: 1,
                variant: "Opened",
            },
            p::EventType {
                name: "account.deposited",
                version: 2,
                variant: "Deposited",
            },
            p::EventType {
                name: "AccountEvent.Closed",
                version: 1,
                variant: "Closed",
            },
        ];
        fn event_type(&self) -> &'static str {
            match self {
                Self::Opened(..) => "account.opened",
                Self::Deposited(..) => "account.deposited",
                Self::Closed => "AccountEvent.Closed",
            }
        }
        fn schema_version(&self) -> u32 {
            match self {
                Self::Opened(..) => 1,
                Self::Deposited(..) => 2,
                Self::Closed => 1,
            }
        }
        fn to_payload(&self) -> Result<p::Payload, p::serde_json::Error> {
            match self {
                Self::Opened(payload) => p::encode_variant(payload),
                Self::Deposited(payload) => p::encode_variant(payload),
                Self::Closed => Ok(p::Payload::null()),
            }
        }
        fn from_payload(
            event_type: &str,
            version: u32,
            payload: &p::Payload,
        ) -> Result<Self, p::EventDecodeError> {
            match event_type {
                "account.opened" => {
                    if version != 1 {
                        return Err(p::unsupported_version(event_type, version, 1));
                    }
                    p::decode_variant(event_type, payload).map(Self::Opened)
                }
                "account.deposited" => {
                    if version != 2 {
                        return Err(p::unsupported_version(event_type, version, 2));
                    }
                    p::decode_variant(event_type, payload).map(Self::Deposited)
                }
                "AccountEvent.Closed" => {
                    if version != 1 {
                        return Err(p::unsupported_version(event_type, version, 1));
                    }
                    Ok(Self::Closed)
                }
                _ => Err(p::unknown_event(event_type)),
            }
        }
    }
    #[automatically_derived]
    impl p::EventPayload for Opened {
        type Event = AccountEvent;
        const EVENT_TYPE: &'static str = "account.opened";
        const SCHEMA_VERSION: u32 = 1;
        fn into_event(self) -> AccountEvent {
            AccountEvent::Opened(self)
        }
        fn from_event(event: AccountEvent) -> Option<Self> {
            match event {
                AccountEvent::Opened(payload) => Some(payload),
                _ => None,
            }
        }
    }
    #[automatically_derived]
    impl p::EventPayload for Deposited {
        type Event = AccountEvent;
        const EVENT_TYPE: &'static str = "account.deposited";
        const SCHEMA_VERSION: u32 = 2;
        fn into_event(self) -> AccountEvent {
            AccountEvent::Deposited(self)
        }
        fn from_event(event: AccountEvent) -> Option<Self> {
            match event {
                AccountEvent::Deposited(payload) => Some(payload),
                _ => None,
            }
        }
    }
    #[automatically_derived]
    impl From<Opened> for AccountEvent {
        fn from(payload: Opened) -> Self {
            Self::Opened(payload)
        }
    }
    #[automatically_derived]
    impl From<Deposited> for AccountEvent {
        fn from(payload: Deposited) -> Self {
            Self::Deposited(payload)
        }
    }
    #[automatically_derived]
    impl p::IntoEvents<AccountEvent> for Opened {
        fn into_events(self) -> p::std::vec::Vec<AccountEvent> {
            p::std::vec![AccountEvent::Opened(self)]
        }
    }
    #[automatically_derived]
    impl p::IntoEvents<AccountEvent> for Deposited {
        fn into_events(self) -> p::std::vec::Vec<AccountEvent> {
            p::std::vec![AccountEvent::Deposited(self)]
        }
    }
    #[automatically_derived]
    impl<A> p::ApplyTo<A> for AccountEvent
    where
        A: p::Apply<Opened> + p::Apply<Deposited> + p::ApplyUnit<AccountEvent>,
    {
        fn apply_to(&self, aggregate: &mut A) {
            const {
                assert!(
                    p::contains_str(<A as p::ApplyUnit<AccountEvent>>::HANDLED, "Closed"),
                    "the aggregate has no `#[event_handler(Closed)]` for unit event `AccountEvent::Closed`"
                );
            }
            match self {
                Self::Opened(payload) => p::Apply::<Opened>::apply(aggregate, payload),
                Self::Deposited(payload) => p::Apply::<Deposited>::apply(aggregate, payload),
                Self::Closed => p::ApplyUnit::<AccountEvent>::apply_unit(aggregate, "Closed"),
            }
        }
    }
};

// ---------------------------------------------------------------- #[derive(Command)] output
const _: () = {
    #[automatically_derived]
    impl p::Command for Deposit {
        const NAME: &'static str = "Deposit";
        type Aggregate = Account;
        fn aggregate_id(&self) -> p::std::string::String {
            p::std::string::ToString::to_string(&self.account_id)
        }
    }
};
const _: () = {
    #[automatically_derived]
    impl p::Command for Close {
        const NAME: &'static str = "account.close";
        type Aggregate = Account;
        fn aggregate_id(&self) -> p::std::string::String {
            p::std::string::ToString::to_string(&self.account_id)
        }
    }
};

// ---------------------------------------------------------------- #[aggregate] output
const _: () = {
    #[automatically_derived]
    impl p::Aggregate for Account {
        const NAME: &'static str = "Account";
        type Event = AccountEvent;
        type Error = AccountError;
        type Services = Services;
        fn apply(&mut self, event: &AccountEvent) {
            p::ApplyTo::<Self>::apply_to(event, self);
        }
    }
    #[automatically_derived]
    impl p::Apply<Opened> for Account {
        fn apply(&mut self, payload: &Opened) {
            self.on_opened(payload);
        }
    }
    #[automatically_derived]
    impl p::Apply<Deposited> for Account {
        fn apply(&mut self, payload: &Deposited) {
            self.on_deposited(payload);
        }
    }
    #[automatically_derived]
    impl p::ApplyUnit<AccountEvent> for Account {
        const HANDLED: &'static [&'static str] = &["Closed"];
        fn apply_unit(&mut self, variant: &'static str) {
            match variant {
                "Closed" => self.on_closed(),
                _ => {}
            }
        }
    }
    #[automatically_derived]
    impl p::Handles<Deposit> for Account {
        async fn handle(
            &self,
            command: &Deposit,
            services: &Services,
            ctx: &p::CommandContext,
        ) -> Result<p::std::vec::Vec<AccountEvent>, AccountError> {
            let _ = (services, ctx);
            Ok(p::IntoEvents::<AccountEvent>::into_events(
                self.deposit(command, services)?,
            ))
        }
    }
    #[automatically_derived]
    impl p::Handles<Close> for Account {
        async fn handle(
            &self,
            command: &Close,
            services: &Services,
            ctx: &p::CommandContext,
        ) -> Result<p::std::vec::Vec<AccountEvent>, AccountError> {
            let _ = (services, ctx);
            Ok(p::IntoEvents::<AccountEvent>::into_events(
                self.close(command, ctx).await?,
            ))
        }
    }
    #[automatically_derived]
    impl p::DispatchCommands for Account
    where
        for<'__cqrs> Deposit: p::serde::de::DeserializeOwned,
        for<'__cqrs> Close: p::serde::de::DeserializeOwned,
    {
        fn visit_commands<V: p::CommandVisitor<Self>>(visitor: &mut V) {
            visitor.visit::<Deposit>();
            visitor.visit::<Close>();
        }
    }
};

// ---------------------------------------------------------------- a projection with queries
#[derive(Debug, Deserialize)]
pub struct GetBalance {
    pub account_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("no such account")]
pub struct NotFound;

#[derive(Default)]
pub struct Balances {
    by_stream: std::collections::HashMap<String, u64>,
}

// #[projection]
impl Balances {
    // #[event_handler]
    fn on_deposited(&mut self, e: &Deposited, meta: &cqrs_core::RecordedEvent) {
        *self.by_stream.entry(meta.stream_id.clone()).or_default() += e.amount;
    }
    // #[query_handler]
    fn balance(&self, q: &GetBalance) -> Result<u64, NotFound> {
        self.by_stream
            .get(&format!("Account-{}", q.account_id))
            .copied()
            .ok_or(NotFound)
    }
}

// #[derive(Query)] #[query(output = u64)]
const _: () = {
    #[automatically_derived]
    impl p::Query for GetBalance {
        const NAME: &'static str = "GetBalance";
        type Output = u64;
    }
};

const _: () = {
    #[automatically_derived]
    impl p::Projection for Balances {
        const NAME: &'static str = "Balances";
        const EVENT_TYPES: &'static [&'static str] = &[<Deposited as p::EventPayload>::EVENT_TYPE];
        type Context = ();
        async fn project(
            &mut self,
            event: &p::RecordedEvent,
            ctx: &mut (),
        ) -> Result<(), p::ProjectionError> {
            let _ = ctx;
            let event_type = event.event_type.as_str();
            if event_type == <Deposited as p::EventPayload>::EVENT_TYPE {
                let payload = p::decode_payload::<Deposited>(<Self as p::Projection>::NAME, event)?;
                self.on_deposited(&payload, event);
                return Ok(());
            }
            Ok(())
        }
    }
    #[automatically_derived]
    impl p::HandlesQuery<GetBalance> for Balances {
        type Error = NotFound;
        async fn handle_query(&self, query: &GetBalance) -> Result<u64, NotFound> {
            self.balance(query)
        }
    }
    #[automatically_derived]
    impl p::AnsweredQueries for Balances {
        const NAMES: &'static [&'static str] = &[<GetBalance as p::Query>::NAME];
    }
    #[automatically_derived]
    impl p::DispatchQueries for Balances
    where
        for<'__cqrs> GetBalance: p::serde::de::DeserializeOwned,
        for<'__cqrs> <GetBalance as p::Query>::Output: p::serde::Serialize,
    {
        fn visit_queries<V: p::QueryVisitor<Self>>(visitor: &mut V) {
            visitor.visit::<GetBalance>();
        }
    }
};

// ---------------------------------------------------------------- it all runs
#[tokio::test]
async fn the_hand_expansion_runs_end_to_end() {
    let balances = ReadModel::new(Balances::default());
    let store = InMemoryEventStore::new();
    let bus = CommandBus::builder(store.clone())
        .aggregate::<Account>(Services { limit: 100 })
        .subscribe(balances.clone())
        .build();
    let committed = bus
        .execute(Deposit {
            account_id: "a".into(),
            amount: 500,
        })
        .await
        .unwrap();
    assert_eq!(committed.stream_version, 1);
    assert_eq!(committed.stream_id, "Account-a");
    bus.execute(Close {
        account_id: "a".into(),
    })
    .await
    .unwrap();
    let rejected = bus
        .execute(Deposit {
            account_id: "a".into(),
            amount: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(rejected.rejection(), Some(AccountError::Closed)));

    let queries = QueryBus::builder().handler(balances.clone()).build();
    assert_eq!(
        queries
            .execute(GetBalance {
                account_id: "a".into()
            })
            .await
            .unwrap(),
        100
    );

    let commands = CommandDispatcher::new(bus.clone()).unwrap();
    assert_eq!(commands.names(), vec!["Deposit", "account.close"]);
    match commands.dispatch_json("Withdraw", b"{}").await {
        Err(DispatchError::UnknownName { name, .. }) => assert_eq!(name, "Withdraw"),
        other => panic!("{other:?}"),
    }
    match commands
        .dispatch_json("Deposit", br#"{"account_id":"b","amount":"x"}"#)
        .await
    {
        Err(DispatchError::Malformed { path, .. }) => assert_eq!(path, "amount"),
        other => panic!("{other:?}"),
    }
    commands
        .dispatch_json("Deposit", br#"{"account_id":"b","amount":7}"#)
        .await
        .unwrap();
    let answers = QueryDispatcher::new(queries).unwrap();
    let answer = answers
        .dispatch_json("GetBalance", br#"{"account_id":"b"}"#)
        .await
        .unwrap();
    assert_eq!(answer, serde_json::json!(7));
    assert_eq!(store.len(), 3);

    let decoded = AccountEvent::from_payload(
        "account.deposited",
        2,
        &serde_json::json!({"amount": "x"}).into(),
    );
    assert!(matches!(decoded, Err(EventDecodeError::Payload { ref path, .. }) if path == "amount"));
    let _ = <Account as Aggregate>::NAME;
    let _ = <Balances as Projection>::EVENT_TYPES;
    let _ = <Deposit as Command>::NAME;
    let _ = <GetBalance as Query>::NAME;
}
