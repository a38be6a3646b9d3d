//! The three stories on the in-memory store and on PostgreSQL: one wiring, one outcome.

mod common;

use common::{Orders, PAST_THE_WINDOW, TestDb, assert_exactly_once, place};
use cqrs_core::middleware::ManualClock;
use cqrs_core::saga::{InstanceStatus, SagaOptions};
use order_fulfilment::wire::Shop;
use std::time::Duration;

async fn tell(shop: &Shop, clock: &ManualClock) {
    let orders = Orders::starting_at(100);
    place(&shop.bus, orders, true).await;
    shop.settle().await.expect("settle");
    assert_eq!(shop.order_status(orders.happy).await, "confirmed");
    assert_eq!(
        shop.order_status(orders.declined).await,
        "cancelled: payment declined"
    );
    assert_eq!(shop.order_status(orders.timed_out).await, "placed");
    // The customer has not authorised the payment; fifteen minutes pass.
    clock.advance(PAST_THE_WINDOW);
    shop.settle().await.expect("settle");
    assert_eq!(
        shop.order_status(orders.timed_out).await,
        "cancelled: no payment in time"
    );
    assert_exactly_once(&shop.bus, orders, true, "story").await;
    for order in [orders.happy, orders.declined, orders.timed_out] {
        let instance = shop.instance(order).await.expect("instance");
        assert_eq!(instance.status, InstanceStatus::Ended, "order {order}");
    }
}

#[tokio::test]
async fn the_stories_on_memory() {
    let clock = ManualClock::new();
    let shop = Shop::in_memory(SagaOptions::default().clock(clock.clone()));
    tell(&shop, &clock).await;
}

#[tokio::test]
async fn the_stories_on_postgres() {
    let db = TestDb::create().await;
    let clock = ManualClock::new();
    let shop = Shop::on_pool(
        &db.pool,
        SagaOptions::default()
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(20)),
    )
    .await
    .expect("shop");
    tell(&shop, &clock).await;
    shop.stop().await;
}
