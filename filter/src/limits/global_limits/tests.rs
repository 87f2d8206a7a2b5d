use super::*;
use crate::config::Config;

fn limiter(reservations: bool) -> Limiter {
    Limiter {
        cluster: "limitador".into(),
        domain: "maas".into(),
        timeout_ms: 20,
        failure_mode: FailureMode::Deny,
        reservations,
        reservation_ttl_ms: 60_000,
    }
}

#[test]
fn rls_amounts_beyond_32_bits_are_clamped_not_wrapped() {
    let caller = Caller {
        subscription: "s".into(),
        key: "k".into(),
        model: "m".into(),
    };
    let call = admission_call(&limiter(false), &caller, Quantity::Tokens, u64::MAX);
    let request = RateLimitRequest::decode(&call.message[..]).unwrap();
    assert_eq!(request.hits_addend, u32::MAX);
    let call = admission_call(&limiter(true), &caller, Quantity::Tokens, 1 << 40);
    assert_eq!(
        ReserveRequest::decode(&call.message[..]).unwrap().amount,
        1 << 40
    );
    // Reserve and Commit: within a signed 64-bit counter, which the
    // limiter refuses past.
    let signed_max = i64::MAX.unsigned_abs();
    let call = admission_call(&limiter(true), &caller, Quantity::Tokens, u64::MAX);
    assert_eq!(
        ReserveRequest::decode(&call.message[..]).unwrap().amount,
        signed_max
    );
    let call = settlement_call(&limiter(true), &caller, Some("r"), u64::MAX);
    assert_eq!(
        CommitRequest::decode(&call.message[..])
            .unwrap()
            .actual_amount,
        signed_max
    );
}

#[test]
fn nothing_to_report_is_no_call() {
    assert!(!needs_settlement(None, 0));
    assert!(needs_settlement(None, 3));
    assert!(
        needs_settlement(Some("r"), 0),
        "a reservation is always released"
    );
}

#[test]
fn verdicts_read_codes_statuses_and_failures() {
    assert_eq!(
        verdict(
            Method::ShouldRateLimit,
            Some(0),
            &RateLimitResponse::with_code(Code::Ok).encode_to_vec()
        ),
        Verdict::Allowed { reservation: None }
    );
    assert!(
        matches!(verdict(Method::Reserve, Some(0), &[]), Verdict::Failed(_)),
        "an empty reserve answer is code UNKNOWN, not a grant"
    );
    assert!(matches!(
        verdict(Method::Reserve, None, &[]),
        Verdict::Failed(_)
    ));
    assert!(matches!(
        verdict(Method::Report, Some(14), &[]),
        Verdict::Failed(_)
    ));
}

#[test]
fn the_limits_file_has_one_limit_per_global_rate_and_a_counter_per_key() {
    let config = Config::from_json(
        serde_json::json!({
            "models": ["m1"],
            "limiter": {"cluster": "limitador"},
            "subscriptions": {
                "team": {
                    "models": ["m1"],
                    "limits": {"requests": ["5/min"], "tokens": [{"rate": "20000/hour", "mode": "global"}]},
                    "key_limits": {"requests": [{"rate": "10/min", "mode": "global"}]}
                },
                "local": {"models": ["m1"], "limits": {"tokens": ["10/min"]}}
            }
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let yaml = limitador_limits("maas", config.subscriptions.iter().map(|s| &**s));
    assert_eq!(
        yaml,
        "- namespace: maas\n  name: \"team subscription tokens 20000/3600s\"\n  max_value: 20000\n  seconds: 3600\n  conditions:\n    - \"descriptors[0].subscription == 'team'\"\n    - \"descriptors[0].quantity == 'tokens'\"\n  variables: []\n\
         - namespace: maas\n  name: \"team key requests 10/60s\"\n  max_value: 10\n  seconds: 60\n  conditions:\n    - \"descriptors[0].subscription == 'team'\"\n    - \"descriptors[0].quantity == 'requests'\"\n  variables:\n    - \"descriptors[0].key\"\n"
    );
    let none = limitador_limits("maas", std::iter::empty());
    assert_eq!(none, "[]\n");
}
