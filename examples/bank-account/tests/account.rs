//! The account's rules as specifications, and the service end to end on the in-memory store.

use bank_account::domain::{
    Account, AccountError, AccountEvent, CloseAccount, Deposit, Deposited, OpenAccount, Opened,
    Withdraw, Withdrawn,
};
use bank_account::read_model::{AccountView, GetBalance};
use cqrs_core::testing::Fixture;
use cqrs_core::{CommandError, InMemoryEventStore};
use uuid::Uuid;

fn opened() -> AccountEvent {
    AccountEvent::Opened(Opened {
        owner: "ada".into(),
    })
}

#[tokio::test]
async fn a_withdrawal_within_the_balance_is_recorded() {
    Fixture::<Account>::default()
        .given([opened(), AccountEvent::Deposited(Deposited { amount: 100 })])
        .when(Withdraw {
            account_id: Uuid::nil(),
            amount: 60,
        })
        .await
        .then_expect_events([AccountEvent::Withdrawn(Withdrawn { amount: 60 })]);
}

#[tokio::test]
async fn a_withdrawal_beyond_the_balance_is_refused() {
    Fixture::<Account>::default()
        .given([opened(), AccountEvent::Deposited(Deposited { amount: 100 })])
        .when(Withdraw {
            account_id: Uuid::nil(),
            amount: 101,
        })
        .await
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 100,
            requested: 101,
        });
}

#[tokio::test]
async fn only_an_empty_account_closes_and_closing_twice_records_nothing() {
    Fixture::<Account>::default()
        .given([opened(), AccountEvent::Deposited(Deposited { amount: 1 })])
        .when(CloseAccount {
            account_id: Uuid::nil(),
        })
        .await
        .then_expect_error(AccountError::NotEmpty { balance: 1 });
    Fixture::<Account>::default()
        .given([opened(), AccountEvent::Closed])
        .when(CloseAccount {
            account_id: Uuid::nil(),
        })
        .await
        .then_expect_events([]);
    Fixture::<Account>::default()
        .given([opened(), AccountEvent::Closed])
        .when(Deposit {
            account_id: Uuid::nil(),
            amount: 1,
        })
        .await
        .then_expect_error(AccountError::Closed);
}

#[tokio::test]
async fn the_service_keeps_the_balance_read_model_in_step() {
    let store = InMemoryEventStore::new();
    let service = bank_account::wire::build(store.clone());
    let account_id = Uuid::now_v7();
    service
        .commands
        .execute(OpenAccount {
            account_id,
            owner: "ada".into(),
        })
        .await
        .unwrap();
    service
        .commands
        .execute(Deposit {
            account_id,
            amount: 500,
        })
        .await
        .unwrap();
    let refused = service
        .commands
        .execute(Withdraw {
            account_id,
            amount: 501,
        })
        .await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(AccountError::InsufficientFunds {
            balance: 500,
            requested: 501
        }))
    ));
    let invalid = service
        .commands
        .execute(Deposit {
            account_id,
            amount: 0,
        })
        .await;
    assert!(matches!(invalid, Err(CommandError::Invalid(_))));
    let view = service
        .queries
        .execute(GetBalance { account_id })
        .await
        .unwrap();
    assert_eq!(
        view,
        AccountView {
            owner: "ada".into(),
            balance: 500,
            movements: 1
        }
    );
    assert_eq!(store.len(), 2, "refused and invalid commands wrote nothing");
}
