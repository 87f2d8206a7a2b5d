//! External providers end to end, on loopback: the gateway (the real Envoy
//! and the real filter) routes a provider's model over TLS to a stand-in
//! provider, a TLS-terminating Envoy ([`TlsFront`]) in front of the mock
//! upstream, with certificates from a throwaway CA. The mock is reachable
//! only through the front, so what it records came over TLS.
//!
//! Needs the Envoy binary, the release filter module and the `openssl` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use maas_filter::auth::keys::KeyDigest;
use maas_testkit::envoy::{envoy_binary, filter_wasm, passthrough_wasm_file, ScratchDir, TlsFront};
use maas_testkit::{
    credential_sds_path, eventually, gateway_template, render_gateway, validate_yaml,
    write_credential_sds, CredentialSpec, Gateway, GatewaySpec, MockUpstream, ProviderSpec,
    RecordedRequest, Response, TestCa,
};
use serde_json::{json, Value};

/// The provider's host name: its certificate's SAN, the SNI and the `Host`.
const PROVIDER_HOST: &str = "provider.test";
/// The client's MaaS key: the gateway's to check, never the provider's to see.
const CLIENT_KEY: &str = "sk-maas-client-1";
/// What a client sends in a provider's credential header, hoping it is used.
const CLIENT_ATTEMPT: &str = "sk-client-attempt";

/// A provider as the tests configure it: one model, one header, one secret.
struct Case {
    name: &'static str,
    model: &'static str,
    header: &'static str,
    prefix: Option<&'static str>,
    secret: &'static str,
    http2: bool,
}

/// One per way a provider takes its key: `x-api-key` over HTTP/2, Azure's
/// `api-key` over HTTP/1.1, `authorization` with a `Bearer ` prefix (where
/// the client's MaaS key was), and Gemini's `x-goog-api-key`, which neither
/// the filter nor the provider route removes: only the injector's
/// `overwrite` keeps the client's value from the provider.
const CASES: [Case; 4] = [
    Case {
        name: "alpha",
        model: "ext-model",
        header: "x-api-key",
        prefix: None,
        secret: "sk-provider-secret",
        http2: true,
    },
    Case {
        name: "beta",
        model: "ext-azure",
        header: "api-key",
        prefix: None,
        secret: "azure-provider-secret",
        http2: false,
    },
    Case {
        name: "gamma",
        model: "ext-bearer",
        header: "authorization",
        prefix: Some("Bearer "),
        secret: "sk-bearer-secret",
        http2: true,
    },
    Case {
        name: "delta",
        model: "ext-gemini",
        header: "x-goog-api-key",
        prefix: None,
        secret: "goog-provider-secret",
        http2: false,
    },
];

/// The stand-in provider: the mock behind a TLS front whose certificate
/// `ca` signed for [`PROVIDER_HOST`].
struct StandIn {
    upstream: MockUpstream,
    front: TlsFront,
    ca: TestCa,
}

impl StandIn {
    fn start() -> StandIn {
        let ca = TestCa::create("maas test provider CA");
        let cert = ca.issue(PROVIDER_HOST);
        let upstream = MockUpstream::start();
        let front = TlsFront::start(&cert.cert, &cert.key, upstream.addr());
        StandIn {
            upstream,
            front,
            ca,
        }
    }
}

/// The secret files, one per case, as `echo` or an editor writes them: with
/// a trailing newline, which the injector must not send.
fn write_secrets(dir: &Path) -> Vec<PathBuf> {
    CASES
        .iter()
        .map(|case| {
            let path = dir.join(format!("{}.key", case.name));
            std::fs::write(&path, format!("{}\n", case.secret)).unwrap();
            path
        })
        .collect()
}

fn provider(case: &Case, front: SocketAddr, host: &str, ca: &Path, secret: &Path) -> ProviderSpec {
    ProviderSpec {
        name: case.name.into(),
        address: front.ip().to_string(),
        port: front.port(),
        host: host.into(),
        ca_file: Some(ca.to_owned()),
        credential: CredentialSpec {
            header: case.header.into(),
            value_prefix: case.prefix.map(str::to_owned),
            secret_file: secret.to_owned(),
        },
        models: vec![case.model.into()],
        http2: case.http2,
        timeout: None,
    }
}

/// The filter's view: the provider models are models like any other, granted
/// by the client key's subscription.
fn filter_config(models: &[&str]) -> Value {
    json!({
        "models": models,
        "default_max_tokens": 64,
        "subscriptions": {
            "pro": { "models": models, "limits": "unlimited" }
        },
        "keys": [{
            "id": "client-1",
            "owner": "carol@example.com",
            "subscription": "pro",
            "sha256": KeyDigest::of(CLIENT_KEY).to_hex()
        }]
    })
}

fn chat(gateway: &Gateway, model: &str) -> Response {
    let bearer = format!("Bearer {CLIENT_KEY}");
    gateway.post_json(
        "/v1/chat/completions",
        &[
            ("authorization", bearer.as_str()),
            ("x-api-key", CLIENT_ATTEMPT),
            ("api-key", CLIENT_ATTEMPT),
            ("x-goog-api-key", CLIENT_ATTEMPT),
        ],
        &json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] }),
    )
}

fn values<'a>(request: &'a RecordedRequest, name: &str) -> Vec<&'a str> {
    request
        .headers
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .collect()
}

#[test]
fn provider_models_go_over_tls_with_the_injected_credential() {
    envoy_binary();
    let stand_in = StandIn::start();
    let secrets_dir = ScratchDir::create().unwrap();
    let secrets = write_secrets(secrets_dir.path());
    let models: Vec<&str> = CASES.iter().map(|case| case.model).collect();
    let mut builder = Gateway::builder().filter_config(filter_config(&models));
    for (case, secret) in CASES.iter().zip(&secrets) {
        builder = builder.provider(provider(
            case,
            stand_in.front.addr(),
            PROVIDER_HOST,
            stand_in.ca.cert(),
            secret,
        ));
    }
    let gateway = builder.start();

    for case in &CASES {
        stand_in.upstream.clear_requests();
        let response = chat(&gateway, case.model);
        assert_eq!(response.status, 200, "{}: {}", case.name, response.text());
        assert_eq!(
            response.json()["object"],
            "chat.completion",
            "{}",
            case.name
        );

        let seen = stand_in.upstream.requests();
        assert_eq!(seen.len(), 1, "{}: {seen:?}", case.name);
        let seen = &seen[0];
        assert_eq!(seen.json()["model"], case.model);
        let injected = format!("{}{}", case.prefix.unwrap_or(""), case.secret);
        assert_eq!(
            values(seen, case.header),
            [injected.as_str()],
            "{}",
            case.name
        );
        for (name, value) in &seen.headers {
            assert!(
                !value.contains(CLIENT_KEY),
                "{}: the provider saw the client's MaaS key in {name}",
                case.name
            );
            assert!(!name.starts_with("x-maas-"), "{}: {name} leaked", case.name);
        }
        // No client credential in the headers providers read (a header
        // no provider here reads, such as another's `x-goog-api-key`, is
        // the client's own business and passes).
        for name in ["authorization", "x-api-key", "api-key"] {
            assert!(
                values(seen, name)
                    .iter()
                    .all(|v| !v.contains(CLIENT_ATTEMPT)),
                "{}: the client's {name} reached the provider",
                case.name
            );
        }
        assert_eq!(seen.header("host"), Some(PROVIDER_HOST), "{}", case.name);
        // Set by the front, the only way in, for a request it took over TLS.
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }
    // Each provider's `http2` setting is what the front was spoken to in.
    assert_eq!(
        stand_in
            .front
            .stat("http.tls_front.downstream_cx_ssl_total"),
        4
    );
    assert_eq!(
        stand_in
            .front
            .stat("http.tls_front.downstream_cx_http2_total"),
        2
    );
    assert_eq!(
        stand_in
            .front
            .stat("http.tls_front.downstream_cx_http1_total"),
        2
    );

    // A key is rotated by pointing the SDS file at a new secret file (moved
    // into place, which is what Envoy's file watch reacts to): the next
    // requests carry the new key, with no restart.
    let alpha = &CASES[0];
    let rotated = secrets_dir.path().join("alpha-rotated.key");
    std::fs::write(&rotated, "sk-rotated-secret").unwrap();
    let spec = provider(
        alpha,
        stand_in.front.addr(),
        PROVIDER_HOST,
        stand_in.ca.cert(),
        &rotated,
    );
    let staged = write_credential_sds(secrets_dir.path(), std::slice::from_ref(&spec)).unwrap();
    std::fs::rename(&staged[0], credential_sds_path(gateway.dir(), &spec)).unwrap();
    eventually(Duration::from_secs(10), || {
        stand_in.upstream.clear_requests();
        let response = chat(&gateway, alpha.model);
        let seen = stand_in.upstream.requests();
        match seen
            .first()
            .and_then(|request| request.header(alpha.header))
        {
            Some("sk-rotated-secret") if response.status == 200 => Ok(()),
            other => Err(format!("{}: {other:?}", response.status)),
        }
    });

    // The credentials live in the secret files only: not in the bootstrap,
    // the files beside it, Envoy's view of its configuration or its logs.
    let config_dump = gateway.admin_get("/config_dump?include_eds");
    assert!(config_dump.contains("provider_alpha_credential"));
    for case in &CASES {
        for entry in std::fs::read_dir(gateway.dir()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!text.contains(case.secret), "{path:?} holds a secret");
        }
        assert!(!config_dump.contains(case.secret), "config dump shows it");
    }
}

#[test]
fn a_provider_whose_certificate_does_not_verify_gets_nothing() {
    envoy_binary();
    let stand_in = StandIn::start();
    let stranger = TestCa::create("a CA the provider never used");
    let secrets_dir = ScratchDir::create().unwrap();
    let secrets = write_secrets(secrets_dir.path());
    let [alpha, beta, ..] = &CASES;
    let gateway = Gateway::builder()
        .filter_config(filter_config(&[alpha.model, beta.model]))
        // Signed by a CA the gateway does not trust.
        .provider(provider(
            alpha,
            stand_in.front.addr(),
            PROVIDER_HOST,
            stranger.cert(),
            &secrets[0],
        ))
        // Trusted CA, but a certificate for another name.
        .provider(provider(
            beta,
            stand_in.front.addr(),
            "elsewhere.test",
            stand_in.ca.cert(),
            &secrets[1],
        ))
        .start();

    for case in [alpha, beta] {
        let response = chat(&gateway, case.model);
        assert_eq!(response.status, 503, "{}: {}", case.name, response.text());
        let body = response.json();
        assert_eq!(body["error"]["type"], "upstream_error", "{body}");
        assert!(
            !response.text().contains(case.secret),
            "{}: {}",
            case.name,
            response.text()
        );
    }
    assert!(
        stand_in.upstream.requests().is_empty(),
        "{:?}",
        stand_in.upstream.requests()
    );
    // Refused by the gateway's certificate checks, each for its reason.
    for (cluster, reason) in [
        ("provider_alpha", "envoy_cluster_ssl_fail_verify_error"),
        ("provider_beta", "envoy_cluster_ssl_fail_verify_san"),
    ] {
        let failures = gateway.metric(reason, &[("envoy_cluster_name", cluster)]);
        assert!(
            failures.is_some_and(|n| n >= 1.0),
            "{cluster} {reason}: {failures:?}"
        );
    }
}

#[test]
fn provider_bootstraps_validate() {
    envoy_binary();
    let dir = ScratchDir::create().unwrap();
    let ca = TestCa::create("maas test provider CA");
    let secrets = write_secrets(dir.path());
    let front: SocketAddr = "127.0.0.1:8443".parse().unwrap();
    let mut providers: Vec<ProviderSpec> = CASES
        .iter()
        .zip(&secrets)
        .map(|(case, secret)| provider(case, front, PROVIDER_HOST, ca.cert(), secret))
        .collect();
    // A host name to resolve, and the system trust store.
    providers[0].address = "api.provider.test".into();
    providers[0].ca_file = None;
    write_credential_sds(dir.path(), &providers).unwrap();
    for wasm_path in [filter_wasm(), passthrough_wasm_file().unwrap()] {
        let spec = GatewaySpec {
            listen_port: 8080,
            admin_port: 9901,
            wasm_path,
            filter_config: filter_config(&[
                "m1",
                "ext-model",
                "ext-azure",
                "ext-bearer",
                "ext-gemini",
            ]),
            access_log_path: "/dev/null".into(),
            models: vec![("m1".into(), "127.0.0.1:8000".parse().unwrap())],
            providers: providers.clone(),
            credential_sds_dir: Some(dir.path().to_owned()),
            control_plane: None,
            limiter: None,
            oidc: None,
        };
        let rendered = render_gateway(&gateway_template(), &spec).expect("renders");
        assert!(rendered.contains("type: STRICT_DNS"));
        validate_yaml(&rendered).unwrap_or_else(|error| panic!("{error}\n{rendered}"));
    }
}
