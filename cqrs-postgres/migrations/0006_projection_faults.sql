-- Projections in production: the streams a subscription parked, the events held behind them,
-- and the events it skipped.
--
-- A subscription whose fault policy parks a failing event marks the event's stream parked
-- and keeps the event, and every later event of that stream it reads, in
-- `cqrs_parked_events`, in the transaction that moves its checkpoint past them (the batch's
-- transaction for a transactional projection, the checkpoint's transaction for an
-- at-least-once subscriber). The global checkpoint goes on; other streams stay live. A
-- retry (requested by an operator) replays the held events in `(tx, position)` order before
-- the stream is live again.
--
-- Held events are references to `cqrs_events` (which is never updated): a retry reads them
-- back from there.

CREATE TABLE IF NOT EXISTS cqrs_parked_streams (
    subscription    text        NOT NULL,
    stream_id       text        NOT NULL,
    -- What the failing event's handler reported, and where that event is.
    error           text        NOT NULL,
    failed_position bigint      NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    -- An operator's request, carried out by the running subscription: 'retry' replays the
    -- held events; 'skip' records the failed one as skipped, then replays the others.
    request         text        CHECK (request IN ('retry', 'skip')),
    PRIMARY KEY (subscription, stream_id)
);

CREATE TABLE IF NOT EXISTS cqrs_parked_events (
    subscription text   NOT NULL,
    stream_id    text   NOT NULL,
    tx           xid8   NOT NULL,
    position     bigint NOT NULL,
    event_id     uuid   NOT NULL,
    event_type   text   NOT NULL,
    PRIMARY KEY (subscription, stream_id, tx, position)
);

-- Every event a subscription passed without applying it: by its fault policy ('policy') or
-- by an operator's skip of a parked stream ('operator'). Never deleted by the framework.
CREATE TABLE IF NOT EXISTS cqrs_skipped_events (
    subscription text        NOT NULL,
    tx           xid8        NOT NULL,
    position     bigint      NOT NULL,
    stream_id    text        NOT NULL,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    error        text        NOT NULL,
    skipped_by   text        NOT NULL CHECK (skipped_by IN ('policy', 'operator')),
    skipped_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, tx, position)
);
