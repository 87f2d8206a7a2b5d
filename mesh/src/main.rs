//! `maas-mesh`: render the Istio manifests and Kuadrant policies of the
//! gateway, and validate manifests against their CRDs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use maas_filter::auth::credential::Secret;
use maas_mesh::crd::{CrdCatalog, Verdict};
use maas_mesh::istio::providers::{self, MeshProviders};
use maas_mesh::istio::{
    self, placeholder, EndpointPicker, EppMetricsAccess, EppPodLabels, EppServiceAccount,
    InferencePoolSettings, IstioVersion, MeshSettings, WasmModule, ISTIO_FLOOR,
};
use maas_mesh::kuadrant::KUADRANT_FLOOR;
use maas_mesh::kuadrant::{self, LimitSource, PolicyTarget};
use maas_mesh::manifest;

#[derive(Parser)]
#[command(
    name = "maas-mesh",
    version,
    about = "The MaaS gateway in an Istio mesh, with Kuadrant"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render the EnvoyFilters and the WasmPlugin that load the filter, from
    /// the local Envoy's template and filter configuration.
    RenderIstio(RenderIstio),
    /// Render what the gateway needs for the filter configuration's external
    /// providers (ServiceEntry, DestinationRule, route, the filter's backend
    /// role and the credential injector, fallbacks, mounts) from a providers
    /// file that names each provider's host and credential Secret.
    RenderProviders(RenderProviders),
    /// Print TokenRateLimitPolicy and RateLimitPolicy YAML equivalent to the
    /// subscriptions' limits.
    KuadrantPolicies(KuadrantPolicies),
    /// Check manifests against the OpenAPI schemas of their CRDs.
    Validate(Validate),
}

#[derive(Args)]
struct Common {
    #[arg(long, default_value = "maas")]
    namespace: String,
    /// The Gateway API Gateway in front of the models.
    #[arg(long, default_value = "maas-gateway")]
    gateway: String,
}

#[derive(Args)]
struct RenderIstio {
    #[command(flatten)]
    common: Common,
    /// The filter configuration the local Envoy uses.
    #[arg(long, default_value = "envoy/filter-config.json")]
    filter_config: PathBuf,
    /// The local bootstrap, whose wasm filter settings the mesh mirrors.
    #[arg(long, default_value = "envoy/gateway.template.yaml")]
    envoy_template: PathBuf,
    /// Where proxies fetch maas_filter.wasm (no redirects).
    #[arg(long, default_value = placeholder::WASM_URL)]
    wasm_url: String,
    /// `sha256sum` of that module.
    #[arg(long, default_value = placeholder::WASM_SHA256)]
    wasm_sha256: String,
    /// A file holding the control plane's gateway token (the Secret's
    /// `gateway-token`).
    #[arg(long)]
    gateway_token_file: Option<PathBuf>,
    /// A file holding the key the inference server demands (the Secret
    /// maas-inference-server-key's `api-key`), which the filter presents.
    #[arg(long)]
    model_server_key_file: Option<PathBuf>,
    #[arg(long, default_value = "maas-inference-server")]
    inference_app: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The namespace Prometheus scrapes from (the NetworkPolicies open the
    /// proxies' metrics ports 15020 and 15090 to it, and nothing else).
    #[arg(long, default_value = "istio-system")]
    monitoring_namespace: String,
    /// The CA bundle, on the proxies, that an https:// module source's
    /// certificate must chain to.
    #[arg(long, default_value = istio::SYSTEM_CA_FILE)]
    wasm_ca_file: String,
    /// For the WasmPlugin variant: pull the module as an OCI artifact,
    /// `oci://REGISTRY/maas-filter@sha256:…` (what `make images` prints).
    #[arg(long)]
    wasm_oci: Option<String>,
    /// The Istio release the manifests are for (`istioctl version`);
    /// refused below the floor the filter needs.
    #[arg(long)]
    istio_version: Option<IstioVersion>,
    /// Keep the filter configuration's `keys` (the local demo keys, one of
    /// them unlimited) in the mesh's copy. Without it the mesh's keys are
    /// the ones minted through the control plane.
    #[arg(long)]
    keep_config_keys: bool,
    /// `EPP_SERVICE[:PORT]` (port 9002 unless given): render an
    /// InferencePool over the inference server's pods, whose endpoint
    /// picker is that Service, and route the models to the pool instead of
    /// the Service. The EPP is installed from the Gateway API Inference
    /// Extension's chart (docs/mesh.md). Requires --epp-service-account
    /// and --epp-pod-labels, or --no-epp-metrics-grant.
    #[arg(long, value_name = "EPP_SERVICE[:PORT]")]
    inference_pool: Option<EndpointPicker>,
    /// With --inference-pool: the service account the endpoint picker's
    /// pods run as. The inference server's AuthorizationPolicy lets
    /// `<trust-domain>/ns/NAMESPACE/sa/NAME` GET /metrics on its port, and
    /// nothing else.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    epp_service_account: Option<EppServiceAccount>,
    /// With --inference-pool: labels every endpoint picker pod carries.
    /// The inference server's NetworkPolicy admits the pods with all of
    /// them, in --epp-service-account's namespace, on its port.
    #[arg(long, value_name = "KEY=VALUE[,KEY=VALUE...]")]
    epp_pod_labels: Option<EppPodLabels>,
    /// With --inference-pool: grant the endpoint picker nothing, for
    /// policies of your own. Until they admit it, its GET /metrics scrapes
    /// are refused and it picks replicas without metrics.
    #[arg(long)]
    no_epp_metrics_grant: bool,
    /// The istio/ directory; files go to its gateway/, sidecar/ and wasmplugin/.
    #[arg(long, default_value = "istio")]
    out: PathBuf,
}

#[derive(Args)]
struct RenderProviders {
    #[command(flatten)]
    common: Common,
    /// The filter configuration, whose `providers` and `external_models`
    /// the providers file must match.
    #[arg(long, default_value = "envoy/filter-config.json")]
    filter_config: PathBuf,
    /// The providers file (JSON or YAML): per provider its host, port,
    /// credential header and Secret (docs/mesh.md).
    #[arg(long)]
    providers: PathBuf,
    /// The local bootstrap, whose wasm filter settings the backend role
    /// mirrors.
    #[arg(long, default_value = "envoy/gateway.template.yaml")]
    envoy_template: PathBuf,
    /// Where proxies fetch maas_filter.wasm for the backend role in each
    /// provider's cluster (no redirects): as for render-istio.
    #[arg(long)]
    wasm_url: Option<String>,
    /// `sha256sum` of that module.
    #[arg(long, default_value = placeholder::WASM_SHA256)]
    wasm_sha256: String,
    /// The CA bundle, on the proxies, that an https:// module source's
    /// certificate must chain to.
    #[arg(long, default_value = istio::SYSTEM_CA_FILE)]
    wasm_ca_file: String,
    /// The module as an OCI artifact (render-istio's WasmPlugin variant):
    /// refused without --wasm-url, since Envoy fetches the backend role's
    /// code itself and cannot pull OCI images.
    #[arg(long)]
    wasm_oci: Option<String>,
    /// `app.kubernetes.io/name` (and Service) of the inference server: the
    /// first backend of a local model with fallbacks.
    #[arg(long, default_value = "maas-inference-server")]
    inference_app: String,
    /// Where to write the manifests.
    #[arg(long, default_value = "istio/providers/providers.yaml")]
    out: PathBuf,
}

#[derive(Args)]
struct KuadrantPolicies {
    #[command(flatten)]
    common: Common,
    /// The HTTPRoute of the models, which the policies target.
    #[arg(long, default_value = istio::MODELS_ROUTE)]
    route: String,
    /// The filter's configuration JSON (its `subscriptions` and `keys`).
    #[arg(
        long,
        conflicts_with = "subscriptions",
        required_unless_present = "subscriptions"
    )]
    filter_config: Option<PathBuf>,
    /// The control plane's `GET /maas-api/v1/subscriptions` answer, saved.
    #[arg(long)]
    subscriptions: Option<PathBuf>,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct Validate {
    /// Directory of CRD YAML files (searched recursively).
    #[arg(long, env = "MAAS_CRDS_DIR")]
    crds: PathBuf,
    /// Manifests to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A secret the rendering embeds, from its file (trimmed), or without the
/// file the placeholder no real service accepts, with a note saying what
/// that leaves broken.
fn secret_or_placeholder(
    file: Option<&Path>,
    placeholder: &str,
    missing: &str,
) -> Result<Secret, String> {
    match file {
        Some(file) => Ok(String::from_utf8_lossy(&read(file)?).trim().into()),
        None => {
            eprintln!("note: {missing}");
            Ok(placeholder.into())
        }
    }
}

fn render_istio(args: &RenderIstio) -> Result<(), String> {
    // The EPP flags together, before anything is read.
    let inference_pool = InferencePoolSettings::from_flags(
        args.inference_pool.clone(),
        args.epp_service_account.clone(),
        args.epp_pod_labels.clone(),
        args.no_epp_metrics_grant,
    )
    .map_err(|e| e.to_string())?;
    let gateway_token = secret_or_placeholder(
        args.gateway_token_file.as_deref(),
        placeholder::GATEWAY_TOKEN,
        "no --gateway-token-file; the filter gets the placeholder token and managed keys \
         will not sync until you render with the real one",
    )?;
    let model_server_key = secret_or_placeholder(
        args.model_server_key_file.as_deref(),
        placeholder::MODEL_SERVER_KEY,
        "no --model-server-key-file; the filter gets the placeholder key, which the \
         inference server refuses (every completion is a 502) until you render with the \
         real one",
    )?;
    let settings = MeshSettings {
        namespace: args.common.namespace.clone(),
        gateway: args.common.gateway.clone(),
        inference_app: args.inference_app.clone(),
        trust_domain: args.trust_domain.clone(),
        monitoring_namespace: args.monitoring_namespace.clone(),
        gateway_token,
        model_server_key,
        wasm: WasmModule {
            url: args.wasm_url.clone(),
            sha256: args.wasm_sha256.clone(),
            ca_file: args.wasm_ca_file.clone(),
            oci: args.wasm_oci.clone(),
        },
        keep_config_keys: args.keep_config_keys,
        istio_version: args.istio_version,
        inference_pool,
        ..MeshSettings::default()
    };
    let template = String::from_utf8_lossy(&read(&args.envoy_template)?).into_owned();
    let filter_config = read(&args.filter_config)?;
    let has_providers = serde_json::from_slice::<serde_json::Value>(&filter_config)
        .ok()
        .and_then(|c| c.get("providers")?.as_array().map(|p| !p.is_empty()))
        .unwrap_or(false);
    if has_providers {
        eprintln!(
            "note: {} names external providers: their models are left out of {}; render \
             their route, ServiceEntries and credentials with `maas-mesh render-providers`",
            args.filter_config.display(),
            istio::MODELS_ROUTE
        );
    }
    let files = istio::render(&template, &filter_config, &settings).map_err(|e| e.to_string())?;
    if !files.iter().any(|f| f.path.ends_with("routes.yaml")) {
        eprintln!(
            "note: no local model: rendered the filter for a gateway of external models alone, \
             without {} or the sidecar placement. Apply gateway/envoyfilters.yaml and \
             gateway/access.yaml (or wasmplugin/wasmplugin.yaml and wasmplugin/access.yaml) \
             with `kubectl apply -f`: the kustomizations under istio/ also list the models' \
             route. Render into a fresh --out folder, since files of an earlier rendering \
             are not removed",
            istio::MODELS_ROUTE
        );
    }
    let header = format!(
        "Generated by `maas-mesh render-istio` from {} and {}: do not edit.\n\
         Module: {} (sha256 {}).\n\
         Requires Istio >= {ISTIO_FLOOR} (allow_on_headers_stop_iteration); with Kuadrant, >= {KUADRANT_FLOOR}.",
        args.envoy_template.display(),
        args.filter_config.display(),
        settings.wasm.url,
        settings.wasm.sha256,
    );
    eprintln!(
        "note: these manifests need Istio >= {ISTIO_FLOOR}: older istiod drops the filter's \
         allow_on_headers_stop_iteration from the EnvoyFilter with only a warning, and \
         completions stall (check with `istioctl version`, or pass --istio-version)"
    );
    if settings.keep_config_keys {
        eprintln!(
            "warning: --keep-config-keys: the configuration's keys ({}) are in the mesh's \
             filter configuration; mint keys through the control plane instead",
            args.filter_config.display()
        );
    }
    if let Some(pool) = &settings.inference_pool {
        eprintln!(
            "note: --inference-pool: {} routes to the InferencePool {}, whose endpoint picker \
             is the Service {} in {}; install it from the Gateway API Inference \
             Extension's chart (docs/mesh.md)",
            istio::MODELS_ROUTE,
            settings.inference_app,
            pool.picker,
            settings.namespace
        );
        match &pool.metrics {
            EppMetricsAccess::Granted(epp) => {
                eprintln!(
                    "note: the inference server's policies grant the endpoint picker GET {} on \
                     port {} and nothing more (with the filter in the sidecars, that request \
                     alone passes it without a key): the AuthorizationPolicy its principal {}, \
                     the NetworkPolicy its pods {} in namespace {} (its scrapes need the \
                     mesh's mutual TLS for the principal to count: docs/mesh.md)",
                    istio::inference_pool::METRICS_PATH,
                    settings.inference_port,
                    epp.service_account.principal(&settings.trust_domain),
                    epp.pod_labels,
                    epp.service_account.namespace
                );
                if epp.service_account.namespace != settings.namespace {
                    eprintln!(
                        "warning: --epp-service-account is in namespace {}, but the pool's \
                         endpoint picker is the Service {} of {}, whose pods run there: \
                         check that the picker's pods are the ones you named",
                        epp.service_account.namespace, pool.picker.service, settings.namespace
                    );
                }
            }
            EppMetricsAccess::Withheld => eprintln!(
                "warning: --no-epp-metrics-grant: the rendered policies do not admit the \
                 endpoint picker; until an ALLOW for its service account on GET {} and a \
                 NetworkPolicy peer for its pods do (docs/mesh.md), its scrapes are refused \
                 and it picks replicas without metrics",
                istio::inference_pool::METRICS_PATH
            ),
        }
    }
    for file in files {
        let path = args.out.join(file.path);
        let text = manifest::to_yaml_stream(&header, &file.docs).map_err(|e| e.to_string())?;
        manifest::write(&path, &text).map_err(|e| e.to_string())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn render_providers(args: &RenderProviders) -> Result<(), String> {
    // Without --wasm-url an OCI reference stands for the module, so that
    // the renderer refuses it and says what to pass instead.
    let url = args
        .wasm_url
        .clone()
        .or_else(|| args.wasm_oci.clone())
        .unwrap_or_else(|| placeholder::WASM_URL.to_string());
    let settings = MeshSettings {
        namespace: args.common.namespace.clone(),
        gateway: args.common.gateway.clone(),
        inference_app: args.inference_app.clone(),
        wasm: WasmModule {
            url,
            sha256: args.wasm_sha256.clone(),
            ca_file: args.wasm_ca_file.clone(),
            oci: args.wasm_oci.clone(),
        },
        ..MeshSettings::default()
    };
    let mesh = MeshProviders::parse(&read(&args.providers)?)
        .map_err(|e| format!("{}: {e}", args.providers.display()))?;
    let template = String::from_utf8_lossy(&read(&args.envoy_template)?).into_owned();
    let docs = providers::render(&template, &read(&args.filter_config)?, &mesh, &settings)
        .map_err(|e| e.to_string())?;
    let header = format!(
        "Generated by `maas-mesh render-providers` from {} and {}: do not edit.\n\
         Module of the backend role: {} (sha256 {}).\n\
         No credential is in here: each provider's key stays in its Secret, which the\n\
         gateway mounts (the {} ConfigMap; the Gateway must name it, docs/mesh.md).",
        args.filter_config.display(),
        args.providers.display(),
        settings.wasm.url,
        settings.wasm.sha256,
        providers::GATEWAY_PARAMETERS,
    );
    let text = manifest::to_yaml_stream(&header, &docs).map_err(|e| e.to_string())?;
    manifest::write(&args.out, &text).map_err(|e| e.to_string())?;
    eprintln!("wrote {}", args.out.display());
    eprintln!(
        "note: the gateway needs, once: kubectl -n {} patch gateway {} --type merge -p '{}'",
        settings.namespace,
        settings.gateway,
        providers::gateway_patch()
    );
    Ok(())
}

fn kuadrant_policies(args: &KuadrantPolicies) -> Result<(), String> {
    let (source, from) = match (&args.filter_config, &args.subscriptions) {
        (Some(file), _) => (LimitSource::from_filter_config(&read(file)?), file),
        (None, Some(file)) => (LimitSource::from_control_plane(&read(file)?), file),
        (None, None) => return Err("give --filter-config or --subscriptions".into()),
    };
    let target = PolicyTarget {
        route: args.route.clone(),
        namespace: args.common.namespace.clone(),
    };
    let docs = source
        .and_then(|s| kuadrant::policies(&s, &target))
        .map_err(|e| e.to_string())?;
    let header = format!(
        "Generated by `maas-mesh kuadrant-policies` from {}.\n\
         Kuadrant (Limitador) enforces these limits; the filter must run before\n\
         Kuadrant's wasm-shim so the x-maas-* headers they count by are set:\n\
         Kuadrant >= {KUADRANT_FLOOR} (earlier ones attach the shim ahead of the filter).\n\
         They target the models' HTTPRoute, where the filter always runs.",
        from.display()
    );
    let text = manifest::to_yaml_stream(&header, &docs).map_err(|e| e.to_string())?;
    match &args.out {
        Some(path) => manifest::write(path, &text).map_err(|e| e.to_string()),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

fn validate(args: &Validate) -> Result<bool, String> {
    let catalog = CrdCatalog::load(&args.crds).map_err(|e| e.to_string())?;
    let mut ok = true;
    for file in &args.files {
        for doc in manifest::read_documents(file).map_err(|e| e.to_string())? {
            let what = format!(
                "{}: {} {}",
                file.display(),
                doc["kind"].as_str().unwrap_or("?"),
                doc.pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            );
            match catalog.validate(&doc) {
                Verdict::Valid => println!("ok       {what}"),
                Verdict::UnknownKind => println!("no CRD   {what}"),
                Verdict::Invalid(errors) => {
                    ok = false;
                    println!("INVALID  {what}");
                    errors.iter().for_each(|e| println!("         {e}"));
                }
            }
        }
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::RenderIstio(args) => render_istio(args).map(|()| true),
        Command::RenderProviders(args) => render_providers(args).map(|()| true),
        Command::KuadrantPolicies(args) => kuadrant_policies(args).map(|()| true),
        Command::Validate(args) => validate(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("maas-mesh: {message}");
            ExitCode::FAILURE
        }
    }
}
