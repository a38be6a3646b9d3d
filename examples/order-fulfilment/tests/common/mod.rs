//! The order stories every test tells, on either store, and a fresh PostgreSQL database per
//! test (dropped afterwards).
#![allow(dead_code)]

use std::str::FromStr;
use std::time::Duration;

use cqrs_core::GlobalPosition;
use order_fulfilment::domain::{
    AUTHORISE_CARD, AddStock, DECLINED_CARD, InventoryEvent, OrderEvent, PaymentEvent, PlaceOrder,
};
use order_fulfilment::wire::Bus;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The server tests run against.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let admin_options = PgConnectOptions::from_str(&admin_url())
            .expect("DATABASE_URL")
            .disable_statement_logging();
        let mut admin = PgConnection::connect_with(&admin_options)
            .await
            .expect("reach PostgreSQL");
        let name = format!("cqrs_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        let pool = connect(&name).await;
        TestDb { pool, name }
    }
}

/// A pool on the test database `name`.
pub async fn connect(name: &str) -> PgPool {
    let options = PgConnectOptions::from_str(&admin_url())
        .expect("DATABASE_URL")
        .disable_statement_logging()
        .database(name);
    PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect to the test database")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let admin_options = PgConnectOptions::from_str(&admin_url())
                    .expect("url")
                    .disable_statement_logging();
                let mut admin = PgConnection::connect_with(&admin_options).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
    }
}

/// The three orders of a story: fulfilled, declined, timed out.
#[derive(Debug, Clone, Copy)]
pub struct Orders {
    pub happy: u64,
    pub declined: u64,
    pub timed_out: u64,
}

impl Orders {
    pub fn starting_at(base: u64) -> Self {
        Self {
            happy: base + 1,
            declined: base + 2,
            timed_out: base + 3,
        }
    }
}

/// Adds stock (once per database) and places the three orders.
pub async fn place(bus: &Bus, orders: Orders, with_timeout: bool) {
    bus.execute(AddStock {
        sku: "tea".into(),
        quantity: 1_000,
    })
    .await
    .expect("stock");
    let mut cards = vec![
        (orders.happy, "4242-4242-4242-4242"),
        (orders.declined, DECLINED_CARD),
    ];
    if with_timeout {
        cards.push((orders.timed_out, AUTHORISE_CARD));
    }
    for (order_id, card) in cards {
        bus.execute(PlaceOrder {
            order_id,
            sku: "tea".into(),
            quantity: 2,
            cents: 1_200,
            card: card.into(),
        })
        .await
        .expect("place");
    }
}

/// How long the payment window is, plus a minute.
pub const PAST_THE_WINDOW: Duration =
    Duration::from_secs(order_fulfilment::saga::PAYMENT_WINDOW.as_secs() + 60);

/// What the store holds about one order: the order's events, and the inventory and payment
/// events for it, by type name.
pub async fn effects(bus: &Bus, order_id: u64) -> Vec<String> {
    let events = bus
        .store()
        .read_all_from(GlobalPosition::START, usize::MAX)
        .await
        .expect("read");
    let mut found = Vec::new();
    for event in events {
        let about = if let Ok(e) = event.decode::<OrderEvent>() {
            match e {
                OrderEvent::Placed(p) => (p.order_id, "order.placed".to_owned()),
                OrderEvent::Confirmed(c) => (c.order_id, "order.confirmed".to_owned()),
                OrderEvent::Cancelled(c) => (c.order_id, format!("order.cancelled: {}", c.reason)),
            }
        } else if let Ok(e) = event.decode::<InventoryEvent>() {
            match e {
                InventoryEvent::Added(_) => continue,
                InventoryEvent::Reserved(r) => (r.order_id, "inventory.reserved".to_owned()),
                InventoryEvent::Released(r) => (r.order_id, "inventory.released".to_owned()),
            }
        } else if let Ok(e) = event.decode::<PaymentEvent>() {
            match e {
                PaymentEvent::Captured(c) => (c.order_id, "payment.captured".to_owned()),
                PaymentEvent::AwaitingAuthorisation(a) => {
                    (a.order_id, "payment.awaiting_authorisation".to_owned())
                }
            }
        } else {
            continue;
        };
        if about.0 == order_id {
            found.push(about.1);
        }
    }
    found
}

/// Asserts that each step's effect, and each compensation, happened exactly once.
pub async fn assert_exactly_once(bus: &Bus, orders: Orders, with_timeout: bool, context: &str) {
    assert_eq!(
        effects(bus, orders.happy).await,
        [
            "order.placed",
            "inventory.reserved",
            "payment.captured",
            "order.confirmed"
        ],
        "{context}: the fulfilled order"
    );
    assert_eq!(
        effects(bus, orders.declined).await,
        [
            "order.placed",
            "inventory.reserved",
            "inventory.released",
            "order.cancelled: payment declined"
        ],
        "{context}: the declined order, compensated last step first"
    );
    if with_timeout {
        assert_eq!(
            effects(bus, orders.timed_out).await,
            [
                "order.placed",
                "inventory.reserved",
                "payment.awaiting_authorisation",
                "inventory.released",
                "order.cancelled: no payment in time"
            ],
            "{context}: the order whose payment did not arrive"
        );
    }
}
