//! What the soak runs: the subscriptions and their limits, the keys (each
//! driven by one client), the prompts, the traffic mix and the fault
//! schedule. The limits are data here, so the filter's configuration, the
//! control plane's subscriptions and the ledger's window checks are rendered
//! from the same numbers and cannot drift apart.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// The model every request names (the inference server's `--model-id`).
pub const MODEL: &str = "smollm2-135m-instruct";
/// The limiter's namespace for the gateway's global limits.
pub const DOMAIN: &str = "maas-soak";
/// Short enough that a hold whose commit was lost (the limiter was down
/// when the response ended) expires within the run, so the run sees what
/// that does to the global counter; still ten times the longest generation
/// here.
pub const RESERVATION_TTL_MS: u64 = 15_000;

/// What a limit counts (the filter's own type).
pub use maas_filter::subscription::Quantity;

/// One rate: `amount` per fixed window of `window_secs`. Local rates have
/// windows aligned to the Unix epoch (the filter's shared-data ledger);
/// global ones are Limitador's, whose window starts at a counter's first hit
/// in Redis: with a window longer than the run, each Redis lifetime is one
/// window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePlan {
    pub quantity: Quantity,
    pub amount: u64,
    pub window_secs: u64,
    pub global: bool,
}

impl RatePlan {
    const fn local(quantity: Quantity, amount: u64, window_secs: u64) -> Self {
        Self {
            quantity,
            amount,
            window_secs,
            global: false,
        }
    }

    const fn global(quantity: Quantity, amount: u64, window_secs: u64) -> Self {
        Self {
            quantity,
            amount,
            window_secs,
            global: true,
        }
    }

    /// `"3000/10s"`, or `{"rate": "6000/3600s", "mode": "global"}`.
    fn to_json(self) -> Value {
        let rate = format!("{}/{}s", self.amount, self.window_secs);
        if self.global {
            json!({"rate": rate, "mode": "global"})
        } else {
            Value::String(rate)
        }
    }
}

/// Where a subscription is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The filter's own configuration, with static keys (the only place
    /// global limits may be set: the limiter's limits file is rendered
    /// from it).
    Config,
    /// The control plane's API; its keys are minted there and synced.
    ControlPlane,
}

#[derive(Debug, Clone)]
pub struct SubscriptionPlan {
    pub name: &'static str,
    pub source: Source,
    /// Shared by all keys of the subscription.
    pub limits: Vec<RatePlan>,
    /// Each key's own.
    pub key_limits: Vec<RatePlan>,
}

impl SubscriptionPlan {
    fn limits_json(rates: &[RatePlan]) -> Value {
        let list = |q: Quantity| -> Vec<Value> {
            rates
                .iter()
                .filter(|r| r.quantity == q)
                .map(|r| r.to_json())
                .collect()
        };
        json!({"requests": list(Quantity::Requests), "tokens": list(Quantity::Tokens)})
    }

    /// The filter configuration's entry (without the name).
    pub fn config_json(&self) -> Value {
        let mut value = json!({
            "models": [MODEL],
            "limits": Self::limits_json(&self.limits),
        });
        if !self.key_limits.is_empty() {
            value["key_limits"] = Self::limits_json(&self.key_limits);
        }
        value
    }

    /// The control plane's `PUT /maas-api/v1/subscriptions/{name}` body.
    pub fn api_json(&self) -> Value {
        let mut value = self.config_json();
        value["name"] = json!(self.name);
        value
    }
}

/// One client of the soak: one key, driven sequentially by its own thread
/// (so its audit records, in start order, are its requests in send order).
#[derive(Debug, Clone)]
pub struct ClientPlan {
    pub subscription: &'static str,
    pub owner: &'static str,
    /// A static key's id (its plaintext is derived from it); `None`: a key
    /// minted through the control plane's API.
    pub static_id: Option<&'static str>,
}

impl ClientPlan {
    /// The plaintext of a static key.
    pub fn static_key(&self) -> Option<String> {
        self.static_id
            .map(|id| format!("sk-soak-{id}-4d1c8e0b7a9f"))
    }
}

/// The whole scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    pub subscriptions: Vec<SubscriptionPlan>,
    pub clients: Vec<ClientPlan>,
    pub traffic: Traffic,
    pub faults: Vec<FaultPlan>,
}

/// The traffic's shape and bounds.
#[derive(Debug, Clone)]
pub struct Traffic {
    /// The clients stop sending after this long …
    pub duration: Duration,
    /// … or after this many requests in all, whichever comes first.
    pub max_requests: u64,
    /// Percent of requests that are plain (JSON) completions, and percent
    /// that are streams the client drops after a few events; the others are
    /// complete streams that ask for usage.
    pub plain_percent: u64,
    pub cut_percent: u64,
    pub max_tokens: u64,
    /// A client that was refused (429, 503) or failed waits this long.
    pub backoff: Duration,
    /// Between two answered requests a client waits up to this long.
    pub think: Duration,
}

/// The processes the soak kills and brings back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Limiter,
    Redis,
    ControlPlane,
    InferenceServer,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::Limiter => "maas-limiter",
            Component::Redis => "Redis",
            Component::ControlPlane => "control plane",
            Component::InferenceServer => "inference server",
        }
    }
}

/// Kill `component` (SIGKILL, as a crash) `at` after the traffic starts,
/// and start it again on the same port `down` later.
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    pub component: Component,
    pub at: Duration,
    pub down: Duration,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Plan {
    /// The scenario `benches/soak.sh` runs; `scale` stretches every time
    /// (traffic and schedule) by that factor (1.0: about 2.5 minutes of
    /// traffic).
    pub fn standard(scale: f64, max_requests: u64) -> Plan {
        use Quantity::{Requests, Tokens};
        let scaled = |d: Duration| d.mul_f64(scale.max(0.1));
        let sub = |name, source, limits: &[RatePlan], key_limits: &[RatePlan]| SubscriptionPlan {
            name,
            source,
            limits: limits.to_vec(),
            key_limits: key_limits.to_vec(),
        };
        // Local rates, per 10 s.
        let requests = |n| RatePlan::local(Requests, n, 10);
        let tokens = |n| RatePlan::local(Tokens, n, 10);
        let subscriptions = vec![
            // Global tokens (Redis), local requests and per-key tokens.
            sub(
                "soak-global",
                Source::Config,
                &[requests(10), RatePlan::global(Tokens, 3000, 3600)],
                &[tokens(600)],
            ),
            sub(
                "soak-local",
                Source::Config,
                &[requests(8), tokens(700)],
                &[],
            ),
            sub(
                "cp-team",
                Source::ControlPlane,
                &[requests(12), tokens(1200)],
                &[requests(5), tokens(600)],
            ),
            sub(
                "cp-tight",
                Source::ControlPlane,
                &[requests(3), tokens(500)],
                &[],
            ),
        ];
        let client = |subscription, owner, static_id| ClientPlan {
            subscription,
            owner,
            static_id,
        };
        let clients = vec![
            client("soak-global", "ops@example.com", Some("global-a")),
            client("soak-global", "ml@example.com", Some("global-b")),
            client("soak-local", "web@example.com", Some("local-a")),
            client("cp-team", "alice@example.com", None),
            client("cp-team", "bob@example.com", None),
            client("cp-team", "carol@example.com", None),
            client("cp-tight", "dave@example.com", None),
        ];
        let fault = |component, at, down| FaultPlan {
            component,
            at: scaled(secs(at)),
            down: scaled(secs(down)),
        };
        Plan {
            subscriptions,
            clients,
            traffic: Traffic {
                duration: scaled(secs(150)),
                max_requests,
                plain_percent: 35,
                cut_percent: 30,
                max_tokens: 24,
                backoff: Duration::from_millis(400),
                think: Duration::from_millis(150),
            },
            faults: vec![
                fault(Component::Limiter, 20, 8),
                fault(Component::Redis, 45, 8),
                fault(Component::ControlPlane, 70, 12),
                fault(Component::InferenceServer, 100, 8),
            ],
        }
    }

    pub fn subscription(&self, name: &str) -> Option<&SubscriptionPlan> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    /// The filter's configuration: the configuration's subscriptions and
    /// static keys, the limiter, and the control plane (`cp_token`) the
    /// managed keys and the other subscriptions come from.
    pub fn filter_config(&self, cp_token: &str) -> Value {
        let subscriptions: Map<String, Value> = self
            .subscriptions
            .iter()
            .filter(|s| s.source == Source::Config)
            .map(|s| (s.name.to_string(), s.config_json()))
            .collect();
        let keys: Vec<Value> = self
            .clients
            .iter()
            .filter_map(|c| {
                let (id, key) = (c.static_id?, c.static_key()?);
                Some(json!({
                    "id": id, "owner": c.owner, "subscription": c.subscription,
                    "sha256": maas_filter::auth::keys::KeyDigest::of(&key).to_hex(),
                }))
            })
            .collect();
        json!({
            "models": [MODEL],
            "subscriptions": subscriptions,
            "keys": keys,
            "limiter": {
                "cluster": maas_testkit::gateway::LIMITER_CLUSTER,
                "domain": DOMAIN,
                // A loaded two-core machine; production keeps the default.
                "timeout_ms": 1000,
                "reservation_ttl_ms": RESERVATION_TTL_MS,
            },
            "control_plane": {
                "cluster": "maas-control-plane",
                "token": cp_token,
                "sync_interval_ms": 500,
                "timeout_ms": 1000,
            },
        })
    }
}

/// The prompts the clients send, in turn; short, so a reservation (body
/// bytes plus `max_tokens`) is a few hundred tokens.
pub const PROMPTS: [&str; 4] = [
    "Name three colours of the rainbow.",
    "Write one sentence about a lighthouse keeper who collects seashells.",
    "What is the capital of France? Answer in a few words, then explain why it matters.",
    "List two uses of a gateway in front of model servers: keys, quotas or accounting.",
];

/// The chat completion a client sends.
pub fn request_body(prompt: usize, stream: bool, include_usage: bool, max_tokens: u64) -> Value {
    let mut body = json!({
        "model": MODEL,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "messages": [{"role": "user", "content": PROMPTS[prompt % PROMPTS.len()]}],
    });
    if stream {
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_accepts_the_configuration_and_the_limits_file_has_the_global_limit() {
        let plan = Plan::standard(1.0, 100);
        let config = plan.filter_config("token");
        let parsed = maas_filter::config::Config::from_json(config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {config}"));
        let limits = maas_filter::limits::global_limits::limitador_limits(
            DOMAIN,
            parsed.subscriptions.iter().map(|s| &**s),
        );
        assert!(limits.contains("max_value: 3000"), "{limits}");
        assert!(limits.contains("seconds: 3600"), "{limits}");
        // The control plane's subscriptions are valid synced ones (no global limits).
        for sub in plan
            .subscriptions
            .iter()
            .filter(|s| s.source == Source::ControlPlane)
        {
            let value = sub.api_json();
            maas_filter::config::synced_subscription(&value, &[MODEL.to_string()])
                .unwrap_or_else(|e| panic!("{e}: {value}"));
        }
    }

    #[test]
    fn the_schedule_kills_every_component_within_the_traffic() {
        let plan = Plan::standard(1.0, 100);
        let mut seen: Vec<Component> = plan.faults.iter().map(|f| f.component).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        for f in &plan.faults {
            assert!(f.at + f.down < plan.traffic.duration, "{f:?}");
        }
    }
}
