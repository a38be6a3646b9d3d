//! The three aggregates the saga coordinates: orders, stock per SKU, payments per order.

use cqrs_core::prelude::*;
use cqrs_core::{DomainError, aggregate};

// ---------------------------------------------------------------- orders

/// A customer placed an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// What was ordered.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The price, in cents.
    pub cents: u64,
    /// The card to charge.
    pub card: String,
}

/// The order is confirmed: stock reserved, payment captured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: u64,
}

/// The order is cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: u64,
    /// Why.
    pub reason: String,
}

/// The events of an order.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum OrderEvent {
    /// Placed.
    #[event(name = "order.placed")]
    Placed(OrderPlaced),
    /// Confirmed.
    #[event(name = "order.confirmed")]
    Confirmed(OrderConfirmed),
    /// Cancelled.
    #[event(name = "order.cancelled")]
    Cancelled(OrderCancelled),
}

/// Places an order (sent by the customer, not the saga).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Order, id = order_id, name = "order.place")]
pub struct PlaceOrder {
    /// The order.
    pub order_id: u64,
    /// What.
    pub sku: String,
    /// How many.
    pub quantity: u32,
    /// The price, in cents.
    pub cents: u64,
    /// The card to charge.
    pub card: String,
}

/// Confirms an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Order, id = order_id, name = "order.confirm", idempotent)]
pub struct ConfirmOrder {
    /// The order.
    pub order_id: u64,
}

/// Cancels an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Order, id = order_id, name = "order.cancel", idempotent)]
pub struct CancelOrder {
    /// The order.
    pub order_id: u64,
    /// Why.
    pub reason: String,
}

/// Why an order refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    /// The order id is taken.
    #[error("order already placed")]
    AlreadyPlaced,
    /// No such order.
    #[error("no such order")]
    NotPlaced,
    /// Confirmed or cancelled already.
    #[error("the order is closed")]
    Closed,
}

impl DomainError for OrderError {
    fn code(&self) -> &'static str {
        match self {
            OrderError::AlreadyPlaced => "order_already_placed",
            OrderError::NotPlaced => "order_not_placed",
            OrderError::Closed => "order_closed",
        }
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderStatus {
    /// Not placed.
    #[default]
    None,
    /// Placed, waiting.
    Placed,
    /// Confirmed.
    Confirmed,
    /// Cancelled.
    Cancelled,
}

/// An order.
#[derive(Debug, Default)]
pub struct Order {
    status: OrderStatus,
}

#[aggregate(event = OrderEvent, error = OrderError, name = "order")]
impl Order {
    #[command_handler]
    fn place(&self, cmd: &PlaceOrder) -> Result<OrderPlaced, OrderError> {
        if self.status != OrderStatus::None {
            return Err(OrderError::AlreadyPlaced);
        }
        Ok(OrderPlaced {
            order_id: cmd.order_id,
            sku: cmd.sku.clone(),
            quantity: cmd.quantity,
            cents: cmd.cents,
            card: cmd.card.clone(),
        })
    }

    #[command_handler]
    fn confirm(&self, cmd: &ConfirmOrder) -> Result<OrderConfirmed, OrderError> {
        match self.status {
            OrderStatus::None => Err(OrderError::NotPlaced),
            OrderStatus::Placed => Ok(OrderConfirmed {
                order_id: cmd.order_id,
            }),
            OrderStatus::Confirmed | OrderStatus::Cancelled => Err(OrderError::Closed),
        }
    }

    #[command_handler]
    fn cancel(&self, cmd: &CancelOrder) -> Result<OrderCancelled, OrderError> {
        match self.status {
            OrderStatus::None => Err(OrderError::NotPlaced),
            OrderStatus::Placed => Ok(OrderCancelled {
                order_id: cmd.order_id,
                reason: cmd.reason.clone(),
            }),
            OrderStatus::Confirmed | OrderStatus::Cancelled => Err(OrderError::Closed),
        }
    }

    #[event_handler]
    fn on_placed(&mut self, _: &OrderPlaced) {
        self.status = OrderStatus::Placed;
    }

    #[event_handler]
    fn on_confirmed(&mut self, _: &OrderConfirmed) {
        self.status = OrderStatus::Confirmed;
    }

    #[event_handler]
    fn on_cancelled(&mut self, _: &OrderCancelled) {
        self.status = OrderStatus::Cancelled;
    }
}

// ---------------------------------------------------------------- inventory

/// Stock arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockAdded {
    /// The SKU.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Stock is held for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The SKU.
    pub sku: String,
    /// For which order.
    pub order_id: u64,
    /// How many.
    pub quantity: u32,
}

/// Stock held for an order is free again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReleased {
    /// The SKU.
    pub sku: String,
    /// For which order.
    pub order_id: u64,
    /// How many.
    pub quantity: u32,
}

/// The events of a SKU's stock.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum InventoryEvent {
    /// Added.
    #[event(name = "inventory.added")]
    Added(StockAdded),
    /// Reserved.
    #[event(name = "inventory.reserved")]
    Reserved(StockReserved),
    /// Released.
    #[event(name = "inventory.released")]
    Released(StockReleased),
}

/// Adds stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory, id = sku, name = "inventory.add")]
pub struct AddStock {
    /// The SKU.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Holds stock for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory, id = sku, name = "inventory.reserve", idempotent)]
pub struct ReserveStock {
    /// The SKU.
    pub sku: String,
    /// For which order.
    pub order_id: u64,
    /// How many.
    pub quantity: u32,
}

/// Frees stock held for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Inventory, id = sku, name = "inventory.release", idempotent)]
pub struct ReleaseStock {
    /// The SKU.
    pub sku: String,
    /// For which order.
    pub order_id: u64,
    /// How many.
    pub quantity: u32,
}

/// Why the inventory refused a command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InventoryError {
    /// Not enough free stock.
    #[error("only {available} in stock")]
    OutOfStock {
        /// What is free.
        available: u32,
    },
    /// Nothing is held for this order.
    #[error("nothing is reserved for order {0}")]
    NotReserved(u64),
}

impl DomainError for InventoryError {
    fn code(&self) -> &'static str {
        match self {
            InventoryError::OutOfStock { .. } => "out_of_stock",
            InventoryError::NotReserved(_) => "not_reserved",
        }
    }
}

/// The stock of one SKU.
#[derive(Debug, Default)]
pub struct Inventory {
    available: u32,
    held: std::collections::BTreeMap<u64, u32>,
}

#[aggregate(event = InventoryEvent, error = InventoryError, name = "inventory")]
impl Inventory {
    #[command_handler]
    fn add(&self, cmd: &AddStock) -> Result<StockAdded, InventoryError> {
        Ok(StockAdded {
            sku: cmd.sku.clone(),
            quantity: cmd.quantity,
        })
    }

    #[command_handler]
    fn reserve(&self, cmd: &ReserveStock) -> Result<StockReserved, InventoryError> {
        if self.available < cmd.quantity {
            return Err(InventoryError::OutOfStock {
                available: self.available,
            });
        }
        Ok(StockReserved {
            sku: cmd.sku.clone(),
            order_id: cmd.order_id,
            quantity: cmd.quantity,
        })
    }

    #[command_handler]
    fn release(&self, cmd: &ReleaseStock) -> Result<StockReleased, InventoryError> {
        match self.held.get(&cmd.order_id) {
            Some(&quantity) => Ok(StockReleased {
                sku: cmd.sku.clone(),
                order_id: cmd.order_id,
                quantity,
            }),
            None => Err(InventoryError::NotReserved(cmd.order_id)),
        }
    }

    #[event_handler]
    fn on_added(&mut self, e: &StockAdded) {
        self.available += e.quantity;
    }

    #[event_handler]
    fn on_reserved(&mut self, e: &StockReserved) {
        self.available -= e.quantity;
        self.held.insert(e.order_id, e.quantity);
    }

    #[event_handler]
    fn on_released(&mut self, e: &StockReleased) {
        self.available += e.quantity;
        self.held.remove(&e.order_id);
    }
}

// ---------------------------------------------------------------- payments

/// The card was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    /// The order paid.
    pub order_id: u64,
    /// How much.
    pub cents: u64,
}

/// The card issuer asked the customer to authorise the charge; it is captured once they do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAwaitingAuthorisation {
    /// The order.
    pub order_id: u64,
    /// How much.
    pub cents: u64,
}

/// The events of an order's payment.
#[derive(Debug, Clone, PartialEq, Event)]
pub enum PaymentEvent {
    /// Captured.
    #[event(name = "payment.captured")]
    Captured(PaymentCaptured),
    /// Waiting for the customer.
    #[event(name = "payment.awaiting_authorisation")]
    AwaitingAuthorisation(PaymentAwaitingAuthorisation),
}

/// Charges the card of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Payment, id = order_id, name = "payment.charge", idempotent)]
pub struct ChargePayment {
    /// The order.
    pub order_id: u64,
    /// How much.
    pub cents: u64,
    /// The card.
    pub card: String,
}

/// The customer authorised a pending charge (sent by the card issuer's callback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
#[command(aggregate = Payment, id = order_id, name = "payment.authorise")]
pub struct AuthorisePayment {
    /// The order.
    pub order_id: u64,
}

/// Why a payment was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PaymentError {
    /// The issuer declined the card.
    #[error("card {0} was declined")]
    Declined(String),
    /// Nothing waits for authorisation.
    #[error("no charge awaits authorisation")]
    NothingPending,
    /// Charged already.
    #[error("already charged")]
    AlreadyCharged,
}

impl DomainError for PaymentError {
    fn code(&self) -> &'static str {
        match self {
            PaymentError::Declined(_) => "payment_declined",
            PaymentError::NothingPending => "nothing_pending",
            PaymentError::AlreadyCharged => "already_charged",
        }
    }
}

/// The card numbers of the example's pretend issuer: this one is always declined.
pub const DECLINED_CARD: &str = "4000-0000-0000-0002";
/// This one asks the customer to authorise the charge first.
pub const AUTHORISE_CARD: &str = "4000-0027-6000-3184";

/// The payment of one order.
#[derive(Debug, Default)]
pub struct Payment {
    pending: Option<u64>,
    captured: bool,
}

#[aggregate(event = PaymentEvent, error = PaymentError, name = "payment")]
impl Payment {
    #[command_handler]
    fn charge(&self, cmd: &ChargePayment) -> Result<PaymentEvent, PaymentError> {
        if self.captured || self.pending.is_some() {
            return Err(PaymentError::AlreadyCharged);
        }
        match cmd.card.as_str() {
            DECLINED_CARD => Err(PaymentError::Declined(cmd.card.clone())),
            AUTHORISE_CARD => Ok(PaymentEvent::AwaitingAuthorisation(
                PaymentAwaitingAuthorisation {
                    order_id: cmd.order_id,
                    cents: cmd.cents,
                },
            )),
            _ => Ok(PaymentEvent::Captured(PaymentCaptured {
                order_id: cmd.order_id,
                cents: cmd.cents,
            })),
        }
    }

    #[command_handler]
    fn authorise(&self, cmd: &AuthorisePayment) -> Result<PaymentCaptured, PaymentError> {
        match (self.pending, self.captured) {
            (Some(cents), false) => Ok(PaymentCaptured {
                order_id: cmd.order_id,
                cents,
            }),
            _ => Err(PaymentError::NothingPending),
        }
    }

    #[event_handler]
    fn on_captured(&mut self, _: &PaymentCaptured) {
        self.captured = true;
        self.pending = None;
    }

    #[event_handler]
    fn on_awaiting(&mut self, e: &PaymentAwaitingAuthorisation) {
        self.pending = Some(e.cents);
    }
}
