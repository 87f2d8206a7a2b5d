//! External providers in the mesh, checked without a cluster: the rendering
//! from a providers file and a filter configuration covers all three kinds,
//! passes the CRD schemas, names Secrets but never holds a credential,
//! refuses a providers file that disagrees with the filter configuration,
//! matches the checked-in `istio/providers/`, and Envoy accepts the
//! injector as Istio would patch it into the provider's cluster.

// Test helpers fail the test by panicking, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use maas_filter::backend::BackendConfig;
use maas_filter::config::Config;
use maas_mesh::crd::{CrdCatalog, Verdict};
use maas_mesh::istio::providers::{self, MeshProviders, ProvidersError};
use maas_mesh::istio::{self, MeshSettings};
use maas_mesh::manifest;
use serde_json::{json, Value};

fn root() -> PathBuf {
    maas_testkit::workspace_root()
}

fn example(file: &str) -> Vec<u8> {
    std::fs::read(root().join("istio/providers/example").join(file)).unwrap()
}

fn example_providers() -> MeshProviders {
    MeshProviders::parse(&example("providers.json")).unwrap()
}

fn template() -> String {
    std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap()
}

/// `providers::render` with the local bootstrap template.
fn render(
    config: &[u8],
    mesh: &MeshProviders,
    settings: &MeshSettings,
) -> Result<Vec<Value>, ProvidersError> {
    providers::render(&template(), config, mesh, settings)
}

fn rendered() -> Vec<Value> {
    render(
        &example("filter-config.json"),
        &example_providers(),
        &MeshSettings::default(),
    )
    .unwrap()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn catalog() -> CrdCatalog {
    CrdCatalog::load(&root().join("third_party/crds")).unwrap()
}

#[test]
fn every_provider_kind_gets_its_entry_rule_route_and_injector() {
    let docs = rendered();
    let config: Value = serde_json::from_slice(&example("filter-config.json")).unwrap();
    let kinds: Vec<&str> = config["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["openai-compatible", "azure-openai", "anthropic"]);
    let route = named(&docs, "HTTPRoute", providers::PROVIDERS_ROUTE);
    let injector = named(&docs, "EnvoyFilter", providers::INJECTOR_ENVOY_FILTER);
    for provider in &example_providers().providers {
        let name = format!("maas-provider-{}", provider.name);
        let entry = &named(&docs, "ServiceEntry", &name)["spec"];
        assert_eq!(entry["hosts"], json!([provider.host]));
        assert_eq!(entry["location"], "MESH_EXTERNAL");
        assert_eq!(entry["resolution"], "DNS");
        assert_eq!(entry["ports"][0]["targetPort"], provider.port);
        let rule = &named(&docs, "DestinationRule", &name)["spec"];
        assert_eq!(rule["host"], provider.host);
        let tls = &rule["trafficPolicy"]["portLevelSettings"][0]["tls"];
        assert_eq!(tls["mode"], "SIMPLE");
        assert_eq!(tls["sni"], provider.host);
        assert_eq!(tls["subjectAltNames"], json!([provider.host]));
        assert_eq!(tls["caCertificates"], istio::SYSTEM_CA_FILE);
        let patch = injector["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["match"]["cluster"]["service"] == provider.host.as_str())
            .unwrap_or_else(|| panic!("no injector for {}", provider.name));
        assert_eq!(patch["match"]["context"], "GATEWAY");
        assert_eq!(
            patch["match"]["cluster"]["portNumber"],
            entry["ports"][0]["number"]
        );
        let options = &patch["patch"]["value"]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let filters = options["http_filters"].as_array().unwrap();
        let names: Vec<&str> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                providers::BACKEND_FILTER_NAME,
                "envoy.filters.http.credential_injector",
                "envoy.filters.http.upstream_codec"
            ]
        );
        // The backend role, configured with the filter's own document for
        // this provider and loaded as the gateway role is.
        let backend = &filters[0]["typed_config"]["config"];
        let document: Value =
            serde_json::from_str(backend["configuration"]["value"].as_str().unwrap()).unwrap();
        let parsed = Config::from_json(&example("filter-config.json")).unwrap();
        assert_eq!(
            Some(document),
            BackendConfig::document_for(&parsed, &provider.name)
        );
        let remote = &backend["vm_config"]["code"]["remote"];
        assert_eq!(remote["http_uri"]["cluster"], istio::WASM_SOURCE_CLUSTER);
        assert_eq!(remote["sha256"], MeshSettings::default().wasm.sha256);
        let injector = &filters[1]["typed_config"];
        assert_eq!(injector["overwrite"], true);
        let generic = &injector["credential"]["typed_config"];
        assert_eq!(generic["header"], provider.credential.header);
        assert_eq!(
            generic.get("header_value_prefix").and_then(Value::as_str),
            provider.credential.prefix.as_deref()
        );
        assert_eq!(
            options["explicit_http_config"]
                .get("http2_protocol_options")
                .is_some(),
            provider.http2
        );
    }
    // Every external model, and only those, routed to its provider's host
    // with the Host rewritten and the identity and credential headers gone.
    let mut routed = Vec::new();
    for rule in route["spec"]["rules"].as_array().unwrap() {
        let model = rule["matches"][0]["headers"][0]["value"].as_str().unwrap();
        let backend = &rule["backendRefs"][0];
        assert_eq!(backend["group"], "networking.istio.io");
        assert_eq!(backend["kind"], "Hostname");
        assert_eq!(
            rule["filters"][1]["urlRewrite"]["hostname"],
            backend["name"]
        );
        let removed = &rule["filters"][0]["requestHeaderModifier"]["remove"];
        for header in [
            "x-maas-user",
            "x-maas-key-id",
            "x-maas-subscription",
            "authorization",
            "x-api-key",
            "api-key",
        ] {
            assert!(
                removed.as_array().unwrap().contains(&json!(header)),
                "{header}"
            );
        }
        routed.push((
            model.to_string(),
            backend["name"].as_str().unwrap().to_string(),
        ));
    }
    let mesh = example_providers();
    let hosts: std::collections::BTreeMap<&str, &str> = mesh
        .providers
        .iter()
        .map(|p| (p.name.as_str(), p.host.as_str()))
        .collect();
    let want: Vec<(String, String)> = config["external_models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                hosts[m["provider"].as_str().unwrap()].to_string(),
            )
        })
        .collect();
    assert_eq!(routed, want);
}

#[test]
fn a_ca_secret_becomes_the_destination_rules_credential_name() {
    let mut file: Value = serde_json::from_slice(&example("providers.json")).unwrap();
    file["providers"][1]["ca_secret"] = json!("azure-east-ca");
    let mesh = MeshProviders::parse(file.to_string().as_bytes()).unwrap();
    let docs = render(
        &example("filter-config.json"),
        &mesh,
        &MeshSettings::default(),
    )
    .unwrap();
    let tls = &named(&docs, "DestinationRule", "maas-provider-azure-east")["spec"]["trafficPolicy"]
        ["portLevelSettings"][0]["tls"];
    assert_eq!(tls["credentialName"], "azure-east-ca");
    assert!(tls.get("caCertificates").is_none());
    assert_eq!(catalog().validate(&docs[3]), Verdict::Valid);
}

#[test]
fn the_rendering_passes_the_crd_schemas_and_a_broken_one_does_not() {
    let catalog = catalog();
    let docs = rendered();
    let mut checked = std::collections::BTreeSet::new();
    for doc in &docs {
        match catalog.validate(doc) {
            Verdict::Valid => {
                checked.insert(doc["kind"].as_str().unwrap());
            }
            Verdict::UnknownKind => assert_eq!(doc["apiVersion"], "v1", "{doc}"),
            Verdict::Invalid(errors) => panic!("{}:\n{}", doc["kind"], errors.join("\n")),
        }
    }
    for kind in [
        "ServiceEntry",
        "DestinationRule",
        "HTTPRoute",
        "EnvoyFilter",
    ] {
        assert!(checked.contains(kind), "{kind} not validated: {checked:?}");
    }
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 3] = [
        ("ServiceEntry", |d| d["spec"]["location"] = json!("OUTSIDE")),
        ("DestinationRule", |d| {
            d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = json!("TLS")
        }),
        ("HTTPRoute", |d| {
            d["spec"]["rules"][0]["filters"][1]["urlRewrite"]["host"] = json!("x")
        }),
    ];
    for (kind, mutate) in breakages {
        let mut doc = of_kind(&docs, kind)[0].clone();
        mutate(&mut doc);
        assert!(
            matches!(catalog.validate(&doc), Verdict::Invalid(_)),
            "a broken {kind} passed"
        );
    }
}

#[test]
fn no_credential_is_rendered_or_accepted() {
    let docs = rendered();
    let text = manifest::to_yaml_stream("", &docs).unwrap();
    // No Secret, no inline secret source: only file paths and Secret names.
    assert!(of_kind(&docs, "Secret").is_empty());
    for inline in [
        "inline_string",
        "inline_bytes",
        "environment_variable",
        "stringData",
    ] {
        assert!(!text.contains(inline), "{inline} in the rendering");
    }
    let sds = named(&docs, "ConfigMap", providers::SDS_CONFIG_MAP);
    for (file, body) in sds["data"].as_object().unwrap() {
        let body = body.as_str().unwrap();
        assert!(
            body.contains(&format!("filename: \"{}/", providers::SECRET_DIR)),
            "{file}: {body}"
        );
    }
    // The gateway mounts each provider's Secret where its SDS file points.
    let overlay: Value = serde_yaml_ng::from_str(
        named(&docs, "ConfigMap", providers::GATEWAY_PARAMETERS)["data"]["deployment"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let volumes = overlay["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    for provider in &example_providers().providers {
        assert!(volumes.iter().any(|v| v["secret"]["secretName"]
            == provider.credential.secret.as_str()
            && v["secret"]["items"][0]["key"] == provider.credential.key.as_str()));
    }
    // A key in the providers file is refused, and not repeated.
    let mut file: Value = serde_json::from_slice(&example("providers.json")).unwrap();
    file["providers"][0]["credential"]["value"] = json!("sk-proj-DO-NOT-PRINT");
    let err = MeshProviders::parse(file.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `value`"), "{err}");
    assert!(!err.contains("DO-NOT-PRINT"), "{err}");
}

#[test]
fn a_providers_file_that_disagrees_with_the_filter_configuration_is_refused() {
    let config = example("filter-config.json");
    let settings = MeshSettings::default();
    let without = |name: &str| {
        let mut file: Value = serde_json::from_slice(&example("providers.json")).unwrap();
        file["providers"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p["name"] != name);
        MeshProviders::parse(file.to_string().as_bytes()).unwrap()
    };
    let err = render(&config, &without("anthropic"), &settings).unwrap_err();
    assert!(matches!(err, ProvidersError::MissingInMesh { .. }));
    assert_eq!(
        err.to_string(),
        "the filter configuration's provider \"anthropic\" (serving [\"claude-sonnet\"]) has no \
         entry in the providers file: the mesh would not know its host or credential"
    );
    let mut extra: Value = serde_json::from_slice(&example("providers.json")).unwrap();
    let mut copy = extra["providers"][0].clone();
    copy["name"] = json!("mistral");
    extra["providers"].as_array_mut().unwrap().push(copy);
    let extra = MeshProviders::parse(extra.to_string().as_bytes()).unwrap();
    assert_eq!(
        render(&config, &extra, &settings).unwrap_err().to_string(),
        "the providers file describes \"mistral\", which the filter configuration's \
         `providers` does not name: the filter would never route to it"
    );
    let local = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    assert!(matches!(
        render(&local, &example_providers(), &settings),
        Err(ProvidersError::NoProviders)
    ));
    // And the CLI says so, naming the provider.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
        .args([
            "render-providers",
            "--providers",
            "istio/providers/example/providers.json",
            "--out",
        ])
        .arg(std::env::temp_dir().join("maas-mesh-providers.yaml"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no `providers`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_checked_in_providers_are_the_rendering_of_the_example() {
    let checked_in =
        manifest::read_documents(&root().join("istio/providers/providers.yaml")).unwrap();
    assert_eq!(
        checked_in,
        rendered(),
        "istio/providers/providers.yaml is stale: run `cargo run -p maas-mesh -- \
         render-providers --filter-config istio/providers/example/filter-config.json \
         --providers istio/providers/example/providers.json`"
    );
    // The example is the local configuration plus its providers, nothing else.
    let mut example: Value = serde_json::from_slice(&example("filter-config.json")).unwrap();
    let map = example.as_object_mut().unwrap();
    map.remove("providers");
    map.remove("external_models");
    map.remove("fallbacks");
    let local: Value =
        serde_json::from_slice(&std::fs::read(root().join("envoy/filter-config.json")).unwrap())
            .unwrap();
    assert_eq!(
        example, local,
        "istio/providers/example/filter-config.json drifted"
    );
}

#[test]
fn the_models_route_leaves_external_models_to_the_providers_route() {
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let files = istio::render(
        &template,
        &example("filter-config.json"),
        &MeshSettings::default(),
    )
    .unwrap();
    let routes = files
        .iter()
        .find(|f| f.path == "gateway/routes.yaml")
        .unwrap();
    let models: Vec<&Value> = routes.docs[0]["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["matches"][0]["headers"][0]["value"])
        .collect();
    assert_eq!(models, [&json!("smollm2-135m-instruct")]);
}

#[test]
fn envoy_accepts_the_providers_clusters_and_the_failover_routes() {
    maas_testkit::artifacts::ENVOY.require();
    let docs = rendered();
    let dir = std::env::temp_dir().join(format!("maas-mesh-providers-{}", std::process::id()));
    let sds_dir = dir.join("sds");
    std::fs::create_dir_all(&sds_dir).unwrap();
    let relocate = |s: &str| {
        s.replace(providers::SDS_DIR, sds_dir.to_str().unwrap())
            .replace(providers::SECRET_DIR, dir.to_str().unwrap())
    };
    // The SDS files as the ConfigMap mounts them, and stand-in keys.
    let sds = named(&docs, "ConfigMap", providers::SDS_CONFIG_MAP);
    for (file, body) in sds["data"].as_object().unwrap() {
        std::fs::write(sds_dir.join(file), relocate(body.as_str().unwrap())).unwrap();
    }
    for provider in &example_providers().providers {
        let secret_dir = dir.join(&provider.name);
        std::fs::create_dir_all(&secret_dir).unwrap();
        std::fs::write(secret_dir.join("credential"), "test-key\n").unwrap();
    }
    // Each cluster as Istio builds it from the ServiceEntry and the
    // DestinationRule, with the EnvoyFilter's MERGE applied.
    let injector = named(&docs, "EnvoyFilter", providers::INJECTOR_ENVOY_FILTER);
    let mut clusters = Vec::new();
    for patch in injector["spec"]["configPatches"].as_array().unwrap() {
        let host = patch["match"]["cluster"]["service"].as_str().unwrap();
        let name = format!("outbound|80||{host}");
        let mut cluster = json!({
            "name": name, "type": "STRICT_DNS", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": 443}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {"validation_context": {
                    "trusted_ca": {"filename": istio::SYSTEM_CA_FILE},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": host}}]}}}},
        });
        let value: Value =
            serde_json::from_str(&relocate(&patch["patch"]["value"].to_string())).unwrap();
        cluster["typed_extension_protocol_options"] =
            value["typed_extension_protocol_options"].clone();
        clusters.push(cluster);
    }
    // What the backend role fetches its code through, and the inference
    // Service's cluster (a local model's first backend), as Istio has them.
    let settings = MeshSettings::default();
    clusters.extend(
        istio::clusters(&settings)
            .unwrap()
            .into_iter()
            .filter(|c| c["name"] == istio::WASM_SOURCE_CLUSTER),
    );
    let local = "outbound|8000||maas-inference-server.maas.svc.cluster.local";
    clusters.push(json!({
        "name": local, "type": "STRICT_DNS", "connect_timeout": "5s",
        "load_assignment": {"cluster_name": local, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "maas-inference-server.maas.svc.cluster.local", "port_value": 8000}}}}]}]},
    }));
    // The gateway's route configuration with the failover patches merged
    // (Istio's proto merge replaces the rule's `cluster` and Host rewrite,
    // members of the oneofs the patch sets).
    let failover = named(&docs, "EnvoyFilter", providers::FAILOVER_ENVOY_FILTER);
    let mut vhost = json!({"name": "*:80", "domains": ["*"], "routes": []});
    for patch in failover["spec"]["configPatches"].as_array().unwrap() {
        let value = &patch["patch"]["value"];
        match patch["applyTo"].as_str().unwrap() {
            "VIRTUAL_HOST" => {
                for (key, field) in value.as_object().unwrap() {
                    vhost[key] = field.clone();
                }
            }
            "HTTP_ROUTE" => vhost["routes"].as_array_mut().unwrap().push(json!({
                "name": patch["match"]["routeConfiguration"]["vhost"]["route"]["name"],
                "match": {"prefix": "/v1/"},
                "route": value["route"],
            })),
            other => panic!("unexpected patch of {other}"),
        }
    }
    let listener = json!({
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "gateway",
                "route_config": {"name": "http.80", "virtual_hosts": [vhost]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    });
    let bootstrap = json!({
        "node": {"id": "maas-gateway-test", "cluster": "maas-gateway.maas"},
        "static_resources": {"clusters": clusters, "listeners": [listener]},
    });
    let result = maas_testkit::validate_yaml(&serde_yaml_ng::to_string(&bootstrap).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| panic!("Envoy refuses the providers' clusters or routes: {e}"));
}

/// Istio's route name of each model's rule: `<ns>.<HTTPRoute>.<rule index>`
/// in `maas-providers` (rendered here) or `maas-models` (by render-istio
/// from the same configuration).
fn istio_routes(docs: &[Value]) -> std::collections::BTreeMap<String, String> {
    let files = istio::render(
        &template(),
        &example("filter-config.json"),
        &MeshSettings::default(),
    )
    .unwrap();
    let models = &files
        .iter()
        .find(|f| f.path == "gateway/routes.yaml")
        .unwrap()
        .docs[0];
    let mut names = std::collections::BTreeMap::new();
    for route in [models, named(docs, "HTTPRoute", providers::PROVIDERS_ROUTE)] {
        for (i, rule) in route["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let model = rule["matches"][0]["headers"][0]["value"].as_str().unwrap();
            let name = format!("maas.{}.{i}", route["metadata"]["name"].as_str().unwrap());
            assert!(names.insert(model.to_string(), name).is_none(), "{model}");
        }
    }
    names
}

/// The failover patch's route action for a route, found by name.
fn failover_route<'a>(docs: &'a [Value], route: &str) -> &'a Value {
    let failover = named(docs, "EnvoyFilter", providers::FAILOVER_ENVOY_FILTER);
    let patch = failover["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["match"]["routeConfiguration"]["vhost"]["route"]["name"] == route)
        .unwrap_or_else(|| panic!("no failover patch of {route}: {failover}"));
    assert_eq!(patch["applyTo"], "HTTP_ROUTE");
    assert_eq!(patch["match"]["context"], "GATEWAY");
    assert_eq!(patch["patch"]["operation"], "MERGE");
    &patch["patch"]["value"]["route"]
}

/// The clusters a failover route tries, in order.
fn chain(action: &Value) -> Vec<String> {
    let matcher =
        &action["inline_cluster_specifier_plugin"]["extension"]["typed_config"]["cluster_matcher"];
    let cluster = |a: &Value| {
        a["action"]["typed_config"]["cluster"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let map = matcher["matcher_tree"]["exact_match_map"]["map"]
        .as_object()
        .unwrap();
    let mut clusters = vec![cluster(&matcher["on_no_match"])];
    for k in 1..=map.len() {
        clusters.push(cluster(&map[&k.to_string()]));
    }
    clusters
}

#[test]
fn models_with_fallbacks_get_their_istio_route_patched_over_istios_cluster_names() {
    let docs = rendered();
    let failover = named(&docs, "EnvoyFilter", providers::FAILOVER_ENVOY_FILTER);
    assert_eq!(
        failover["spec"]["targetRefs"][0]["name"],
        MeshSettings::default().gateway
    );
    let vhost = &failover["spec"]["configPatches"][0];
    assert_eq!(vhost["applyTo"], "VIRTUAL_HOST");
    assert_eq!(
        vhost["patch"]["value"],
        json!({"include_request_attempt_count": true})
    );
    let routes = istio_routes(&docs);
    // An external model's route: its rule in maas-providers.
    assert!(routes["gpt-4.1-mini"].starts_with("maas.maas-providers."));
    let action = failover_route(&docs, &routes["gpt-4.1-mini"]);
    assert_eq!(
        chain(action),
        [
            "outbound|80||api.openai.com",
            "outbound|80||example-east.openai.azure.com"
        ]
    );
    // Each attempt gets its own provider's Host, not the first one's.
    assert_eq!(action["auto_host_rewrite"], true);
    let retry = &action["retry_policy"];
    assert_eq!(retry["retry_on"], providers::RETRY_ON);
    assert_eq!(retry["retriable_status_codes"], json!([429]));
    assert_eq!(retry["num_retries"], 1);
    assert_eq!(retry["refresh_cluster_on_retry"], true);
    let input = &action["inline_cluster_specifier_plugin"]["extension"]["typed_config"]
        ["cluster_matcher"]["matcher_tree"]["input"]["typed_config"];
    assert_eq!(input["header_name"], providers::ATTEMPT_HEADER);
    // A local model's route: its rule in the maas-models that render-istio
    // writes from the same configuration.
    assert_eq!(routes["smollm2-135m-instruct"], "maas.maas-models.0");
    let action = failover_route(&docs, &routes["smollm2-135m-instruct"]);
    assert_eq!(
        chain(action),
        [
            "outbound|8000||maas-inference-server.maas.svc.cluster.local",
            "outbound|80||api.openai.com",
            "outbound|80||api.anthropic.com"
        ]
    );
    assert_eq!(action["retry_policy"]["num_retries"], 2);
    // Only the chained models are patched, and without fallbacks there is
    // no failover EnvoyFilter at all.
    assert_eq!(
        failover["spec"]["configPatches"].as_array().unwrap().len(),
        3
    );
    let mut config: Value = serde_json::from_slice(&example("filter-config.json")).unwrap();
    config.as_object_mut().unwrap().remove("fallbacks");
    let docs = render(
        config.to_string().as_bytes(),
        &example_providers(),
        &MeshSettings::default(),
    )
    .unwrap();
    assert!(of_kind(&docs, "EnvoyFilter")
        .iter()
        .all(|d| d["metadata"]["name"] != providers::FAILOVER_ENVOY_FILTER));
}

#[test]
fn an_oci_module_is_refused_because_envoy_fetches_the_backend_role_itself() {
    let mut settings = MeshSettings::default();
    settings.wasm.url = format!(
        "oci://registry.example.com/maas/maas-filter@sha256:{}",
        "ab".repeat(32)
    );
    let err = render(
        &example("filter-config.json"),
        &example_providers(),
        &settings,
    )
    .unwrap_err();
    assert!(matches!(err, ProvidersError::OciModule(_)), "{err}");
    // The CLI, given only --wasm-oci as for the WasmPlugin, says the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
        .args([
            "render-providers",
            "--filter-config",
            "istio/providers/example/filter-config.json",
            "--providers",
            "istio/providers/example/providers.json",
            "--wasm-oci",
        ])
        .arg(&settings.wasm.url)
        .arg("--out")
        .arg(std::env::temp_dir().join("maas-mesh-providers-oci.yaml"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pass --wasm-url") && stderr.contains("--wasm-sha256"),
        "{stderr}"
    );
}

/// `value` with each string that names one of `clusters` replaced by its
/// position there, so that the local and the mesh's routes compare.
fn clusters_by_position(value: &Value, clusters: &[String]) -> Value {
    match value {
        Value::String(s) => match clusters.iter().position(|c| c == s) {
            Some(k) => json!(format!("#{k}")),
            None => value.clone(),
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| clusters_by_position(v, clusters))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), clusters_by_position(v, clusters)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The mesh mirrors testkit's local rendering of the same configuration:
/// the backend role's settings and document, and the failover route's
/// retry policy and cluster matcher (over other cluster names).
#[test]
fn the_mesh_and_the_local_gateway_agree_on_backend_roles_and_failover() {
    let config: Value = serde_json::from_slice(&example("filter-config.json")).unwrap();
    let mesh = example_providers();
    let spec = maas_testkit::GatewaySpec {
        listen_port: 0,
        admin_port: 0,
        wasm_path: "/opt/maas/maas_filter.wasm".into(),
        filter_config: config.clone(),
        access_log_path: "/dev/null".into(),
        models: vec![(
            "smollm2-135m-instruct".into(),
            "127.0.0.1:8000".parse().unwrap(),
        )],
        providers: mesh
            .providers
            .iter()
            .map(|p| maas_testkit::ProviderSpec {
                name: p.name.clone(),
                address: p.host.clone(),
                port: p.port,
                host: p.host.clone(),
                ca_file: None,
                credential: maas_testkit::CredentialSpec {
                    header: p.credential.header.clone(),
                    value_prefix: p.credential.prefix.clone(),
                    secret_file: "/run/secrets/key".into(),
                },
                models: config["external_models"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["provider"] == p.name.as_str())
                    .map(|m| m["id"].as_str().unwrap().to_string())
                    .collect(),
                http2: p.http2,
                timeout: None,
            })
            .collect(),
        credential_sds_dir: Some("/run/maas-sds".into()),
        control_plane: None,
        limiter: None,
        oidc: None,
    };
    let local: Value = serde_yaml_ng::from_str(
        &maas_testkit::render_gateway(&maas_testkit::gateway_template(), &spec).unwrap(),
    )
    .unwrap();
    let docs = rendered();
    let credentials = named(&docs, "EnvoyFilter", providers::INJECTOR_ENVOY_FILTER);
    let without_code_and_document = |filter: &Value| {
        let mut config = filter["typed_config"]["config"].clone();
        let document: Value =
            serde_json::from_str(config["configuration"]["value"].as_str().unwrap()).unwrap();
        config["configuration"]["value"] = json!("(document)");
        config["vm_config"]["code"] = json!("(code)");
        (config, document)
    };
    for provider in &mesh.providers {
        let local_cluster = local["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == format!("provider_{}", provider.name))
            .unwrap_or_else(|| panic!("no local cluster of {}", provider.name));
        let local_backend = &local_cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0];
        let patch = credentials["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["match"]["cluster"]["service"] == provider.host.as_str())
            .unwrap();
        let mesh_backend = &patch["patch"]["value"]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"][0];
        assert_eq!(
            without_code_and_document(mesh_backend),
            without_code_and_document(local_backend),
            "{}",
            provider.name
        );
    }
    let local_routes = local["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"]["route_config"]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["include_request_attempt_count"] == true)
        .unwrap()["routes"]
        .as_array()
        .unwrap()
        .clone();
    let routes = istio_routes(&docs);
    let fallbacks = config["fallbacks"].as_object().unwrap();
    assert!(!fallbacks.is_empty());
    for model in fallbacks.keys() {
        let action = failover_route(&docs, &routes[model]);
        let local_action = &local_routes
            .iter()
            .find(|r| r["match"]["headers"][0]["string_match"]["exact"] == model.as_str())
            .unwrap_or_else(|| panic!("no local route of {model}"))["route"];
        for field in [
            "retry_policy",
            "inline_cluster_specifier_plugin",
            "auto_host_rewrite",
        ] {
            assert_eq!(
                clusters_by_position(&action[field], &chain(action)),
                clusters_by_position(&local_action[field], &chain(local_action)),
                "{model}: {field}"
            );
        }
    }
}

#[test]
fn the_cli_renders_the_example_and_says_how_the_gateway_mounts_the_keys() {
    let out_file = std::env::temp_dir().join(format!(
        "maas-mesh-providers-cli-{}.yaml",
        std::process::id()
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
        .args([
            "render-providers",
            "--filter-config",
            "istio/providers/example/filter-config.json",
            "--providers",
            "istio/providers/example/providers.json",
            "--out",
        ])
        .arg(&out_file)
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(manifest::read_documents(&out_file).unwrap(), rendered());
    let _ = std::fs::remove_file(&out_file);
    // The Gateway patch it prints is the one docs/mesh.md gives.
    let patch = providers::gateway_patch().to_string();
    assert!(stderr.contains(&patch), "{stderr}");
    let docs = std::fs::read_to_string(root().join("docs/mesh.md")).unwrap();
    assert!(
        docs.contains(&patch),
        "docs/mesh.md does not give the Gateway patch {patch}"
    );
}

/// `maas-providers` has one rule per external model, and an HTTPRoute takes
/// at most 16: more is refused at render, saying why.
#[test]
fn the_providers_route_stays_within_the_rules_an_httproute_takes() {
    let mut config: Value = serde_json::from_slice(&example("filter-config.json")).unwrap();
    let externals = config["external_models"].as_array_mut().unwrap();
    let have = externals.len();
    for i in have..17 {
        externals.push(
            json!({"id": format!("gpt-extra-{i}"), "provider": "openai", "model": "gpt-4.1"}),
        );
    }
    let err = render(
        config.to_string().as_bytes(),
        &example_providers(),
        &MeshSettings::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ProvidersError::RouteRules(17)), "{err}");
    assert!(err.to_string().contains("1 to 16 rules"), "{err}");
    config["external_models"].as_array_mut().unwrap().pop();
    let docs = render(
        config.to_string().as_bytes(),
        &example_providers(),
        &MeshSettings::default(),
    )
    .unwrap();
    let route = named(&docs, "HTTPRoute", "maas-providers");
    assert_eq!(route["spec"]["rules"].as_array().unwrap().len(), 16);
}
