//! An order service whose saga coordinates three aggregates: it reserves stock, charges the
//! payment and confirms the order; a declined payment releases the stock and cancels the
//! order (the steps undone last first); a payment that does not arrive in time cancels by a
//! deadline. It runs on the in-memory store or on PostgreSQL with one wiring.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use order_fulfilment::domain::{AddStock, PlaceOrder};
//! use order_fulfilment::wire::Shop;
//!
//! let shop = Shop::in_memory(Default::default());
//! shop.bus.execute(AddStock { sku: "tea".into(), quantity: 5 }).await.unwrap();
//! shop.bus
//!     .execute(PlaceOrder { order_id: 1, sku: "tea".into(), quantity: 2, cents: 900, card: "4242".into() })
//!     .await
//!     .unwrap();
//! shop.settle().await.unwrap();
//! assert_eq!(shop.order_status(1).await, "confirmed");
//! # }
//! ```

pub mod domain;
pub mod saga;
pub mod wire;
