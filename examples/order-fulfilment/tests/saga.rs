//! The order saga's decisions, one message at a time, with the saga fixture: no store, no bus.

use cqrs_core::saga::CommandFailed;
use cqrs_core::testing::SagaFixture;
use order_fulfilment::domain::{
    CancelOrder, ChargePayment, ConfirmOrder, OrderCancelled, OrderPlaced, PaymentCaptured,
    ReleaseStock, ReserveStock, StockReserved,
};
use order_fulfilment::saga::{OrderFulfilment, PAYMENT_WINDOW, PaymentTimedOut};

fn placed() -> OrderPlaced {
    OrderPlaced {
        order_id: 7,
        sku: "tea".into(),
        quantity: 2,
        cents: 1_200,
        card: "4242".into(),
    }
}

fn reserved() -> StockReserved {
    StockReserved {
        sku: "tea".into(),
        order_id: 7,
        quantity: 2,
    }
}

fn charge() -> ChargePayment {
    ChargePayment {
        order_id: 7,
        cents: 1_200,
        card: "4242".into(),
    }
}

fn release() -> ReleaseStock {
    ReleaseStock {
        sku: "tea".into(),
        order_id: 7,
        quantity: 2,
    }
}

#[tokio::test]
async fn a_placed_order_reserves_stock() {
    SagaFixture::<OrderFulfilment>::new()
        .when(placed())
        .await
        .then_expect_commands(ReserveStock {
            sku: "tea".into(),
            order_id: 7,
            quantity: 2,
        });
}

#[tokio::test]
async fn reserved_stock_charges_the_payment_with_a_deadline() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .when(reserved())
        .await
        .then_expect_commands(charge())
        .then_expect_scheduled(PaymentTimedOut { order_id: 7 }, PAYMENT_WINDOW);
}

#[tokio::test]
async fn a_captured_payment_confirms_and_cancels_the_deadline() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .given(reserved())
        .await
        .when(PaymentCaptured {
            order_id: 7,
            cents: 1_200,
        })
        .await
        .then_expect_commands(ConfirmOrder { order_id: 7 })
        .then_expect_cancelled::<PaymentTimedOut>();
}

#[tokio::test]
async fn a_declined_payment_undoes_the_steps_last_first() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .given(reserved())
        .await
        .when_failed(CommandFailed::rejected(
            charge(),
            "payment_declined",
            "card 4242 was declined",
        ))
        .await
        .then_expect_commands((
            release(),
            CancelOrder {
                order_id: 7,
                reason: "payment declined".into(),
            },
        ))
        .then_expect_cancelled::<PaymentTimedOut>();
}

#[tokio::test]
async fn out_of_stock_cancels_the_order_only() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .when_failed(CommandFailed::rejected(
            ReserveStock {
                sku: "tea".into(),
                order_id: 7,
                quantity: 2,
            },
            "out_of_stock",
            "only 1 in stock",
        ))
        .await
        .then_expect_commands(CancelOrder {
            order_id: 7,
            reason: "stock: only 1 in stock".into(),
        });
}

#[tokio::test]
async fn no_payment_in_time_compensates() {
    let outcome = SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .given(reserved())
        .await
        .when_deadline(PaymentTimedOut { order_id: 7 })
        .await
        .then_expect_commands((
            release(),
            CancelOrder {
                order_id: 7,
                reason: "no payment in time".into(),
            },
        ));
    assert!(outcome.state().compensating);
}

#[tokio::test]
async fn a_payment_after_the_deadline_is_not_confirmed() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .given(reserved())
        .await
        .given_deadline(PaymentTimedOut { order_id: 7 })
        .await
        .when(PaymentCaptured {
            order_id: 7,
            cents: 1_200,
        })
        .await
        .then_expect_no_commands();
}

#[tokio::test]
async fn a_cancelled_order_ends_the_saga_and_later_events_are_ignored() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .given(OrderCancelled {
            order_id: 7,
            reason: "payment declined".into(),
        })
        .await
        .when(reserved())
        .await
        .then_expect_ignored();
}

#[tokio::test]
async fn another_orders_events_do_not_reach_this_instance() {
    SagaFixture::<OrderFulfilment>::new()
        .given(placed())
        .await
        .when(StockReserved {
            order_id: 8,
            ..reserved()
        })
        .await
        .then_expect_ignored();
}
