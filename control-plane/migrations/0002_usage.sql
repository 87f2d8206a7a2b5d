-- Showback: usage per subscription and model in one-minute buckets, added
-- to by the control plane's sampler (the difference between two readings of
-- a gateway's counters). Portable SQL, as in 0001.
CREATE TABLE usage_buckets (
    bucket_start BIGINT NOT NULL,
    subscription TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (bucket_start, subscription, model)
);
