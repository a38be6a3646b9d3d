-- Sagas: instances, the outbox of commands they send, their deadlines, and the messages
-- waiting behind a parked instance. A saga's checkpoint is the `cqrs_checkpoints` row named
-- `saga:<name>`.
--
-- A saga runner handles each event in one transaction that locks the checkpoint row, reads
-- and writes the instance, inserts the commands to send into the outbox, changes the
-- deadlines and moves the checkpoint. Commands are executed after that commit, each with
-- the idempotency key stored in its outbox row, and the row is deleted once the outcome is
-- known (a failure is handed back to the saga in the transaction that deletes the row).

CREATE TABLE IF NOT EXISTS cqrs_saga_instances (
    saga       text        NOT NULL,
    key        text        NOT NULL,
    -- NULL while the instance is parked on the message that was to start it.
    state      jsonb,
    status     text        NOT NULL CHECK (status IN ('active', 'parked', 'ended')),
    error      text,
    parked_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, key)
);

CREATE INDEX IF NOT EXISTS cqrs_saga_instances_parked
    ON cqrs_saga_instances (saga, key) WHERE status = 'parked';

CREATE TABLE IF NOT EXISTS cqrs_saga_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga       text        NOT NULL,
    instance   text        NOT NULL,
    -- The command: name, JSON body, idempotency key, correlation id.
    command    jsonb       NOT NULL,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text,
    not_before timestamptz NOT NULL DEFAULT '-infinity',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS cqrs_saga_outbox_by_saga ON cqrs_saga_outbox (saga, id);
-- An instance's commands in order: a later one waits while an earlier one is put off.
CREATE INDEX IF NOT EXISTS cqrs_saga_outbox_by_instance ON cqrs_saga_outbox (saga, instance, id);

CREATE TABLE IF NOT EXISTS cqrs_saga_deadlines (
    saga    text        NOT NULL,
    key     text        NOT NULL,
    name    text        NOT NULL,
    id      uuid        NOT NULL,
    payload jsonb       NOT NULL,
    due_at  timestamptz NOT NULL,
    PRIMARY KEY (saga, key, name)
);

CREATE INDEX IF NOT EXISTS cqrs_saga_deadlines_due ON cqrs_saga_deadlines (saga, due_at);

-- Messages (events, failures, deadlines) waiting, in `id` order, behind a parked instance.
CREATE TABLE IF NOT EXISTS cqrs_saga_inbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    saga       text        NOT NULL,
    key        text        NOT NULL,
    message    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS cqrs_saga_inbox_by_instance ON cqrs_saga_inbox (saga, key, id);
