//! The domain built on `cqrs_core` alone runs: typed and JSON commands, a read model, a query.

use cqrs_core::prelude::*;
use cqrs_core::{CommandDispatcher, QueryDispatcher};
use cqrs_core_only::{
    Account, AccountError, Balances, Close, Commands, Deposit, GetBalance, Queries,
};

#[tokio::test]
async fn a_domain_with_only_cqrs_core_as_dependency_runs() {
    let balances = ReadModel::new(Balances::default());
    let commands: Commands = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Account>(())
        .subscribe(balances.clone())
        .build();
    let queries: Queries = QueryBus::builder().handler(balances).build();
    let account_id = Uuid::now_v7();

    commands
        .execute(Deposit {
            account_id,
            amount: 5,
        })
        .await
        .unwrap();
    let body = format!(r#"{{"account_id": "{account_id}", "amount": 2}}"#);
    CommandDispatcher::new(commands.clone())
        .unwrap()
        .dispatch_json("account.deposit", body.as_bytes())
        .await
        .unwrap();
    assert_eq!(queries.execute(GetBalance { account_id }).await.unwrap(), 7);
    let body = format!(r#"{{"account_id": "{account_id}"}}"#);
    let answer = QueryDispatcher::new(queries)
        .unwrap()
        .dispatch_json("account.balance", body.as_bytes())
        .await
        .unwrap();
    assert_eq!(answer.to_string(), "7");

    commands.execute(Close { account_id }).await.unwrap();
    let refused = commands
        .execute(Deposit {
            account_id,
            amount: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.rejection(), Some(&AccountError::Closed));
    assert_eq!(refused.domain_code(), Some("account_closed"));
}
