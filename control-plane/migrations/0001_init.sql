-- Initial control-plane schema.
--
-- Every statement here runs unchanged on SQLite and PostgreSQL: only TEXT and
-- BIGINT columns, portable constraints, and no auto-increment columns (whose
-- syntax differs: INTEGER PRIMARY KEY vs BIGSERIAL). Sequence numbers come
-- from `change_counter` instead, bumped in the writing transaction.

-- One row holding the last version handed out. Every write transaction bumps
-- it first, which also serialises writers (row lock on PostgreSQL, the write
-- lock on SQLite), so versions become visible in the order they were assigned.
CREATE TABLE change_counter (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO change_counter (id, value) VALUES (1, 0);

CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY,
    -- JSON: models, limits, key_limits, max_tokens, cost_center, unlimited.
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX subscriptions_version ON subscriptions (version);

-- A deleted subscription leaves its name here so incremental sync can tell
-- the filter to forget it; putting the name again removes the tombstone.
CREATE TABLE subscription_tombstones (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE INDEX subscription_tombstones_version ON subscription_tombstones (version);

-- Keys are never deleted, only revoked, so the filter learns of revocations
-- through the same version stream as everything else.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    subscription TEXT NOT NULL REFERENCES subscriptions (name),
    name TEXT NOT NULL,
    -- JSON object of string to string.
    labels TEXT NOT NULL,
    salt TEXT NOT NULL,
    -- Hex SHA-256 of salt and secret; the secret itself is never stored.
    hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NULL,
    revoked_at BIGINT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX api_keys_owner ON api_keys (owner);
CREATE INDEX api_keys_version ON api_keys (version);
-- Backs the "still referenced?" check when deleting a subscription.
CREATE INDEX api_keys_subscription ON api_keys (subscription);

-- seq is the version of the change the row records (one audit row per
-- change), so it is unique, increasing in commit order, and ties an audit
-- entry to what incremental sync served.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    -- JSON; never holds a key's salt or hash.
    detail TEXT NOT NULL
);
