use cqrs_core::prelude::*;
use cqrs_core::saga::InMemorySagaRunner;
use cqrs_core::{Command, Event, aggregate, saga};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    pub order: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charged {
    pub order: u32,
}

#[derive(Debug, Clone, Event)]
pub enum OrderEvent {
    Placed(Placed),
}

#[derive(Debug, Clone, Event)]
pub enum PaymentEvent {
    Charged(Charged),
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Payment, id = order, idempotent)]
pub struct Charge {
    pub order: u32,
}

#[derive(Debug, Default)]
pub struct Order;

#[aggregate(event = OrderEvent, error = std::convert::Infallible)]
impl Order {
    #[event_handler]
    fn on_placed(&mut self, _: &Placed) {}
}

#[derive(Debug, Default)]
pub struct Payment;

#[aggregate(event = PaymentEvent, error = std::convert::Infallible)]
impl Payment {
    #[command_handler]
    fn charge(&self, c: &Charge) -> Result<Charged, std::convert::Infallible> {
        Ok(Charged { order: c.order })
    }
    #[event_handler]
    fn on_charged(&mut self, _: &Charged) {}
}

#[derive(Default, Serialize, Deserialize)]
pub struct Checkout;

#[saga(commands(Charge))]
impl Checkout {
    #[event_handler(key = order, start)]
    fn on_placed(&mut self, placed: &Placed) -> Charge {
        Charge { order: placed.order }
    }
}

fn main() {
    // The payment aggregate, which handles `Charge`, is missing from the bus.
    let bus = CommandBus::builder(InMemoryEventStore::new())
        .aggregate::<Order>(())
        .build();
    let _runner = InMemorySagaRunner::<Checkout>::new(&bus);
}
