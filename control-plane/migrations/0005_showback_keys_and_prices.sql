-- Showback per key, and model prices. Portable SQL, as in 0001.
--
-- Usage buckets gain the caller's key id (the filter's `key` label) as part
-- of their identity. SQLite cannot change a primary key in place, so the
-- table is rebuilt: existing rows keep their usage under the empty key,
-- which is also where token holders' usage (they have no key) lands.
CREATE TABLE usage_buckets_by_key (
    bucket_start BIGINT NOT NULL,
    subscription TEXT NOT NULL,
    model TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (bucket_start, subscription, model, key_id)
);
INSERT INTO usage_buckets_by_key
    (bucket_start, subscription, model, key_id, requests, prompt_tokens, completion_tokens)
SELECT bucket_start, subscription, model, '', requests, prompt_tokens, completion_tokens
FROM usage_buckets;
DROP TABLE usage_buckets;
ALTER TABLE usage_buckets_by_key RENAME TO usage_buckets;
-- Spend against a limit reads one subscription from its window's start.
CREATE INDEX usage_buckets_subscription ON usage_buckets (subscription, bucket_start);

-- What a model costs per million prompt and completion tokens, in
-- millionths of the currency unit (exact; see showback/price.rs). One
-- currency per control plane: the store refuses a second.
CREATE TABLE model_prices (
    model TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    prompt_micros BIGINT NOT NULL,
    completion_micros BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
