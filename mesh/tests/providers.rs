//! External providers in the mesh, checked without a cluster: the rendering
//! from a providers file and a filter configuration covers all three kinds,
//! passes the CRD schemas, names Secrets but never holds a credential,
//! refuses a providers file that disagrees with the filter configuration,
//! matches the checked-in `istio/providers/`, and Envoy accepts the
//! injector as Istio would patch it into the provider's cluster.

// Test helpers fail the test by panicking, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

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

fn rendered() -> Vec<Value> {
    providers::render(
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
        assert_eq!(filters[0]["name"], "envoy.filters.http.credential_injector");
        assert_eq!(filters[1]["name"], "envoy.filters.http.upstream_codec");
        let injector = &filters[0]["typed_config"];
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
    let docs = providers::render(
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
    let err = providers::render(&config, &without("anthropic"), &settings).unwrap_err();
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
        providers::render(&config, &extra, &settings)
            .unwrap_err()
            .to_string(),
        "the providers file describes \"mistral\", which the filter configuration's \
         `providers` does not name: the filter would never route to it"
    );
    let local = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    assert!(matches!(
        providers::render(&local, &example_providers(), &settings),
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
fn envoy_accepts_the_injector_in_the_providers_cluster() {
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
    let bootstrap = json!({
        "node": {"id": "maas-gateway-test", "cluster": "maas-gateway.maas"},
        "static_resources": {"clusters": clusters},
    });
    let result = maas_testkit::validate_yaml(&serde_yaml_ng::to_string(&bootstrap).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| panic!("Envoy refuses the providers' clusters: {e}"));
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
