-- Indicator values per closed bar (docs/ARCHITECTURE.md#indicators). {schema} as in core.sql. Created by the
-- indicator sink's writer. One row per (venue, symbol, timeframe, ts): a redelivered or
-- recomputed record replaces its row. NULL = the indicator is still warming up.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.indicators (
    ts          timestamptz      NOT NULL,  -- open time of the bar
    venue       text             NOT NULL,
    symbol      text             NOT NULL,
    timeframe   text             NOT NULL,  -- 1m 5m 15m 1h 1d
    flags       smallint         NOT NULL DEFAULT 0,  -- the bar's flags
    sma_20      double precision,
    sma_50      double precision,
    ema_9       double precision,
    ema_21      double precision,
    rsi         double precision,
    macd        double precision,
    macd_signal double precision,
    macd_hist   double precision,
    bb_upper    double precision,
    bb_middle   double precision,
    bb_lower    double precision,
    atr         double precision,
    vwap        double precision,
    trend       double precision,  -- -1, 0, +1
    vol_pct     double precision,
    vol_regime  double precision,  -- -1, 0, +1
    ts_emit_ns  bigint           NOT NULL,  -- when the indicators agent produced it
    updated_at  timestamptz      NOT NULL DEFAULT now()
);
SELECT create_hypertable('{schema}.indicators', 'ts',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
CREATE UNIQUE INDEX IF NOT EXISTS indicators_natural_key
    ON {schema}.indicators (venue, symbol, timeframe, ts);
