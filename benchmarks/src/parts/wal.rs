//! Part f: write-ahead log written per event.

use cqrs_core::CommandBus;
use cqrs_postgres::PostgresEventStore;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use crate::Settings;
use crate::db::BenchDb;
use crate::domain::{Account, Bus, DEPOSITED, Deposit, OPENED, OpenAccount, stream_of};
use crate::hand::{self, Folded};
use crate::measure::{Summary, cell, ratio, table, turns};

const OURS: usize = 0;
const HAND: usize = 1;

/// The accounts each variant deposits into, in turn; the hand-written loop's are numbered
/// after ours.
const ACCOUNTS: u64 = 100;

/// The records of this database in a range of the WAL, summed by `pg_walinspect`: those
/// that change a block of it (`$3` is `%/<database oid>/%`) and the commit records of their
/// transactions. Other databases' writes, which `pg_wal_lsn_diff` counts too, are left out;
/// so are page headers and alignment padding, which it counts.
const OWN_RECORDS: &str = "\
WITH r AS (SELECT xid, record_length, block_ref FROM pg_get_wal_records_info($1::pg_lsn, $2::pg_lsn))
SELECT coalesce(sum(record_length), 0)::float8 FROM r
WHERE block_ref LIKE $3
   OR (xid <> '0'::xid AND xid IN (SELECT xid FROM r WHERE block_ref LIKE $3))";

/// What counting this database's own WAL records needs.
struct OwnRecords {
    /// `%/<database oid>/%`: how a block reference of this database reads.
    blocks: String,
    /// A temporary replication slot's name: while a round runs, the slot keeps the server
    /// from recycling the WAL segments the round wrote before they are read back.
    slot: String,
    /// The session holding the slot; a temporary slot goes away with its session.
    conn: PoolConnection<Postgres>,
}

/// Measures the WAL written between two points.
struct WalMeter {
    /// `None` where `pg_walinspect` or a replication slot is not available.
    own: Option<OwnRecords>,
}

impl WalMeter {
    async fn new(pool: &PgPool) -> Self {
        if let Err(error) = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            .execute(pool)
            .await
        {
            eprintln!("f: pg_walinspect is not available ({error}); server-wide WAL only");
            return WalMeter { own: None };
        }
        let oid: String = sqlx::query_scalar(
            "SELECT oid::text FROM pg_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .expect("the database's oid");
        WalMeter {
            own: Some(OwnRecords {
                blocks: format!("%/{oid}/%"),
                slot: format!("cqrs_bench_{}", Uuid::now_v7().simple()),
                conn: pool.acquire().await.expect("a connection for the slot"),
            }),
        }
    }

    /// Starts a measurement: reserves the WAL from here on (when counting own records) and
    /// returns the current WAL position.
    async fn start(&mut self, pool: &PgPool) -> String {
        if let Some(own) = &mut self.own {
            let reserved =
                sqlx::query("SELECT pg_create_physical_replication_slot($1, true, true)")
                    .bind(&own.slot)
                    .execute(&mut *own.conn)
                    .await;
            if let Err(error) = reserved {
                eprintln!("f: no replication slot ({error}); server-wide WAL only");
                self.own = None;
            }
        }
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await
            .expect("read the WAL position")
    }

    /// The bytes written since `before` by the whole server (`pg_wal_lsn_diff`), and by this
    /// database's records alone when they can be read.
    async fn since(&mut self, pool: &PgPool, before: &str) -> (f64, Option<f64>) {
        let (server, flushed): (f64, String) = sqlx::query_as(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8,
                    pg_current_wal_flush_lsn()::text",
        )
        .bind(before)
        .fetch_one(pool)
        .await
        .expect("measure the WAL written");
        let Some(own) = &mut self.own else {
            return (server, None);
        };
        let counted = sqlx::query_scalar(OWN_RECORDS)
            .bind(before)
            .bind(flushed)
            .bind(&own.blocks)
            .fetch_one(pool)
            .await;
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&own.slot)
            .execute(&mut *own.conn)
            .await
            .expect("drop the replication slot");
        match counted {
            Ok(bytes) => (server, Some(bytes)),
            Err(error) => {
                eprintln!("f: could not read the WAL records back: {error}");
                (server, None)
            }
        }
    }
}

/// `commands` one-event deposits through the bus.
async fn ours(bus: &Bus, commands: u64) {
    for n in 0..commands {
        bus.execute(Deposit {
            account: n % ACCOUNTS,
            amount: 1,
        })
        .await
        .expect("deposit");
    }
}

/// `commands` one-event deposits, each one INSERT with the state in memory.
async fn hand_written(pool: &PgPool, folded: &mut [Folded], commands: u64) {
    for n in 0..commands {
        let index = n % ACCOUNTS;
        let account = ACCOUNTS + index;
        let folded = &mut folded[usize::try_from(index).expect("index")];
        let event = folded
            .state
            .deposit(&Deposit { account, amount: 1 })
            .expect("deposit");
        let metadata = hand::command_metadata();
        hand::insert_one(
            pool,
            &stream_of(account),
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

/// Part f.
pub async fn run(settings: &Settings) {
    let db = BenchDb::create(settings.pool).await;
    let pool = db.pool.clone();
    let bus = CommandBus::builder(PostgresEventStore::new(pool.clone()))
        .aggregate::<Account>(())
        .build();
    let mut folded = vec![Folded::default(); usize::try_from(ACCOUNTS).expect("accounts")];
    for index in 0..ACCOUNTS {
        bus.execute(OpenAccount {
            account: index,
            owner: format!("owner {index}"),
        })
        .await
        .expect("open");
        let account = ACCOUNTS + index;
        let folded = &mut folded[usize::try_from(index).expect("index")];
        let event = folded
            .state
            .open(&OpenAccount {
                account,
                owner: format!("owner {account}"),
            })
            .expect("open");
        hand::insert_one(
            &pool,
            &stream_of(account),
            1,
            OPENED,
            &event,
            &hand::command_metadata(),
        )
        .await
        .expect("open");
        folded.state.on_opened(&event);
        folded.version = 1;
    }

    let mut meter = WalMeter::new(&pool).await;
    let commands = settings.wal_commands;
    let mut server = vec![Vec::new(); 2];
    let mut own = vec![Vec::new(); 2];
    for round in 0..settings.rounds {
        for variant in turns(round, 2) {
            let before = meter.start(&pool).await;
            if variant == OURS {
                ours(&bus, commands).await;
            } else {
                hand_written(&pool, &mut folded, commands).await;
            }
            let (all, mine) = meter.since(&pool, &before).await;
            // Counts here stay far below 2^52, where `f64` starts to round integers.
            #[allow(clippy::cast_precision_loss)]
            let per_event = |bytes: f64| bytes / commands as f64;
            server[variant].push(per_event(all));
            if let Some(mine) = mine {
                own[variant].push(per_event(mine));
            }
        }
    }
    let s: Vec<Option<Summary>> = server.iter().map(|b| Summary::of(b)).collect();
    let o: Vec<Option<Summary>> = own.iter().map(|b| Summary::of(b)).collect();
    println!(
        "## f. WAL bytes per event, {commands} one-event commands in sequence \
         (median (min–max) of {} rounds)\n\n\
         `pg_wal_lsn_diff` of `pg_current_wal_lsn()` counts the whole server's WAL, other \
         databases' writes included; the second column sums only this database's records \
         (`pg_walinspect`: records on its blocks and their transactions' commits).\n",
        settings.rounds
    );
    table(
        &[
            "variant",
            "WAL bytes/event, `pg_wal_lsn_diff`",
            "ours / this",
            "this database's WAL records, bytes/event",
            "ours / this",
        ],
        1,
        &[
            vec![
                "ours: `CommandBus` on `PostgresEventStore`".to_owned(),
                cell(s[OURS], 0),
                "1.00x".to_owned(),
                cell(o[OURS], 0),
                "1.00x".to_owned(),
            ],
            vec![
                "hand-written, one INSERT with version check".to_owned(),
                cell(s[HAND], 0),
                ratio(s[OURS], s[HAND]),
                cell(o[HAND], 0),
                ratio(o[OURS], o[HAND]),
            ],
        ],
    );
    db.drop_now().await;
}
