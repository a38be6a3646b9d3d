-- Idempotent commands: the outcome recorded under each (command name, key).
--
-- An append with an idempotency key (`EventStore::append_idempotent`) inserts its row in the
-- append's own transaction, so a key and the events of its execution commit together or not
-- at all. The primary key makes a second insert of a key wait for the first transaction and
-- then find the row: concurrent executions of one key have one winner. Rows stay until
-- `purge_idempotency_keys` deletes them (by `created_at`).
CREATE TABLE IF NOT EXISTS cqrs_idempotency (
    command_name text        NOT NULL,
    key          text        NOT NULL,
    body_hash    text        NOT NULL,
    stream_id    text        NOT NULL,
    result       jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (command_name, key)
);

CREATE INDEX IF NOT EXISTS cqrs_idempotency_created_at ON cqrs_idempotency (created_at);
