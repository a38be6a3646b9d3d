-- Unique keys across aggregates ("set validation"): which stream holds each key.
--
-- An append that claims or releases keys (`EventStore::append_with_keys`) changes this table
-- in its own transaction, so a key and the events that claimed it commit together. The
-- primary key makes a second stream's claim of a held key wait for the holder's transaction
-- and then fail: concurrent claims of one key have one winner.
CREATE TABLE IF NOT EXISTS cqrs_unique_keys (
    namespace text NOT NULL,
    value     text NOT NULL,
    stream_id text NOT NULL,
    PRIMARY KEY (namespace, value)
);
