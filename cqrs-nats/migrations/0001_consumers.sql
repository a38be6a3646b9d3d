-- JetStream consumers feeding read models in this database.
--
-- `cqrs_nats_offsets`: per consumer, the last JetStream stream sequence applied (or passed
-- over) and the event id it carried. A sink moves it in the transaction that writes the read
-- model's rows, so the two never disagree; a redelivered message at or below it is skipped.
CREATE TABLE IF NOT EXISTS cqrs_nats_offsets (
    consumer        text        PRIMARY KEY,
    stream_sequence bigint      NOT NULL DEFAULT 0,
    event_id        uuid,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Poison messages parked under `PoisonPolicy::Park`: everything needed to look at them, or to
-- publish them again once fixed.
CREATE TABLE IF NOT EXISTS cqrs_nats_parked (
    consumer        text        NOT NULL,
    stream_sequence bigint      NOT NULL,
    subject         text        NOT NULL,
    event_id        uuid,
    event_type      text,
    headers         jsonb       NOT NULL,
    payload         bytea       NOT NULL,
    reason          text        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream_sequence)
);
