-- Durable subscriptions: one checkpoint per named subscription.
--
-- A checkpoint is a point in the global order `(tx, position)` of `cqrs_events`: every event at
-- or before it has been processed (or passed over because the subscription does not handle its
-- type). The initial checkpoint `('0', 0)` precedes every event, since real transaction ids
-- start at 3.
--
-- A transactional projection updates its read-model rows and this row in one transaction, so
-- the two can never disagree; at-least-once subscribers update it after their side effects.
CREATE TABLE IF NOT EXISTS cqrs_checkpoints (
    name       text        PRIMARY KEY,
    tx         xid8        NOT NULL DEFAULT '0',
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
