//! Scale-out of the inference server behind the Gateway API Inference
//! Extension (GIE): an `InferencePool` over the inference server's pods,
//! whose endpoint picker (EPP) chooses the replica of each request from the
//! model-server metrics the server exports (`vllm:num_requests_waiting`,
//! `vllm:num_requests_running`).
//!
//! Opt-in (`render-istio --inference-pool EPP_SERVICE[:PORT]`): without it
//! nothing here is rendered and `maas-models` keeps the Service as its
//! backend. The EPP itself (Deployment, RBAC, Service) comes from the GIE
//! project's chart; the pool only names its Service.

use std::fmt;
use std::str::FromStr;

use serde_json::{json, Value};

use super::{metadata, MeshSettings};

/// The API group of `InferencePool` (GIE's `v1`).
pub const INFERENCE_POOL_GROUP: &str = "inference.networking.k8s.io";
/// The EPP's ext_proc port in GIE's chart.
pub const DEFAULT_EPP_PORT: u16 = 9002;

/// The endpoint picker's Service, as `--inference-pool` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPicker {
    /// A Service in the mesh namespace (a DNS-1035 label).
    pub service: String,
    /// Its ext_proc port, [`DEFAULT_EPP_PORT`] unless given.
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointPickerError {
    #[error(
        "--inference-pool {0:?}: the EPP Service name must be 1 to 63 lowercase letters, \
         digits or '-', starting with a letter and ending with a letter or digit"
    )]
    Service(String),
    #[error("--inference-pool {0:?}: the EPP port must be a number from 1 to 65535")]
    Port(String),
}

impl FromStr for EndpointPicker {
    type Err = EndpointPickerError;

    /// `NAME` or `NAME:PORT`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (service, port) = match value.split_once(':') {
            Some((service, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| EndpointPickerError::Port(value.to_string()))?;
                (service, port)
            }
            None => (value, DEFAULT_EPP_PORT),
        };
        if !is_dns_1035_label(service) {
            return Err(EndpointPickerError::Service(value.to_string()));
        }
        Ok(EndpointPicker {
            service: service.to_string(),
            port,
        })
    }
}

impl fmt::Display for EndpointPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

/// What Kubernetes accepts as a Service name.
fn is_dns_1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The pool over the inference server's pods: the Deployment's pod label
/// (`app.kubernetes.io/name`, as its Service selects), its port, and the
/// EPP. Named as the inference server, whose Service it stands in for.
pub fn inference_pool(settings: &MeshSettings, picker: &EndpointPicker) -> Value {
    json!({
        "apiVersion": format!("{INFERENCE_POOL_GROUP}/v1"),
        "kind": "InferencePool",
        "metadata": metadata(&settings.inference_app, settings),
        "spec": {
            "selector": {
                "matchLabels": { "app.kubernetes.io/name": settings.inference_app },
            },
            "targetPorts": [{ "number": settings.inference_port }],
            // Without the EPP no replica is picked: fail closed (the
            // CRD's default, stated).
            "endpointPickerRef": {
                "name": picker.service,
                "port": { "number": picker.port },
                "failureMode": "FailClose",
            },
        },
    })
}

/// The `backendRefs` of the `maas-models` rules: the pool when there is
/// one (no port: the pool's `targetPorts` say it), else the Service.
pub fn models_backend(settings: &MeshSettings) -> Value {
    match &settings.inference_pool {
        Some(_) => json!([{
            "group": INFERENCE_POOL_GROUP,
            "kind": "InferencePool",
            "name": settings.inference_app,
        }]),
        None => json!([{ "name": settings.inference_app, "port": settings.inference_port }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_names_a_service_and_an_optional_port() {
        let picker = |s: &str| s.parse::<EndpointPicker>();
        assert_eq!(
            picker("maas-epp"),
            Ok(EndpointPicker {
                service: "maas-epp".into(),
                port: DEFAULT_EPP_PORT
            })
        );
        assert_eq!(
            picker("epp1:9010"),
            Ok(EndpointPicker {
                service: "epp1".into(),
                port: 9010
            })
        );
        for (bad, want) in [
            ("", EndpointPickerError::Service(String::new())),
            (":9002", EndpointPickerError::Service(":9002".into())),
            ("Maas-EPP", EndpointPickerError::Service("Maas-EPP".into())),
            ("1epp", EndpointPickerError::Service("1epp".into())),
            ("epp-", EndpointPickerError::Service("epp-".into())),
            ("epp.maas", EndpointPickerError::Service("epp.maas".into())),
            (
                &"e".repeat(64),
                EndpointPickerError::Service("e".repeat(64)),
            ),
            ("epp:", EndpointPickerError::Port("epp:".into())),
            ("epp:0", EndpointPickerError::Port("epp:0".into())),
            ("epp:65536", EndpointPickerError::Port("epp:65536".into())),
            ("epp:grpc", EndpointPickerError::Port("epp:grpc".into())),
            ("epp:9002:1", EndpointPickerError::Port("epp:9002:1".into())),
        ] {
            assert_eq!(picker(bad), Err(want), "{bad:?}");
        }
        let message = picker("epp:x").unwrap_err().to_string();
        assert_eq!(
            message,
            "--inference-pool \"epp:x\": the EPP port must be a number from 1 to 65535"
        );
    }

    #[test]
    fn the_pool_selects_the_inference_pods_on_their_port() {
        let settings = MeshSettings::default();
        let picker = EndpointPicker {
            service: "maas-epp".into(),
            port: 9002,
        };
        let pool = inference_pool(&settings, &picker);
        assert_eq!(pool["metadata"]["name"], "maas-inference-server");
        assert_eq!(pool["metadata"]["namespace"], "maas");
        assert_eq!(
            pool["spec"]["selector"]["matchLabels"],
            json!({ "app.kubernetes.io/name": "maas-inference-server" })
        );
        assert_eq!(pool["spec"]["targetPorts"], json!([{ "number": 8000 }]));
        assert_eq!(
            pool["spec"]["endpointPickerRef"],
            json!({ "name": "maas-epp", "port": { "number": 9002 }, "failureMode": "FailClose" })
        );
    }
}
