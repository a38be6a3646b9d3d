//! The names of attributes and attribute keys, compared against parsed idents and paths.

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// An attribute or key name.
#[derive(Copy, Clone, PartialEq, Eq)]
pub struct Symbol(pub &'static str);

pub const AGGREGATE: Symbol = Symbol("aggregate");
pub const ALIAS: Symbol = Symbol("alias");
pub const FROM: Symbol = Symbol("from");
pub const MANY: Symbol = Symbol("many");
pub const RAW: Symbol = Symbol("raw");
pub const UPCAST: Symbol = Symbol("upcast");
pub const WITH: Symbol = Symbol("with");
pub const COMMAND: Symbol = Symbol("command");
pub const COMMANDS: Symbol = Symbol("commands");
pub const CONTEXT: Symbol = Symbol("context");
pub const CRATE: Symbol = Symbol("crate");
pub const END: Symbol = Symbol("end");
pub const ERROR: Symbol = Symbol("error");
pub const EVENT: Symbol = Symbol("event");
pub const ID: Symbol = Symbol("id");
pub const IDEMPOTENCY_KEY: Symbol = Symbol("idempotency_key");
pub const IDEMPOTENT: Symbol = Symbol("idempotent");
pub const IGNORE: Symbol = Symbol("ignore");
pub const KEY: Symbol = Symbol("key");
pub const NAME: Symbol = Symbol("name");
pub const OUTPUT: Symbol = Symbol("output");
pub const PROJECTION: Symbol = Symbol("projection");
pub const QUERY: Symbol = Symbol("query");
pub const SAGA: Symbol = Symbol("saga");
pub const SERVICES: Symbol = Symbol("services");
pub const SNAPSHOT: Symbol = Symbol("snapshot");
pub const START: Symbol = Symbol("start");
pub const UNIQUE_KEYS: Symbol = Symbol("unique_keys");
pub const VALIDATE: Symbol = Symbol("validate");
pub const VERSION: Symbol = Symbol("version");

/// The handler markers consumed by `#[aggregate]`, `#[projection]` and `#[saga]`.
pub const COMMAND_HANDLER: Symbol = Symbol("command_handler");
pub const DEADLINE_HANDLER: Symbol = Symbol("deadline_handler");
pub const FAILURE_HANDLER: Symbol = Symbol("failure_handler");
pub const EVENT_HANDLER: Symbol = Symbol("event_handler");
pub const QUERY_HANDLER: Symbol = Symbol("query_handler");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}
