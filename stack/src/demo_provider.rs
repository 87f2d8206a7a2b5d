//! The demo's external model: `make run` serves one model id through an
//! external provider, a local stand-in that speaks Anthropic's Messages API
//! (testkit's mock behind a TLS-terminating Envoy whose certificate a
//! throwaway CA signed). So `/v1/models` lists a local and an external
//! model, both answer the same key, and the external one goes through what
//! a real provider gets: the filter's translation, TLS verified against a
//! CA, the credential Envoy injects from a secret file.
//!
//! Added only when the filter configuration names no `providers` of its
//! own, and skipped with `--no-demo-provider`. If it cannot start (no
//! `openssl` to make the certificates), the stack serves without it and the
//! banner says why: the local model is what `make run` is for.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use maas_filter::providers::ProviderKind;
use maas_testkit::envoy::TlsFront;
use maas_testkit::private_file::write_private;
use maas_testkit::{CredentialSpec, MockUpstream, ProviderSpec, TestCa};

/// The public id of the demo's external model.
pub const DEMO_EXTERNAL_MODEL: &str = "claude-demo";
/// The provider's name (its Envoy cluster is `provider_demo-anthropic`).
const PROVIDER: &str = "demo-anthropic";
/// The stand-in's host name: its certificate's SAN, the SNI, the `Host`.
const HOST: &str = "anthropic.demo.internal";
/// What the stand-in calls the model (the filter writes it into the
/// Messages request).
const UPSTREAM_MODEL: &str = "claude-mock-1";
/// What the stand-in speaks (testkit's mock answers it at `/v1/messages`).
const KIND: ProviderKind = ProviderKind::Anthropic;
/// The stand-in keeps this many requests, no more.
const RECORD_LIMIT: usize = 100;

/// A running stand-in provider. Fields drop in order: the TLS front before
/// the mock behind it, the CA's files last.
pub struct DemoProvider {
    front: TlsFront,
    /// Serves behind the front.
    _upstream: MockUpstream,
    ca: TestCa,
    secret_file: PathBuf,
}

impl DemoProvider {
    /// Starts the stand-in and writes its credential (a random key, owner
    /// only) into `dir`.
    pub fn start(envoy: &Path, dir: &Path) -> Result<Self, String> {
        let ca = TestCa::try_create("maas demo provider CA")?;
        let cert = ca.try_issue(HOST)?;
        let upstream = MockUpstream::builder()
            .record_limit(Some(RECORD_LIMIT))
            .start();
        let front = TlsFront::try_start(envoy, &cert.cert, &cert.key, upstream.addr())?;
        let secret_file = dir.join("demo-provider.key");
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|error| format!("no randomness for the key: {error}"))?;
        let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&secret_file, format!("sk-ant-demo-{key}\n"))
            .map_err(|error| format!("cannot write {}: {error}", secret_file.display()))?;
        Ok(Self {
            front,
            _upstream: upstream,
            ca,
            secret_file,
        })
    }

    /// The gateway's provider cluster for it.
    pub fn spec(&self) -> ProviderSpec {
        let (header, prefix) = KIND.credential_header();
        ProviderSpec {
            name: PROVIDER.into(),
            address: self.front.addr().ip().to_string(),
            port: self.front.addr().port(),
            host: HOST.into(),
            ca_file: Some(self.ca.cert().to_owned()),
            credential: CredentialSpec {
                header: header.into(),
                value_prefix: prefix.map(str::to_owned),
                secret_file: self.secret_file.clone(),
            },
            models: vec![DEMO_EXTERNAL_MODEL.into()],
            http2: true,
            timeout: None,
        }
    }

    /// For the banner.
    pub fn describe(&self) -> String {
        format!(
            "https://{HOST} at {} (a stand-in Anthropic provider: testkit's mock behind TLS; model {DEMO_EXTERNAL_MODEL}, key in {})",
            self.front.addr(),
            self.secret_file.display()
        )
    }
}

/// The filter configuration's half: the provider and its model.
pub fn add_to_filter_config(config: &mut Value) {
    config["providers"] = json!([{ "name": PROVIDER, "kind": KIND.as_str() }]);
    config["external_models"] = json!([
        { "id": DEMO_EXTERNAL_MODEL, "provider": PROVIDER, "model": UPSTREAM_MODEL }
    ]);
}

/// Whether the configuration brings its own providers (then the demo adds
/// none).
pub fn has_providers(config: &Value) -> bool {
    config
        .get("providers")
        .and_then(Value::as_array)
        .is_some_and(|providers| !providers.is_empty())
}
