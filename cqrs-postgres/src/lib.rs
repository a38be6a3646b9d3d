//! PostgreSQL event store for `cqrs-core` (in progress).
