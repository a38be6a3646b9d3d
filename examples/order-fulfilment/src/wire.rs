//! The bus and the saga runner, on memory or on PostgreSQL.

use std::time::Duration;

use cqrs_core::saga::{InMemorySagaRunner, SagaInstance, SagaOptions};
use cqrs_core::{CommandBus, CommandBusBuilder, CommandBusOf, InMemoryEventStore};
use cqrs_postgres::PostgresEventStore;
use cqrs_postgres::saga::{SagaAdmin, SagaHandle, SagaRunner};
use sqlx::PgPool;

use crate::domain::{Inventory, Order, OrderEvent, Payment};
use crate::saga::OrderFulfilment;

/// The command bus of the shop: the same type on both stores.
pub type Bus = CommandBusOf![Order, Inventory, Payment];

/// How the saga runs.
enum Runner {
    Memory(InMemorySagaRunner<OrderFulfilment>),
    Postgres {
        handle: SagaHandle,
        admin: SagaAdmin<OrderFulfilment>,
    },
}

/// The shop: its bus and its saga runner.
pub struct Shop {
    /// The command bus.
    pub bus: Bus,
    runner: Runner,
}

/// Registers the three aggregates.
pub fn bus(builder: CommandBusBuilder<(), ()>) -> Bus {
    builder
        .aggregate::<Order>(())
        .aggregate::<Inventory>(())
        .aggregate::<Payment>(())
        .build()
}

impl Shop {
    /// The shop on the in-memory store.
    pub fn in_memory(options: SagaOptions) -> Self {
        let bus = bus(CommandBus::builder(InMemoryEventStore::new()));
        let runner = InMemorySagaRunner::with_options(&bus, options);
        Self {
            bus,
            runner: Runner::Memory(runner),
        }
    }

    /// The shop on the PostgreSQL database at `url` (migrated if needed), its saga running
    /// in the background.
    pub async fn postgres(
        url: &str,
        options: SagaOptions,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let pool = PgPool::connect(url).await?;
        Self::on_pool(&pool, options).await
    }

    /// The shop on `pool`'s database (migrated if needed).
    pub async fn on_pool(
        pool: &PgPool,
        options: SagaOptions,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::on_pool_with(pool, options, |runner| runner).await
    }

    /// [`on_pool`](Self::on_pool), with the saga runner configured by `configure` before it
    /// starts (an observer of its steps, in the crash tests).
    pub async fn on_pool_with(
        pool: &PgPool,
        options: SagaOptions,
        configure: impl FnOnce(SagaRunner<OrderFulfilment>) -> SagaRunner<OrderFulfilment>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        PostgresEventStore::migrate(pool).await?;
        let bus = bus(CommandBus::builder(PostgresEventStore::new(pool.clone())));
        let runner = SagaRunner::<OrderFulfilment>::new(pool, &bus)
            .options(options.clone())
            .lead_retry(Duration::from_millis(50));
        let handle = configure(runner).start().await?;
        let admin = SagaAdmin::new(pool.clone()).with_options(options);
        Ok(Self {
            bus,
            runner: Runner::Postgres { handle, admin },
        })
    }

    /// Waits until the saga has nothing left to do: every event handled, every command
    /// sent, every due deadline fired.
    pub async fn settle(&self) -> Result<(), Box<dyn std::error::Error>> {
        match &self.runner {
            Runner::Memory(runner) => {
                runner.run_until_idle().await?;
            }
            Runner::Postgres { admin, .. } => {
                if !admin.wait_idle(Duration::from_secs(30)).await? {
                    return Err("the saga did not settle within 30 s".into());
                }
            }
        }
        Ok(())
    }

    /// The saga instance of an order.
    pub async fn instance(&self, order_id: u64) -> Option<SagaInstance<OrderFulfilment>> {
        let key = order_id.to_string();
        match &self.runner {
            Runner::Memory(runner) => runner.instance(&key).await,
            Runner::Postgres { admin, .. } => admin.instance(&key).await.ok().flatten(),
        }
    }

    /// The PostgreSQL runner's handle (`None` on memory).
    pub fn handle(&self) -> Option<&SagaHandle> {
        match &self.runner {
            Runner::Memory(_) => None,
            Runner::Postgres { handle, .. } => Some(handle),
        }
    }

    /// Stops the saga runner.
    pub async fn stop(self) {
        if let Runner::Postgres { handle, .. } = self.runner {
            handle.shutdown().await;
        }
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
