//! Consuming.
