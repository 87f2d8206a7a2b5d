-- The sampler's last stored reading of each gateway's counters, written in
-- the transaction that adds the usage it counted: a replica that takes the
-- sampler lease (a restart, a takeover, the database back after an outage)
-- counts from where the last holder stopped, instead of taking its first
-- reading as a new baseline and losing the usage in between. Portable SQL,
-- as in 0001.
CREATE TABLE sampler_gateways (
    gateway TEXT PRIMARY KEY,
    -- Unix seconds of the reading, and Envoy's uptime then: together they
    -- tell a gateway that restarted since from one that ran on.
    read_at BIGINT NOT NULL,
    uptime BIGINT NOT NULL
);
-- Each series' cumulative counters at the gateway's stored reading.
CREATE TABLE sampler_counters (
    gateway TEXT NOT NULL,
    subscription TEXT NOT NULL,
    model TEXT NOT NULL,
    key_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    PRIMARY KEY (gateway, subscription, model, key_id)
);
