use cqrs_core::{Event, aggregate};

#[derive(Debug, Clone, Event)]
pub enum DoorEvent {
    Opened,
    Closed,
}

#[derive(Debug, thiserror::Error)]
#[error("the door is stuck")]
pub struct Stuck;

#[derive(Debug, Default)]
pub struct Door {
    open: bool,
}

#[aggregate(event = DoorEvent, error = Stuck)]
impl Door {
    #[event_handler(Opened)]
    fn on_opened(&mut self) {
        self.open = true;
    }

    #[event_handler(Clsoed)]
    fn on_closed(&mut self) {
        self.open = false;
    }
}

fn main() {}
