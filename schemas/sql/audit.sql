-- Audit trail of admin actions (replay, train, offset resets, subscription changes, db-init).
-- {schema} as in core.sql. Append-only for the writer role: INSERT and SELECT, never UPDATE or
-- DELETE (schemas/ddl.py grants). A plain table: small, and kept whole.
CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.audit_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts        timestamptz NOT NULL DEFAULT now(),
    action    text        NOT NULL,  -- replay | train | offset-reset | subscription | db-init ...
    actor     text        NOT NULL,  -- the OS user who ran the command
    host      text        NOT NULL,
    namespace text        NOT NULL,  -- the settings' namespace ('' = live)
    details   jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON {schema}.audit_log (ts);
