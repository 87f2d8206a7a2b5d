//! The clusters the filter calls from inside the mesh: the control plane
//! and Limitador over Istio mutual TLS (the proxy's own SDS certificate, the
//! peer checked by its SPIFFE id), and the module's source, checked against
//! a CA bundle when it is `https://`.

use serde_json::{json, Value};

use super::{
    envoy_filter, MeshSettings, Placement, RenderError, CONTROL_PLANE_CLUSTER, LIMITADOR_CLUSTER,
    WASM_SOURCE_CLUSTER,
};

/// Where the URL points, for the cluster that fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UrlHost {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
}

pub(super) fn url_host(url: &str) -> Result<UrlHost, RenderError> {
    let bad = |reason| RenderError::WasmUrl {
        url: url.to_string(),
        reason,
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("must start with http:// or https://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad(
            "credentials in the URL would be in every proxy's configuration",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse().map_err(|_| bad("the port is not a number"))?,
        ),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || !rest[authority.len()..].starts_with('/') {
        return Err(bad("expected scheme://host[:port]/path"));
    }
    Ok(UrlHost {
        tls,
        host: host.to_string(),
        port,
    })
}

/// Istio mutual TLS to a workload of the mesh, as Istio's own clusters do
/// it: the proxy's certificate and roots from its SDS (`sds-grpc`), the
/// peer verified by its service account's SPIFFE id.
fn istio_mtls(settings: &MeshSettings, service: &str, port: u16, h2: bool) -> Value {
    let sds = |name: &str| {
        json!({
            "name": name,
            "sds_config": {
                "api_config_source": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{ "envoy_grpc": { "cluster_name": "sds-grpc" } }],
                },
                "resource_api_version": "V3",
            }
        })
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": format!("outbound_.{port}_._.{}", settings.service_host(service)),
            "common_tls_context": {
                // Istio's own ALPN for in-mesh clusters, with `h2` for an
                // HTTP/2 one (its ALPNInMeshH2WithMxc).
                "alpn_protocols": if h2 {
                    json!(["istio-peer-exchange", "istio", "h2"])
                } else {
                    json!(["istio-peer-exchange", "istio"])
                },
                "tls_certificate_sds_secret_configs": [sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{
                            "san_type": "URI",
                            "matcher": { "exact": format!(
                                "spiffe://{}/ns/{}/sa/{service}",
                                settings.trust_domain, settings.namespace
                            ) },
                        }]
                    },
                    "validation_context_sds_secret_config": sds("ROOTCA"),
                }
            }
        }
    })
}

fn dns_cluster(name: &str, host: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": host, "port_value": port }
            } } }] }],
        }
    })
}

/// The clusters the filter calls: the control plane (HTTP/1.1), Limitador
/// (gRPC over h2), and where the module is fetched from.
pub fn clusters(settings: &MeshSettings) -> Result<Vec<Value>, RenderError> {
    let mut control_plane = dns_cluster(
        CONTROL_PLANE_CLUSTER,
        &settings.service_host(&settings.control_plane),
        settings.control_plane_port,
    );
    control_plane["transport_socket"] = istio_mtls(
        settings,
        &settings.control_plane,
        settings.control_plane_port,
        false,
    );

    let mut limiter = dns_cluster(
        LIMITADOR_CLUSTER,
        &settings.service_host(&settings.limiter),
        settings.limiter_port,
    );
    limiter["transport_socket"] =
        istio_mtls(settings, &settings.limiter, settings.limiter_port, true);
    limiter["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        }
    });

    let source = url_host(&settings.wasm.url)?;
    let mut wasm_source = dns_cluster(WASM_SOURCE_CLUSTER, &source.host, source.port);
    if source.tls {
        // The checksum already refuses other bytes; the certificate check
        // keeps a proxy from talking to whoever answers for the host.
        wasm_source["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": source.host,
                "common_tls_context": { "validation_context": {
                    "trusted_ca": { "filename": settings.wasm.ca_file },
                    "match_typed_subject_alt_names": [{
                        "san_type": "DNS",
                        "matcher": { "exact": source.host },
                    }],
                } },
            }
        });
    }
    Ok(vec![control_plane, limiter, wasm_source])
}

/// The `EnvoyFilter` adding [`clusters`] to the proxies of `placement`.
pub fn clusters_envoy_filter(
    placement: Placement,
    settings: &MeshSettings,
) -> Result<Value, RenderError> {
    let patches: Vec<Value> = clusters(settings)?
        .into_iter()
        .map(|cluster| {
            json!({
                "applyTo": "CLUSTER",
                "match": { "context": placement.cluster_context() },
                "patch": { "operation": "ADD", "value": cluster },
            })
        })
        .collect();
    let name = format!("maas-clusters-{}", placement.label());
    Ok(envoy_filter(&name, placement, settings, None, patches))
}
