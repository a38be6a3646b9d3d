-- cqrs-postgres schema, version 1: events, streams and snapshots.
--
-- Every object is created IF NOT EXISTS, so running this file twice is harmless. Names are
-- unqualified: the tables go into the first schema of the connection's search_path.

-- Every event ever appended, in one table.
--
-- `position` is the global position (assigned at insert, so it can commit out of order);
-- `tx` is the id of the writing transaction. The global order readers follow is
-- (tx, position): see the crate documentation for why.
CREATE TABLE IF NOT EXISTS cqrs_events (
    position       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx             xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id      text        NOT NULL CHECK (stream_id <> ''),
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version >= 0),
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cqrs_events_event_id_key UNIQUE (event_id),
    -- Also the index `load_stream` reads.
    CONSTRAINT cqrs_events_stream_id_stream_version_key UNIQUE (stream_id, stream_version)
);

-- The global order: `read_all_from` scans this index with a row-value comparison.
CREATE INDEX IF NOT EXISTS cqrs_events_tx_position_idx ON cqrs_events (tx, position);

-- The current version of each stream and the transaction that last appended to it.
--
-- An append updates (or inserts) its stream's row with the version check in the same
-- statement, so the row lock serializes writers of one stream and no one else.
CREATE TABLE IF NOT EXISTS cqrs_streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version > 0),
    last_tx   xid8   NOT NULL
);

-- The latest snapshot of each stream; an older snapshot never replaces a newer one.
CREATE TABLE IF NOT EXISTS cqrs_snapshots (
    stream_id      text        PRIMARY KEY,
    stream_version bigint      NOT NULL CHECK (stream_version >= 0),
    schema_version integer     NOT NULL CHECK (schema_version >= 0),
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
