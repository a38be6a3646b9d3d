use cqrs_core::prelude::*;
use cqrs_core::{Command, Event, aggregate, saga};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placed {
    pub order: u32,
}

#[derive(Debug, Clone, Event)]
pub enum OrderEvent {
    Placed(Placed),
}

#[derive(Debug, Serialize, Deserialize, Command)]
#[command(aggregate = Order, id = order)]
pub struct Ship {
    pub order: u32,
}

#[derive(Debug, Default)]
pub struct Order;

#[aggregate(event = OrderEvent, error = std::convert::Infallible)]
impl Order {
    #[command_handler]
    fn ship(&self, _: &Ship) -> Result<(), std::convert::Infallible> {
        Ok(())
    }
    #[event_handler]
    fn on_placed(&mut self, _: &Placed) {}
}

#[derive(Default, Serialize, Deserialize)]
pub struct Shipping;

#[saga(commands(Ship))]
impl Shipping {
    #[event_handler(key = order, start)]
    fn on_placed(&mut self, placed: &Placed) -> Ship {
        Ship { order: placed.order }
    }
}

fn main() {}
