//! A small bank-account domain with its trait impls written by hand (what the macros
//! generate), for the store tests.
#![allow(dead_code)]

use cqrs_core::{
    Aggregate, Command, CommandContext, Event, EventDecodeError, EventPayload, EventType, Handles,
    Payload, Projection, ProjectionError, RecordedEvent,
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

pub const OPENED: &str = "bank.opened";
pub const DEPOSITED: &str = "bank.deposited";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub amount: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BankEvent {
    Opened(Opened),
    Deposited(Deposited),
}

impl Event for BankEvent {
    const TYPES: &'static [EventType] = &[
        EventType {
            name: OPENED,
            version: 1,
            variant: "Opened",
        },
        EventType {
            name: DEPOSITED,
            version: 1,
            variant: "Deposited",
        },
    ];

    fn event_type(&self) -> &'static str {
        match self {
            BankEvent::Opened(_) => OPENED,
            BankEvent::Deposited(_) => DEPOSITED,
        }
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn to_payload(&self) -> Result<Payload, serde_json::Error> {
        match self {
            BankEvent::Opened(p) => Payload::encode(p),
            BankEvent::Deposited(p) => Payload::encode(p),
        }
    }

    fn from_payload(
        event_type: &str,
        version: u32,
        payload: &Payload,
    ) -> Result<Self, EventDecodeError> {
        if !Self::declares(event_type) {
            return Err(EventDecodeError::UnknownType {
                name: event_type.to_owned(),
            });
        }
        if version != 1 {
            return Err(EventDecodeError::UnsupportedVersion {
                name: event_type.to_owned(),
                found: version,
                expected: 1,
            });
        }
        let invalid = |e: serde_json::Error| EventDecodeError::Payload {
            name: event_type.to_owned(),
            path: ".".into(),
            message: e.to_string(),
        };
        if event_type == OPENED {
            payload
                .decode::<Opened>()
                .map(BankEvent::Opened)
                .map_err(invalid)
        } else {
            payload
                .decode::<Deposited>()
                .map(BankEvent::Deposited)
                .map_err(invalid)
        }
    }
}

impl EventPayload for Deposited {
    type Event = BankEvent;
    const EVENT_TYPE: &'static str = DEPOSITED;
    const SCHEMA_VERSION: u32 = 1;

    fn into_event(self) -> BankEvent {
        BankEvent::Deposited(self)
    }

    fn from_event(event: BankEvent) -> Option<Self> {
        match event {
            BankEvent::Deposited(p) => Some(p),
            BankEvent::Opened(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BankError {
    #[error("a deposit must be positive")]
    ZeroAmount,
}

/// Deposits into account `account`; the first deposit also opens it.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub account: String,
    pub amount: u64,
}

impl Command for Deposit {
    const NAME: &'static str = "bank.deposit";
    type Aggregate = Account;

    fn aggregate_id(&self) -> String {
        self.account.clone()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
    pub deposits: u64,
}

impl Aggregate for Account {
    const NAME: &'static str = "Account";
    type Event = BankEvent;
    type Error = BankError;
    type Services = ();
    const SNAPSHOT_VERSION: Option<u32> = Some(2);

    fn apply(&mut self, event: &BankEvent) {
        match event {
            BankEvent::Opened(_) => self.open = true,
            BankEvent::Deposited(d) => {
                self.balance += d.amount;
                self.deposits += 1;
            }
        }
    }

    fn to_snapshot(&self) -> Option<Result<serde_json::Value, serde_json::Error>> {
        Some(serde_json::to_value(self))
    }

    fn from_snapshot(state: &serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
        Some(Account::deserialize(state))
    }
}

impl Handles<Deposit> for Account {
    async fn handle(
        &self,
        command: &Deposit,
        _services: &(),
        _ctx: &CommandContext,
    ) -> Result<Vec<BankEvent>, BankError> {
        if command.amount == 0 {
            return Err(BankError::ZeroAmount);
        }
        let mut events = Vec::with_capacity(2);
        if !self.open {
            events.push(BankEvent::Opened(Opened {
                owner: command.account.clone(),
            }));
        }
        events.push(BankEvent::Deposited(Deposited {
            amount: command.amount,
        }));
        Ok(events)
    }
}

/// The amount an inline projection refuses, to test that its failure undoes the append.
pub const CURSED_AMOUNT: u64 = 13;

pub const BALANCES_TABLE: &str = "\
CREATE TABLE IF NOT EXISTS test_balances (
    stream_id text PRIMARY KEY,
    balance bigint NOT NULL,
    last_position bigint NOT NULL
)";

/// A read model in the database, updated in the append's transaction.
#[derive(Debug, Clone, Default)]
pub struct BalanceRows;

#[derive(Debug, thiserror::Error)]
#[error("amount {0} is cursed")]
pub struct Cursed(pub u64);

impl Projection for BalanceRows {
    const NAME: &'static str = "BalanceRows";
    const EVENT_TYPES: &'static [&'static str] = &[DEPOSITED];
    type Context = PgConnection;

    async fn project(
        &mut self,
        event: &RecordedEvent,
        conn: &mut PgConnection,
    ) -> Result<(), ProjectionError> {
        let amount = match event.decode::<BankEvent>() {
            Ok(BankEvent::Deposited(d)) => d.amount,
            Ok(BankEvent::Opened(_)) => return Ok(()),
            Err(source) => {
                return Err(ProjectionError::Decode {
                    projection: Self::NAME,
                    stream_id: event.stream_id.clone(),
                    stream_version: event.stream_version,
                    source,
                });
            }
        };
        sqlx::query(
            "INSERT INTO test_balances (stream_id, balance, last_position) VALUES ($1, $2, $3)
             ON CONFLICT (stream_id) DO UPDATE
             SET balance = test_balances.balance + excluded.balance,
                 last_position = excluded.last_position",
        )
        .bind(&event.stream_id)
        .bind(i64::try_from(amount).unwrap())
        .bind(i64::try_from(event.position.0).unwrap())
        .execute(&mut *conn)
        .await
        .map_err(|e| handler_error(event, e))?;
        if amount == CURSED_AMOUNT {
            return Err(handler_error(event, Cursed(amount)));
        }
        Ok(())
    }
}

fn handler_error(
    event: &RecordedEvent,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ProjectionError {
    ProjectionError::Handler {
        projection: BalanceRows::NAME,
        event_type: event.event_type.clone(),
        position: event.position,
        source: error.into(),
    }
}
