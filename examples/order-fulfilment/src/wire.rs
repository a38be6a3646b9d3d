//! The bus and the saga runner, on memory.

use cqrs_core::saga::{InMemorySagaRunner, SagaOptions};
use cqrs_core::{CommandBus, CommandBusOf, InMemoryEventStore, Repository};

use crate::domain::{Inventory, Order, OrderEvent, Payment};
use crate::saga::OrderFulfilment;

/// The command bus of the shop.
pub type Bus = CommandBusOf![Order, Inventory, Payment];

/// The shop: its bus and its saga runner.
pub struct Shop {
    /// The command bus.
    pub bus: Bus,
    runner: InMemorySagaRunner<OrderFulfilment>,
}

impl Shop {
    /// The shop on the in-memory store.
    pub fn in_memory(options: SagaOptions) -> Self {
        let bus = Self::bus(CommandBus::builder(InMemoryEventStore::new()));
        let runner = InMemorySagaRunner::with_options(&bus, options);
        Self { bus, runner }
    }

    /// Registers the three aggregates.
    pub fn bus(builder: cqrs_core::CommandBusBuilder<(), ()>) -> Bus {
        builder
            .aggregate::<Order>(())
            .aggregate::<Inventory>(())
            .aggregate::<Payment>(())
            .build()
    }

    /// Runs the saga until nothing is left to do: every event handled, every command sent,
    /// every due deadline fired.
    pub async fn settle(&self) -> Result<(), cqrs_core::saga::SagaRunError> {
        self.runner.run_until_idle().await.map(|_| ())
    }

    /// Stops the saga runner.
    pub async fn stop(self) {}

    /// The in-memory runner.
    pub fn memory(&self) -> Option<&InMemorySagaRunner<OrderFulfilment>> {
        Some(&self.runner)
    }

    /// `placed`, `confirmed`, `cancelled: reason`, or `none`: read from the order's events.
    pub async fn order_status(&self, order_id: u64) -> String {
        let stream = cqrs_core::stream_id::<Order>(&order_id.to_string());
        let events = self
            .bus
            .store()
            .load_stream(&stream, 1)
            .await
            .unwrap_or_default();
        let mut status = "none".to_owned();
        for event in events {
            status = match event.decode::<OrderEvent>() {
                Ok(OrderEvent::Placed(_)) => "placed".to_owned(),
                Ok(OrderEvent::Confirmed(_)) => "confirmed".to_owned(),
                Ok(OrderEvent::Cancelled(c)) => format!("cancelled: {}", c.reason),
                Err(error) => format!("unreadable: {error}"),
            };
        }
        status
    }
}

// `Repository` appears in the bus type `CommandBusOf!` expands to.
#[allow(unused_imports)]
use Repository as _;
