//! Tells three orders' stories: one fulfilled, one whose payment is declined (the stock is
//! released and the order cancelled), one whose payment never arrives (the deadline cancels
//! it). On the in-memory store by default, on PostgreSQL when `DATABASE_URL` is set.

use std::error::Error;
use std::time::Duration;

use cqrs_core::GlobalPosition;
use cqrs_core::middleware::ManualClock;
use cqrs_core::saga::SagaOptions;
use order_fulfilment::domain::{AUTHORISE_CARD, AddStock, DECLINED_CARD, PlaceOrder};
use order_fulfilment::saga::PAYMENT_WINDOW;
use order_fulfilment::wire::Shop;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let clock = ManualClock::new();
    let options = SagaOptions::default().clock(clock.clone());
    let shop = if let Ok(url) = std::env::var("DATABASE_URL") {
        println!("on PostgreSQL");
        Shop::postgres(&url, options.poll_interval(Duration::from_millis(50))).await?
    } else {
        println!("in memory");
        Shop::in_memory(options)
    };
    // Order ids unique per run, so that runs on one database do not collide.
    let base = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )? * 10;
    let mut seen = shop
        .bus
        .store()
        .read_all_from(GlobalPosition::START, usize::MAX)
        .await?
        .last()
        .map_or(GlobalPosition::START, |e| e.position);

    shop.bus
        .execute(AddStock {
            sku: "tea".into(),
            quantity: 10,
        })
        .await?;

    println!("\n1. a fulfilled order");
    place(&shop, base + 1, "4242-4242-4242-4242").await?;
    shop.settle().await?;
    story(&shop, &mut seen).await?;
    println!("   -> {}", shop.order_status(base + 1).await);

    println!("\n2. a declined payment: the stock is released, then the order cancelled");
    place(&shop, base + 2, DECLINED_CARD).await?;
    shop.settle().await?;
    story(&shop, &mut seen).await?;
    println!("   -> {}", shop.order_status(base + 2).await);

    println!("\n3. no payment in time: the deadline cancels");
    place(&shop, base + 3, AUTHORISE_CARD).await?;
    shop.settle().await?;
    story(&shop, &mut seen).await?;
    println!(
        "   ... {} pass",
        humanize(PAYMENT_WINDOW + Duration::from_secs(60))
    );
    clock.advance(PAYMENT_WINDOW + Duration::from_secs(60));
    shop.settle().await?;
    story(&shop, &mut seen).await?;
    println!("   -> {}", shop.order_status(base + 3).await);
    shop.stop().await;
    Ok(())
}

async fn place(shop: &Shop, order_id: u64, card: &str) -> Result<(), Box<dyn Error>> {
    shop.bus
        .execute(PlaceOrder {
            order_id,
            sku: "tea".into(),
            quantity: 2,
            cents: 1_200,
            card: card.into(),
        })
        .await?;
    Ok(())
}

/// Prints the events recorded since `seen`.
async fn story(shop: &Shop, seen: &mut GlobalPosition) -> Result<(), Box<dyn Error>> {
    for event in shop.bus.store().read_all_from(*seen, usize::MAX).await? {
        let by = if event.metadata.extra.contains_key("saga") {
            "saga"
        } else {
            "customer"
        };
        println!(
            "   {:<8} {:<32} {:<28} {}",
            by, event.event_type, event.stream_id, event.payload
        );
        *seen = event.position;
    }
    Ok(())
}

fn humanize(d: Duration) -> String {
    format!("{} minutes", d.as_secs() / 60)
}
