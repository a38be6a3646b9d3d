//! The order saga: reserve stock, then charge the payment, then confirm the order; undo the
//! steps done, last first, when a later one fails or payment does not arrive in time.

use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::saga::{CommandFailed, SagaContext};

use crate::domain::{
    CancelOrder, ChargePayment, ConfirmOrder, OrderCancelled, OrderConfirmed, OrderPlaced,
    PaymentCaptured, ReleaseStock, ReserveStock, StockReserved,
};

/// How long a customer has to pay once the stock is held.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Fires when an order's payment has not arrived within [`PAYMENT_WINDOW`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentTimedOut {
    /// The order.
    pub order_id: u64,
}

/// A step the saga completed, with what undoing it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// The order was placed (undone by cancelling it).
    Placed,
    /// Stock was held (undone by releasing it).
    StockReserved {
        /// The SKU.
        sku: String,
        /// How many.
        quantity: u32,
    },
}

/// The state of one order's fulfilment.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderFulfilment {
    /// The order.
    pub order_id: u64,
    /// What to charge.
    pub cents: u64,
    /// Which card.
    pub card: String,
    /// The steps completed so far, in order.
    pub done: Vec<Step>,
    /// Set once the saga started undoing.
    pub compensating: bool,
}

impl OrderFulfilment {
    /// Undoes the completed steps, the last one first.
    fn compensate(&mut self, reason: &str, ctx: &mut SagaContext<Self>) {
        self.compensating = true;
        for step in self.done.iter().rev() {
            match step {
                Step::StockReserved { sku, quantity } => ctx.send(ReleaseStock {
                    sku: sku.clone(),
                    order_id: self.order_id,
                    quantity: *quantity,
                }),
                Step::Placed => ctx.send(CancelOrder {
                    order_id: self.order_id,
                    reason: reason.to_owned(),
                }),
            }
        }
        ctx.cancel::<PaymentTimedOut>();
    }
}

#[saga(
    name = "order-fulfilment",
    commands(ReserveStock, ChargePayment, ConfirmOrder, ReleaseStock, CancelOrder)
)]
impl OrderFulfilment {
    #[event_handler(key = order_id, start)]
    fn on_placed(&mut self, placed: &OrderPlaced) -> ReserveStock {
        self.order_id = placed.order_id;
        self.cents = placed.cents;
        self.card.clone_from(&placed.card);
        self.done.push(Step::Placed);
        ReserveStock {
            sku: placed.sku.clone(),
            order_id: placed.order_id,
            quantity: placed.quantity,
        }
    }

    #[event_handler(key = order_id)]
    fn on_stock_reserved(
        &mut self,
        reserved: &StockReserved,
        ctx: &mut SagaContext<Self>,
    ) -> ChargePayment {
        self.done.push(Step::StockReserved {
            sku: reserved.sku.clone(),
            quantity: reserved.quantity,
        });
        ctx.schedule(
            PaymentTimedOut {
                order_id: self.order_id,
            },
            PAYMENT_WINDOW,
        );
        ChargePayment {
            order_id: self.order_id,
            cents: self.cents,
            card: self.card.clone(),
        }
    }

    #[event_handler(key = order_id)]
    fn on_payment_captured(
        &mut self,
        _: &PaymentCaptured,
        ctx: &mut SagaContext<Self>,
    ) -> Option<ConfirmOrder> {
        ctx.cancel::<PaymentTimedOut>();
        // Payment that arrives after the deadline cancelled the order is not confirmed (a
        // refund process would take it from here).
        (!self.compensating).then_some(ConfirmOrder {
            order_id: self.order_id,
        })
    }

    #[event_handler(key = order_id, end)]
    fn on_confirmed(&mut self, _: &OrderConfirmed) {}

    #[event_handler(key = order_id, end)]
    fn on_cancelled(&mut self, _: &OrderCancelled) {}

    #[failure_handler]
    fn on_reserve_failed(
        &mut self,
        failed: &CommandFailed<ReserveStock>,
        ctx: &mut SagaContext<Self>,
    ) {
        self.compensate(&format!("stock: {}", failed.message), ctx);
    }

    #[failure_handler]
    fn on_charge_failed(
        &mut self,
        failed: &CommandFailed<ChargePayment>,
        ctx: &mut SagaContext<Self>,
    ) {
        let reason = match failed.domain_code.as_deref() {
            Some("payment_declined") => "payment declined".to_owned(),
            _ => format!("payment failed: {}", failed.message),
        };
        self.compensate(&reason, ctx);
    }

    #[deadline_handler]
    fn on_payment_timed_out(&mut self, _: &PaymentTimedOut, ctx: &mut SagaContext<Self>) {
        self.compensate("no payment in time", ctx);
    }
}
