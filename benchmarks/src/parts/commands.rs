//! Part a: deposits on many accounts (a uniformly random account per command) at several
//! client counts, through this framework, cqrs-es, and two hand-written sqlx loops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cqrs_core::CommandBus;
use cqrs_es::AggregateError;
use cqrs_postgres::PostgresEventStore;
use postgres_es::{PostgresCqrs, postgres_cqrs};
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::Settings;
use crate::db::{BenchDb, CQRS_ES_TABLES};
use crate::domain::es::{EsAccount, EsCommand};
use crate::domain::{Account, Bus, DEPOSITED, Deposit, OPENED, OpenAccount, stream_of};
use crate::hand::{self, Folded};
use crate::measure::{SplitMix, Summary, cell, ratio, table, throughput, turns};

const VARIANTS: usize = 4;
const OURS: usize = 0;
const HAND_TX: usize = 1;
const HAND_INSERT: usize = 2;
const CQRS_ES: usize = 3;

/// The accounts a hand-written loop drives, each with its state in memory. Each account's
/// lock queues that loop's commands on it, as the framework's cache slot does.
struct HandAccounts {
    pool: PgPool,
    first: u64,
    states: Vec<Mutex<Folded>>,
}

impl HandAccounts {
    fn new(pool: PgPool, first: u64, accounts: u64) -> Self {
        HandAccounts {
            pool,
            first,
            states: (0..accounts)
                .map(|_| Mutex::new(Folded::default()))
                .collect(),
        }
    }

    async fn open(&self, index: u64) {
        let mut folded = self.states[usize::try_from(index).expect("index")]
            .lock()
            .await;
        let account = self.first + index;
        let stream = stream_of(account);
        let event = folded
            .state
            .open(&OpenAccount {
                account,
                owner: format!("owner {account}"),
            })
            .expect("a new account opens");
        let metadata = hand::command_metadata();
        hand::insert_one(&self.pool, &stream, 1, OPENED, &event, &metadata)
            .await
            .expect("open");
        folded.state.on_opened(&event);
        folded.version = 1;
    }

    /// "Read new events then insert in one transaction": BEGIN, read the stream after the
    /// folded version and fold it, decide, insert with the next version, COMMIT.
    async fn deposit_in_transaction(&self, index: u64) {
        let mut folded = self.states[usize::try_from(index).expect("index")]
            .lock()
            .await;
        let account = self.first + index;
        let stream = stream_of(account);
        let mut tx = self.pool.begin().await.expect("begin");
        hand::read_new(&mut *tx, &stream, &mut folded).await;
        let event = folded
            .state
            .deposit(&Deposit { account, amount: 1 })
            .expect("a deposit on an open account");
        let metadata = hand::command_metadata();
        hand::insert_one(
            &mut *tx,
            &stream,
            folded.version + 1,
            DEPOSITED,
            &event,
            &metadata,
        )
        .await
        .expect("insert");
        tx.commit().await.expect("commit");
        folded.state.on_deposited(&event);
        folded.version += 1;
    }

    /// "One INSERT with version check": the state in memory is taken as current; the
    /// unique `(stream_id, stream_version)` key refuses the insert if it is not.
    async fn deposit_one_insert(&self, index: u64) {
        let mut folded = self.states[usize::try_from(index).expect("index")]
            .lock()
            .await;
        let account = self.first + index;
        let stream = stream_of(account);
        let event = folded
            .state
            .deposit(&Deposit { account, amount: 1 })
            .expect("a deposit on an open account");
        let metadata = hand::command_metadata();
        hand::insert_one(
            &self.pool,
            &stream,
            folded.version + 1,
            DEPOSITED,
            &event,
            &metadata,
        )
        .await
        .expect("insert");
        folded.state.on_deposited(&event);
        folded.version += 1;
    }
}

/// cqrs-es's metadata for a command: the same correlation and causation ids as ours.
fn es_metadata() -> HashMap<String, String> {
    let command_id = Uuid::now_v7().to_string();
    HashMap::from([
        ("correlation_id".to_owned(), command_id.clone()),
        ("causation_id".to_owned(), command_id),
    ])
}

/// A deposit through cqrs-es, retried on a version conflict: cqrs-es does not queue
/// concurrent commands on one aggregate, it refuses all but one.
async fn es_deposit(es: &PostgresCqrs<EsAccount>, account: u64) {
    let id = account.to_string();
    loop {
        match es
            .execute_with_metadata(&id, EsCommand::Deposit { amount: 1 }, es_metadata())
            .await
        {
            Ok(()) => return,
            Err(AggregateError::AggregateConflict) => {}
            Err(other) => panic!("cqrs-es deposit: {other}"),
        }
    }
}

/// Runs `open(i)` for every account index, from 8 tasks.
async fn seed<F, Fut>(accounts: u64, open: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = 8;
    let mut running = Vec::new();
    for task in 0..tasks {
        let mine: Vec<Fut> = (task..accounts).step_by(8).map(&open).collect();
        running.push(tokio::spawn(async move {
            for open in mine {
                open.await;
            }
        }));
    }
    for task in running {
        task.await.expect("seed");
    }
}

async fn run_variant(
    variant: usize,
    clients: usize,
    round: usize,
    settings: &Settings,
    ours: &Bus,
    hands: &[Arc<HandAccounts>; 2],
    es: &Arc<PostgresCqrs<EsAccount>>,
) -> f64 {
    let accounts = settings.accounts;
    let seconds = settings.seconds;
    match variant {
        OURS => {
            throughput(clients, seconds, |client, deadline| {
                let bus = ours.clone();
                async move {
                    let mut rng = SplitMix::new(round, client);
                    let mut done = 0;
                    while Instant::now() < deadline {
                        let account = rng.below(accounts);
                        bus.execute(Deposit { account, amount: 1 })
                            .await
                            .expect("deposit");
                        done += 1;
                    }
                    done
                }
            })
            .await
        }
        HAND_TX | HAND_INSERT => {
            let hand = &hands[variant - HAND_TX];
            throughput(clients, seconds, |client, deadline| {
                let hand = Arc::clone(hand);
                async move {
                    let mut rng = SplitMix::new(round, client);
                    let mut done = 0;
                    while Instant::now() < deadline {
                        let index = rng.below(accounts);
                        if variant == HAND_TX {
                            hand.deposit_in_transaction(index).await;
                        } else {
                            hand.deposit_one_insert(index).await;
                        }
                        done += 1;
                    }
                    done
                }
            })
            .await
        }
        _ => {
            throughput(clients, seconds, |client, deadline| {
                let es = Arc::clone(es);
                async move {
                    let mut rng = SplitMix::new(round, client);
                    let mut done = 0;
                    while Instant::now() < deadline {
                        es_deposit(&es, rng.below(accounts)).await;
                        done += 1;
                    }
                    done
                }
            })
            .await
        }
    }
}

/// The four variants' accounts, opened before any round: every measured command is a
/// one-event deposit.
async fn open_accounts(
    pool: &PgPool,
    accounts: u64,
) -> (Bus, [Arc<HandAccounts>; 2], Arc<PostgresCqrs<EsAccount>>) {
    let ours = CommandBus::builder(PostgresEventStore::new(pool.clone()))
        .aggregate::<Account>(())
        .build();
    let bus = ours.clone();
    seed(accounts, move |account| {
        let bus = bus.clone();
        async move {
            bus.execute(OpenAccount {
                account,
                owner: format!("owner {account}"),
            })
            .await
            .expect("open");
        }
    })
    .await;
    let hands = [
        Arc::new(HandAccounts::new(pool.clone(), accounts, accounts)),
        Arc::new(HandAccounts::new(pool.clone(), 2 * accounts, accounts)),
    ];
    for hand in &hands {
        let hand = Arc::clone(hand);
        seed(accounts, move |index| {
            let hand = Arc::clone(&hand);
            async move { hand.open(index).await }
        })
        .await;
    }
    let es = Arc::new(postgres_cqrs::<EsAccount>(pool.clone(), Vec::new(), ()));
    let opener = Arc::clone(&es);
    seed(accounts, move |account| {
        let es = Arc::clone(&opener);
        async move {
            es.execute(
                &account.to_string(),
                EsCommand::Open {
                    owner: format!("owner {account}"),
                },
            )
            .await
            .expect("open");
        }
    })
    .await;
    (ours, hands, es)
}

/// Part a.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    db.execute_all(&CQRS_ES_TABLES).await;
    let accounts = settings.accounts;
    let (ours, hands, es) = open_accounts(&db.pool, accounts).await;

    println!(
        "## a. Commands on {accounts} accounts, commands/s \
         (median (min–max) of {} rounds of {} s, pool of {} connections)\n",
        settings.rounds, settings.seconds, settings.pool
    );
    let mut rows = Vec::new();
    for &clients in &settings.clients {
        let mut rates = vec![Vec::new(); VARIANTS];
        for round in 0..settings.rounds {
            for variant in turns(round, VARIANTS) {
                let rate = run_variant(variant, clients, round, settings, &ours, &hands, &es).await;
                rates[variant].push(rate);
            }
        }
        let s: Vec<Option<Summary>> = rates.iter().map(|r| Summary::of(r)).collect();
        rows.push(vec![
            clients.to_string(),
            cell(s[OURS], 0),
            cell(s[HAND_TX], 0),
            cell(s[HAND_INSERT], 0),
            cell(s[CQRS_ES], 0),
            ratio(s[OURS], s[HAND_TX]),
            ratio(s[OURS], s[HAND_INSERT]),
            ratio(s[OURS], s[CQRS_ES]),
        ]);
    }
    table(
        &[
            "clients",
            "ours: `CommandBus` on `PostgresEventStore`",
            "hand-written, read new events then insert in one transaction",
            "hand-written, one INSERT with version check (state in memory, unique (stream, version) key is the check)",
            "cqrs-es + postgres-es",
            "ours / hand (transaction)",
            "ours / hand (one INSERT)",
            "ours / cqrs-es",
        ],
        1,
        &rows,
    );
    db.drop_now().await;
}
