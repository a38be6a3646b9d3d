//! Durable, checkpointed subscriptions.
