//! The configuration parser and validator, through `Config::from_json`:
//! a full document loads, and each kind of mistake names its field.

use super::validate::parse_rfc3339_utc;
use super::*;
use crate::subscription::{
    CapMode, KeyLimitsPer, Quantity, ScopeLimits, DEFAULT_MAX_KEYS_PER_OWNER,
    MAX_KEYS_PER_OWNER_LIMIT,
};
use serde_json::json;

const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn base() -> serde_json::Value {
    json!({
        "models": ["m1", "org/m2:q4"],
        "subscriptions": {
            "free": {
                "models": ["m1"],
                "limits": {"requests": ["10/min"], "tokens": ["20000/min", "1000000/day"]},
                "key_limits": {"requests": ["5/min"]},
                "max_tokens": {"cap": 512}
            },
            "gold": {"models": ["m1", "org/m2:q4"], "limits": "unlimited"}
        },
        "keys": [
            {"id": "k1", "owner": "alice", "subscription": "free", "sha256": HASH,
             "expires_at": "2027-01-01T00:00:00Z"},
            {"id": "k2", "owner": "bob", "subscription": "gold",
             "sha256": HASH.replace('2', "3"), "revoked": true}
        ]
    })
}

fn load(v: &serde_json::Value) -> Result<Config, ConfigError> {
    Config::from_json(v.to_string().as_bytes())
}

#[test]
fn loads_a_full_configuration() {
    let c = load(&base()).unwrap();
    assert_eq!(c.max_body_bytes, 1 << 20);
    assert_eq!(c.default_max_tokens, 4096);
    assert_eq!(c.models, vec!["m1", "org/m2:q4"]);
    let free = &c.subscriptions[0];
    assert_eq!(&*free.name, "free");
    assert_eq!(free.limits.len(), 3);
    assert_eq!(
        free.limits.group.counter_key,
        "maas/sub/free/r60.t60.t86400"
    );
    assert_eq!(free.limits.quantities[1], Quantity::Tokens);
    assert_eq!(free.limits.group.rates[1].window_secs, 60);
    assert_eq!(free.limits.group.rates[2].window_secs, 86_400);
    assert_eq!(free.max_tokens.unwrap().mode, CapMode::Clamp);
    assert!(c.subscriptions[1].limits.is_empty());
    let k1 = c.keys.iter().next().unwrap();
    assert_eq!(k1.expires_at, Some(1_798_761_600));
    assert_eq!(k1.limits.len(), 1, "inherits the subscription's key_limits");
    assert_eq!(k1.limits.group.counter_key, "maas/key/k1/r60");
    assert_eq!(k1.limits.quantities, [Quantity::Requests]);
    assert_eq!(c.all_limits().count(), 2, "one counter per limited scope");
    assert_eq!(c.all_limits().map(ScopeLimits::len).sum::<usize>(), 4);
}

#[test]
fn the_credentials_it_sends_are_kept_out_of_debug_output() {
    let mut v = base();
    v["model_server_api_key"] = json!("model-server-secret-0123");
    v["control_plane"] = json!({"cluster": "cp", "token": "gateway-secret-4567"});
    let c = load(&v).unwrap();
    assert_eq!(
        c.model_server_bearer("m1"),
        Some("Bearer model-server-secret-0123")
    );
    let cp = c.control_plane.as_ref().unwrap();
    assert_eq!(cp.token.header_value(), "Bearer gateway-secret-4567");
    let shown = format!("{c:?}");
    for secret in ["model-server-secret-0123", "gateway-secret-4567"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let raw: super::raw::RawConfig = serde_json::from_value(v).unwrap();
    let shown = format!("{raw:?}");
    for secret in ["model-server-secret-0123", "gateway-secret-4567"] {
        assert!(!shown.contains(secret), "{secret} in the raw form: {shown}");
    }
}

#[test]
fn errors_name_the_field() {
    type Mutation = fn(&mut serde_json::Value);
    let cases: Vec<(Mutation, &str)> = vec![
        (
            |v| v["subscriptions"]["free"]["limits"]["tokens"][1] = json!("5/fortnight"),
            "subscriptions.free.limits.tokens[1]",
        ),
        (
            |v| v["subscriptions"]["free"]["limits"] = json!("infinite"),
            "subscriptions.free.limits",
        ),
        (
            |v| v["subscriptions"]["free"]["limits"] = json!({}),
            "subscriptions.free.limits",
        ),
        (
            |v| v["subscriptions"]["free"]["limits"]["requests"] = json!(["1/min", "2/60s"]),
            "subscriptions.free.limits.requests[1]",
        ),
        (
            |v| v["subscriptions"]["free"]["models"] = json!(["nope"]),
            "subscriptions.free.models[0]",
        ),
        (
            |v| v["subscriptions"]["free"]["max_tokens"]["cap"] = json!(0),
            "subscriptions.free.max_tokens.cap",
        ),
        (|v| v["keys"][0]["sha256"] = json!("abc"), "keys[0].sha256"),
        (
            |v| v["keys"][0]["subscription"] = json!("silver"),
            "keys[0].subscription",
        ),
        (
            |v| v["keys"][0]["expires_at"] = json!("tomorrow"),
            "keys[0].expires_at",
        ),
        (|v| v["keys"][1]["id"] = json!("k1"), "keys[1].id"),
        (|v| v["keys"][1]["sha256"] = json!(HASH), "keys[1].sha256"),
        (
            |v| v["keys"][0]["owner"] = json!("a\r\nx-maas-user: root"),
            "keys[0].owner",
        ),
        (|v| v["keys"][0]["id"] = json!("k;1"), "keys[0].id"),
        (|v| v["models"] = json!(["a;b"]), "models[0]"),
        (|v| v["models"] = json!([]), "models"),
        (|v| v["max_body_bytes"] = json!(0), "max_body_bytes"),
        (
            |v| v["model_server_api_key"] = json!("too-short"),
            "model_server_api_key",
        ),
        (
            |v| v["model_server_api_key"] = json!("a key with spaces in it"),
            "model_server_api_key",
        ),
        (
            |v| v["subscriptions"]["free"]["max_keys_per_owner"] = json!(0),
            "subscriptions.free.max_keys_per_owner",
        ),
        (
            |v| v["subscriptions"]["free"]["max_keys_per_owner"] = json!(1001),
            "subscriptions.free.max_keys_per_owner",
        ),
    ];
    for (mutate, field) in cases {
        let mut v = base();
        mutate(&mut v);
        let e = load(&v).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
}

#[test]
fn unknown_fields_are_rejected_with_their_name() {
    let mut v = base();
    v["subscriptions"]["free"]["limit"] = json!("unlimited");
    let e = load(&v).unwrap_err();
    assert!(e.reason.contains("limit"), "{e}");
    let e = Config::from_json(b"{not json").unwrap_err();
    assert_eq!(e.field, "(document)");
}

#[test]
fn key_limits_count_per_key_or_per_owner() {
    let mut v = base();
    v["keys"][1] = json!({"id": "k3", "owner": "alice", "subscription": "free",
                           "sha256": HASH.replace('2', "3")});
    let keys = |c: &Config| -> Vec<String> {
        c.keys
            .iter()
            .map(|k| k.limits.group.counter_key.clone())
            .collect()
    };
    // Default: one counter per key, and the limiter counts each key.
    let c = load(&v).unwrap();
    let free = &c.subscriptions[0];
    assert_eq!(free.key_limits_per, KeyLimitsPer::Key);
    assert_eq!(keys(&c), ["maas/key/k1/r60", "maas/key/k3/r60"]);
    assert_eq!(free.holder_descriptor(Some("k1"), "alice"), "k1");
    assert_eq!(free.holder_descriptor(None, "alice"), "user:alice");
    // Per owner: alice's keys share her counter, the one her token uses.
    v["subscriptions"]["free"]["key_limits_per"] = json!("owner");
    let c = load(&v).unwrap();
    let free = &c.subscriptions[0];
    assert_eq!(
        keys(&c),
        ["maas/user/free/alice/r60", "maas/user/free/alice/r60"]
    );
    assert_eq!(
        free.holder_limits(None, "alice").group.counter_key,
        "maas/user/free/alice/r60"
    );
    assert_eq!(free.holder_descriptor(Some("k1"), "alice"), "user:alice");
    assert_eq!(free.holder_limits(Some("k1"), "alice").scope, "user alice");
    // Anything else is refused, naming the field.
    v["subscriptions"]["free"]["key_limits_per"] = json!("team");
    let e = load(&v).unwrap_err();
    assert!(e.reason.contains("team"), "{e}");
}

#[test]
fn max_keys_per_owner_defaults_and_is_bounded() {
    let mut v = base();
    assert!(load(&v).is_ok(), "default {DEFAULT_MAX_KEYS_PER_OWNER}");
    for (cap, ok) in [(1, true), (MAX_KEYS_PER_OWNER_LIMIT, true), (0, false)] {
        v["subscriptions"]["free"]["max_keys_per_owner"] = json!(cap);
        assert_eq!(load(&v).is_ok(), ok, "{cap}");
    }
    v["subscriptions"]["free"]["max_keys_per_owner"] = json!(-1);
    assert!(load(&v).is_err());
}

#[test]
fn key_limits_can_be_overridden_per_key() {
    let mut v = base();
    v["keys"][0]["limits"] = json!({"tokens": ["100/10s"]});
    let c = load(&v).unwrap();
    let k1 = c.keys.iter().next().unwrap();
    assert_eq!(k1.limits.len(), 1);
    assert_eq!(k1.limits.quantities, [Quantity::Tokens]);
    assert_eq!(k1.limits.group.rates[0].window_secs, 10);
    assert_eq!(k1.limits.group.counter_key, "maas/key/k1/t10");
}

#[test]
fn counter_keys_name_the_window_layout() {
    // Reordering a scope's limits must not read old windows under the
    // wrong rates: the key changes with the layout, not with amounts.
    let key_of = |limits: serde_json::Value| {
        let mut v = base();
        v["subscriptions"]["free"]["limits"] = limits;
        load(&v).unwrap().subscriptions[0]
            .limits
            .group
            .counter_key
            .clone()
    };
    let a = key_of(json!({"tokens": ["100/min", "1000/day"]}));
    let b = key_of(json!({"tokens": ["1000/day", "100/min"]}));
    let c = key_of(json!({"tokens": ["500/min", "9000/day"]}));
    assert_ne!(a, b);
    assert_eq!(a, c);
}

#[test]
fn rfc3339_parsing() {
    for (s, want) in [
        ("1970-01-01T00:00:00Z", Some(0)),
        ("2000-02-29T12:00:00Z", Some(951_825_600)),
        ("2027-01-01T00:00:00.123Z", Some(1_798_761_600)),
        ("2001-02-29T00:00:00Z", None),
        ("2027-01-01T00:00:00+02:00", None),
        ("2027-1-01T00:00:00Z", None),
        ("2027-01-01", None),
        ("", None),
    ] {
        assert_eq!(parse_rfc3339_utc(s), want, "{s}");
    }
}

fn with_providers() -> serde_json::Value {
    let mut v = base();
    v["providers"] = json!([
        {"name": "openai", "kind": "openai-compatible"},
        {"name": "azure-east", "kind": "azure-openai", "api_version": "2024-10-21"}
    ]);
    v["external_models"] = json!([
        {"id": "gpt-4o", "provider": "azure-east", "model": "gpt-4o-prod"},
        {"id": "openai/gpt-4.1-mini", "provider": "openai", "model": "gpt-4.1-mini"}
    ]);
    v["subscriptions"]["gold"]["models"] = json!(["m1", "gpt-4o", "openai/gpt-4.1-mini"]);
    v
}

#[test]
fn external_models_are_routed_models_mapped_to_their_provider() {
    let c = load(&with_providers()).unwrap();
    assert_eq!(
        c.models,
        ["gpt-4o", "m1", "openai/gpt-4.1-mini", "org/m2:q4"]
    );
    let azure = &c.external["gpt-4o"];
    assert_eq!(azure.upstream_model, "gpt-4o-prod");
    assert_eq!(
        azure
            .upstream_path(&crate::openai::endpoint::Endpoint::ChatCompletions)
            .as_deref(),
        Some("/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21")
    );
    let openai = &c.external["openai/gpt-4.1-mini"];
    assert_eq!(openai.provider, "openai");
    assert_eq!(
        openai.upstream_path(&crate::openai::endpoint::Endpoint::Completions),
        None
    );
    assert!(!c.external.contains_key("m1"));
}

#[test]
fn a_providers_max_tokens_field_defaults_by_kind_and_can_be_named() {
    use crate::openai::request::BudgetField;
    let c = load(&with_providers()).unwrap();
    // Azure OpenAI takes `max_completion_tokens` for every model; an
    // OpenAI-compatible server is assumed to read `max_tokens`.
    assert_eq!(
        c.external["gpt-4o"].budget_field,
        BudgetField::MaxCompletionTokens
    );
    assert_eq!(
        c.external["openai/gpt-4.1-mini"].budget_field,
        BudgetField::MaxTokens
    );
    // OpenAI itself is OpenAI-compatible: its reasoning models refuse
    // `max_tokens`, so it is configured to get `max_completion_tokens`.
    let mut v = with_providers();
    v["providers"][0]["max_tokens_field"] = json!("max_completion_tokens");
    let c = load(&v).unwrap();
    assert_eq!(
        c.external["openai/gpt-4.1-mini"].budget_field,
        BudgetField::MaxCompletionTokens
    );
}

/// A change that breaks one field of a configuration.
type Breakage = fn(&mut serde_json::Value);

#[test]
fn provider_mistakes_name_their_field() {
    let cases: [(&str, Breakage); 13] = [
        ("providers[2].service_tiers", |v| {
            v["providers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "claude", "kind": "anthropic", "service_tiers": ["auto"]}));
        }),
        ("providers[0].service_tiers[1]", |v| {
            v["providers"][0]["service_tiers"] = json!(["auto", ""]);
        }),
        ("providers[1].max_outputs", |v| {
            v["providers"][1]["max_outputs"] = json!(0);
        }),
        ("providers[0].max_outputs", |v| {
            v["providers"][0]["max_outputs"] = json!(1025);
        }),
        ("providers[2].max_tokens_field", |v| {
            v["providers"].as_array_mut().unwrap().push(
                json!({"name": "claude", "kind": "anthropic", "max_tokens_field": "max_tokens"}),
            );
        }),
        ("providers[1].api_version", |v| {
            v["providers"][1]
                .as_object_mut()
                .unwrap()
                .remove("api_version");
        }),
        ("providers[0].api_version", |v| {
            v["providers"][0]["api_version"] = json!("2024-10-21");
        }),
        ("providers[1].name", |v| {
            v["providers"][1]["name"] = json!("openai")
        }),
        ("providers[0].name", |v| {
            v["providers"][0]["name"] = json!("open ai")
        }),
        ("external_models[0].provider", |v| {
            v["external_models"][0]["provider"] = json!("nobody")
        }),
        ("external_models[0].id", |v| {
            v["external_models"][0]["id"] = json!("m1")
        }),
        ("external_models[1].id", |v| {
            v["external_models"][1]["id"] = json!("gpt-4o")
        }),
        ("external_models[0].model", |v| {
            v["external_models"][0]["model"] = json!("../admin")
        }),
    ];
    for (field, break_it) in cases {
        let mut v = with_providers();
        break_it(&mut v);
        let e = load(&v).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let mut v = with_providers();
    v["providers"][0]["kind"] = json!("bedrock");
    let e = load(&v).unwrap_err();
    assert!(e.reason.contains("unknown variant `bedrock`"), "{e}");
}

#[test]
fn fallbacks_chain_a_models_backends_in_order() {
    let mut v = with_providers();
    v["providers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "anthropic", "kind": "anthropic"}));
    v["fallbacks"] = json!({
        "m1": [{"provider": "openai", "model": "gpt-4.1-mini"}],
        "gpt-4o": [
            {"provider": "anthropic", "model": "claude-sonnet-4-5"},
            {"provider": "openai", "model": "gpt-4o"}
        ]
    });
    let c = load(&v).unwrap();
    let chain = |model: &str| -> Vec<(String, String)> {
        c.backends(model)
            .map(|b| (b.provider.clone(), b.upstream_model.clone()))
            .collect()
    };
    // A local model's chain starts with its own server, which is not a
    // provider; an external one's with its own provider.
    assert_eq!(chain("m1"), [("openai".into(), "gpt-4.1-mini".into())]);
    assert_eq!(
        chain("gpt-4o"),
        [
            ("azure-east".into(), "gpt-4o-prod".into()),
            ("anthropic".into(), "claude-sonnet-4-5".into()),
            ("openai".into(), "gpt-4o".into()),
        ]
    );
    assert_eq!(chain("org/m2:q4"), []);
}

#[test]
fn fallback_mistakes_name_their_field() {
    let cases: [(&str, serde_json::Value); 5] = [
        (
            "fallbacks.nope",
            json!({"nope": [{"provider": "openai", "model": "x"}]}),
        ),
        ("fallbacks.m1", json!({"m1": []})),
        (
            "fallbacks.m1[0].provider",
            json!({"m1": [{"provider": "nobody", "model": "x"}]}),
        ),
        (
            "fallbacks.gpt-4o[0].provider",
            json!({"gpt-4o": [{"provider": "azure-east", "model": "again"}]}),
        ),
        (
            "fallbacks.m1[1].provider",
            json!({"m1": [{"provider": "openai", "model": "a"}, {"provider": "openai", "model": "b"}]}),
        ),
    ];
    for (field, fallbacks) in cases {
        let mut v = with_providers();
        v["fallbacks"] = fallbacks;
        let e = load(&v).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let mut v = with_providers();
    v["fallbacks"] = json!({"m1": [{"provider": "openai", "model": "x", "weight": 2}]});
    assert!(load(&v)
        .unwrap_err()
        .reason
        .contains("unknown field `weight`"));
}

#[test]
fn a_configuration_of_external_models_alone_is_enough() {
    let mut v = with_providers();
    v["models"] = json!([]);
    v["subscriptions"] = json!({"gold": {"models": ["gpt-4o"], "limits": "unlimited"}});
    v["keys"] = json!([]);
    assert_eq!(load(&v).unwrap().models, ["gpt-4o", "openai/gpt-4.1-mini"]);
    v["external_models"] = json!([]);
    v["subscriptions"] = json!({});
    assert_eq!(load(&v).unwrap_err().field, "models");
}

#[test]
fn media_part_tokens_default_and_cover_every_backend_of_a_model() {
    let c = load(&base()).unwrap();
    assert_eq!(c.media_part_tokens, raw::DEFAULT_MEDIA_PART_TOKENS);
    assert_eq!(c.media_part_tokens("m1"), 4096, "a model's own servers");

    let mut v = with_providers();
    v["media_part_tokens"] = json!(2000);
    // gpt-4o-mini's images cost up to 36,836 tokens; a text-only backend
    // refuses them (0).
    v["external_models"][0]["media_part_tokens"] = json!(36_836);
    v["external_models"][1]["media_part_tokens"] = json!(0);
    v["fallbacks"] = json!({
        "m1": [{"provider": "openai", "model": "a", "media_part_tokens": 5000}],
        "openai/gpt-4.1-mini": [{"provider": "azure-east", "model": "mini"}]
    });
    let c = load(&v).unwrap();
    assert_eq!(c.external["gpt-4o"].media_part_tokens, 36_836);
    assert_eq!(c.media_part_tokens("gpt-4o"), 36_836);
    // The most any backend that may answer charges: the fallback inherits
    // the top-level 2000, above the model's own 0.
    assert_eq!(c.media_part_tokens("openai/gpt-4.1-mini"), 2000);
    assert_eq!(c.media_part_tokens("m1"), 5000);
    assert_eq!(c.media_part_tokens("org/m2:q4"), 2000);
}

#[test]
fn media_part_tokens_mistakes_name_their_field() {
    let cases: [(&str, Breakage); 3] = [
        ("media_part_tokens", |v| {
            v["media_part_tokens"] = json!(1_000_001)
        }),
        ("external_models[1].media_part_tokens", |v| {
            v["external_models"][1]["media_part_tokens"] = json!(u64::MAX)
        }),
        ("fallbacks.m1[0].media_part_tokens", |v| {
            v["fallbacks"] = json!({"m1": [
                {"provider": "openai", "model": "a", "media_part_tokens": 2_000_000}
            ]})
        }),
    ];
    for (field, break_it) in cases {
        let mut v = with_providers();
        break_it(&mut v);
        let e = load(&v).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.starts_with("must be at most 1000000"), "{e}");
    }
    let mut v = with_providers();
    v["media_part_tokens"] = json!(-1);
    let e = load(&v).unwrap_err();
    assert!(e.reason.contains("invalid value: integer `-1`"), "{e}");
}
