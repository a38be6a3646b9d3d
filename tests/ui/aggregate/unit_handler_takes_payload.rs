use cqrs_core::{Event, aggregate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}

#[derive(Debug, Clone, Event)]
pub enum DoorEvent {
    Opened(Opened),
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
    fn on_opened(&mut self, _: &Opened) {
        self.open = true;
    }
}

fn main() {}
