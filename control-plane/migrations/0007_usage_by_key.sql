-- A caller's own usage is read through their keys (`GET /v1/usage` joins
-- api_keys on the owner): without an index led by key_id the database read
-- every tenant's buckets in the time range to find one caller's few keys.
-- Portable SQL, as in 0001.
CREATE INDEX usage_buckets_key ON usage_buckets (key_id, bucket_start);
