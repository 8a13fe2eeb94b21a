-- Bitspace damping outputs and trained path libraries (docs/ARCHITECTURE.md#tables, docs/ARCHITECTURE.md#bitspace-damping). {schema} as in core.sql.
-- Kept out of core.sql: created by their own writers (the signal sink, `sepstream train`).
CREATE SCHEMA IF NOT EXISTS {schema};

-- One row per instrument window: the §5.7 outputs for the W closes ending at bar `ts`.
-- Natural key (venue, symbol, timeframe, ts): a recomputed window (a corrected bar, a
-- replay, a redelivery) replaces its row instead of adding one.
CREATE TABLE IF NOT EXISTS {schema}.signals (
    ts              timestamptz      NOT NULL,  -- open time of the window's last bar
    venue           text             NOT NULL,
    symbol          text             NOT NULL,
    timeframe       text             NOT NULL,
    window_size     integer          NOT NULL,  -- W, closes in the window
    entropy         double precision NOT NULL,
    coherence       double precision NOT NULL,
    stability       double precision NOT NULL,
    lam             double precision NOT NULL,
    value           double precision NOT NULL,
    confidence      double precision NOT NULL,
    iterations      smallint         NOT NULL,
    converged       boolean          NOT NULL,
    collapse        boolean          NOT NULL,
    library_version text             NOT NULL,
    backend         text             NOT NULL,  -- numpy | cupy
    ts_emit_ns      bigint           NOT NULL,  -- when the damping agent produced it
    updated_at      timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('{schema}.signals', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS signals_natural_key
    ON {schema}.signals (venue, symbol, timeframe, ts);

-- Reference path libraries built by `sepstream train`; the newest is published on the
-- compacted md.model.paths topic. `paths` is the (k, T+1) matrix of unit-length centroids.
CREATE TABLE IF NOT EXISTS {schema}.path_library (
    created_at  timestamptz        NOT NULL,
    version     text               NOT NULL,  -- <UTC timestamp>-<content hash>
    params      jsonb              NOT NULL,  -- training parameters and statistics
    paths       double precision[] NOT NULL   -- k rows of T+1 values
);
SELECT create_hypertable('{schema}.path_library', 'created_at',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS path_library_natural_key
    ON {schema}.path_library (version, created_at);
