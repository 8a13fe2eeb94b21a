-- Core market-data tables. {schema} is the namespace's PostgreSQL schema (live: public).
-- Every table is a hypertable with 1-day chunks and a natural-key unique index, so that a
-- redelivered or replayed record is an idempotent upsert and never a duplicate row.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.ticks (
    ts          timestamptz      NOT NULL,  -- ts_event, µs precision (PostgreSQL's)
    venue       text             NOT NULL,
    symbol      text             NOT NULL,
    trade_id    bigint           NOT NULL,
    price       double precision NOT NULL,
    size        double precision NOT NULL,
    side        smallint         NOT NULL,  -- aggressor: 1 buy, -1 sell, 0 unknown
    ts_event_ns bigint           NOT NULL,  -- exact venue time, ns since the epoch
    ts_recv_ns  bigint           NOT NULL,  -- collector receipt time, ns
    seq         bigint,
    ingested_at timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('{schema}.ticks', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS ticks_natural_key
    ON {schema}.ticks (venue, symbol, trade_id, ts);

-- Exactly once in storage for trades. A hypertable's unique index must hold its time
-- column, so `ticks_natural_key` alone would store a trade id sent again with another
-- timestamp (a venue's re-send after a reconnect, a collector restarted) a second time.
-- This plain table's key has no time in it: the tick writer stores a trade only when its
-- id is new here, in the same transaction. Pruned with the ticks' retention.
CREATE TABLE IF NOT EXISTS {schema}.trade_ids (
    venue       text        NOT NULL,
    symbol      text        NOT NULL,
    trade_id    bigint      NOT NULL,
    ts          timestamptz NOT NULL,  -- the stored tick's time, for pruning
    PRIMARY KEY (venue, symbol, trade_id)
);
CREATE INDEX IF NOT EXISTS trade_ids_ts ON {schema}.trade_ids (ts);
-- A schema made before trade_ids existed: the ids of the ticks already stored.
INSERT INTO {schema}.trade_ids (venue, symbol, trade_id, ts)
SELECT DISTINCT ON (venue, symbol, trade_id) venue, symbol, trade_id, ts
FROM {schema}.ticks
WHERE NOT EXISTS (SELECT FROM {schema}.trade_ids)
ORDER BY venue, symbol, trade_id, ts
ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS {schema}.quotes (
    ts          timestamptz      NOT NULL,
    venue       text             NOT NULL,
    symbol      text             NOT NULL,
    bid_price   double precision NOT NULL,
    bid_size    double precision NOT NULL,
    ask_price   double precision NOT NULL,
    ask_size    double precision NOT NULL,
    ts_event_ns bigint           NOT NULL,
    ts_recv_ns  bigint           NOT NULL,
    seq         bigint           NOT NULL DEFAULT -1,
    ingested_at timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('{schema}.quotes', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS quotes_natural_key
    ON {schema}.quotes (venue, symbol, ts_event_ns, seq, ts);

CREATE TABLE IF NOT EXISTS {schema}.bars (
    ts          timestamptz      NOT NULL,  -- bar open time
    venue       text             NOT NULL,
    symbol      text             NOT NULL,
    timeframe   text             NOT NULL,  -- 1m 5m 15m 1h 1d
    open        double precision NOT NULL,
    high        double precision NOT NULL,
    low         double precision NOT NULL,
    close       double precision NOT NULL,
    volume      double precision NOT NULL,
    trades      bigint           NOT NULL,
    vwap        double precision,
    flags       smallint         NOT NULL DEFAULT 0,  -- 1 gap inside, 2 corrected after close
    updated_at  timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('{schema}.bars', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS bars_natural_key
    ON {schema}.bars (venue, symbol, timeframe, ts);

CREATE TABLE IF NOT EXISTS {schema}.gaps (
    ts          timestamptz NOT NULL,
    venue       text        NOT NULL,
    symbol      text        NOT NULL,
    reason      text        NOT NULL,
    ts_recv_ns  bigint      NOT NULL
);
SELECT create_hypertable('{schema}.gaps', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS gaps_natural_key ON {schema}.gaps (venue, symbol, ts);
