//! `maas-images build` on the real inference server, control plane, limiter,
//! filter module and model, read back as a registry client and a container
//! runtime would: every blob verified against its descriptor, the configs
//! checked, the filter artifact checked against what Istio's fetcher takes,
//! a second build compared digest for digest, each server run from its
//! unpacked image as uid 65532, and the kustomization checked against
//! `images.json`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use maas_images::digest::Digest;
use maas_images::oci;
use maas_images::tarball;
use serde_json::json;
use support::{built, run_in_rootfs, Build, Running, NONROOT, REGISTRY, TAG};

/// The three images the manifests deploy, and the command each runs.
const SERVERS: [(&str, &str); 3] = [
    ("maas-inference-server", "inference-server"),
    ("maas-control-plane", "maas-control-plane"),
    ("maas-limiter", "maas-limiter"),
];
const SMOLLM2: &str = "maas-inference-server-smollm2";
const FILTER: &str = "maas-filter";
const MODEL_IN_IMAGE: &str = "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn all_images() -> Vec<&'static str> {
    let mut names: Vec<&str> = SERVERS.iter().map(|(name, _)| *name).collect();
    names.extend([SMOLLM2, FILTER]);
    names
}

#[test]
fn every_layout_resolves_from_index_to_verified_blobs() {
    let build = built();
    let names: BTreeSet<&str> = build.images.keys().map(String::as_str).collect();
    assert_eq!(names, all_images().into_iter().collect());
    for name in all_images() {
        let layout = build.layout(name);
        let published = &build.images[name];
        assert_eq!(published.repository, format!("{REGISTRY}/{name}"));
        assert_eq!(published.tag, TAG);
        assert_eq!(
            published.reference,
            format!("{REGISTRY}/{name}@{}", published.digest)
        );
        assert_eq!(
            layout.manifest_descriptor.digest, published.digest,
            "{name}"
        );
        assert_eq!(layout.manifest_descriptor.annotations[oci::REF_NAME], TAG);

        // Every descriptor's blob is there with its digest and size, and
        // nothing else is.
        let mut referenced = BTreeSet::from([layout.manifest_descriptor.digest.hex().to_string()]);
        layout.blob(&layout.manifest.config);
        referenced.insert(layout.manifest.config.digest.hex().to_string());
        for layer in &layout.manifest.layers {
            layout.blob(layer);
            referenced.insert(layer.digest.hex().to_string());
        }
        assert_eq!(
            layout.blob_files(),
            referenced.into_iter().collect::<Vec<_>>(),
            "{name}"
        );

        // The archive is the layout, file for file.
        let archive = fs::read(build.out.join(&published.archive)).unwrap();
        let mut files = Vec::new();
        for entry in tar::Archive::new(archive.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_dir() {
                continue;
            }
            let path = entry.path().unwrap().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            assert_eq!(
                bytes,
                fs::read(layout.dir.join(&path)).unwrap(),
                "{name}: {path:?}"
            );
            files.push(path);
        }
        assert_eq!(
            files.len(),
            layout.blob_files().len() + 2,
            "{name}: oci-layout, index.json and the blobs"
        );
    }
}

#[test]
fn server_configs_run_the_binary_as_nonroot_and_list_their_layers() {
    let build = built();
    let platform = oci::host_platform().unwrap();
    let mut bases = BTreeSet::new();
    for (name, command) in SERVERS {
        let layout = build.layout(name);
        let config = layout.config();
        assert_eq!(config.architecture, platform.architecture, "{name}");
        assert_eq!(config.os, "linux");
        assert_eq!(
            layout.manifest_descriptor.platform.as_ref(),
            Some(&platform)
        );
        assert_eq!(config.config.user, format!("{NONROOT}:{NONROOT}"));
        assert_eq!(
            config.config.entrypoint,
            [format!("/usr/local/bin/{command}")]
        );
        assert!(
            config.config.cmd.is_empty(),
            "{name}: the manifests give the arguments"
        );
        assert!(config
            .config
            .env
            .contains(&"PATH=/usr/local/bin:/usr/bin:/bin".to_string()));
        assert_eq!(config.config.labels[oci::VERSION], TAG);
        assert_eq!(config.config.labels[oci::REVISION], "test-revision");
        assert_eq!(layout.manifest.annotations, config.config.labels);

        let tars = layout.layer_tars();
        let diff_ids: Vec<Digest> = tars.iter().map(|tar| Digest::of(tar)).collect();
        assert_eq!(config.rootfs.kind, "layers");
        assert_eq!(
            config.rootfs.diff_ids, diff_ids,
            "{name}: diff_ids are the uncompressed layers"
        );
        bases.insert(layout.manifest.layers[0].digest.clone());

        // Nothing in the image is the user's, nothing but /tmp is writable
        // by anyone but root: a read-only root file system loses nothing.
        for tar in &tars {
            for entry in tarball::list(tar).unwrap() {
                let (path, mode) = (&entry.path, entry.mode);
                assert_eq!(
                    (entry.uid, entry.gid),
                    (0, 0),
                    "{name}: {path} owned by root"
                );
                if path != "tmp/" {
                    assert_eq!(mode & 0o022, 0, "{name}: {path} mode {mode:o}");
                }
            }
        }
        let files: Vec<String> = tars
            .iter()
            .flat_map(|tar| tarball::list(tar).unwrap())
            .map(|entry| entry.path)
            .collect();
        let binary = fs::read(support::input(name)).unwrap();
        let loader = maas_images::elf::interpreter(&binary).unwrap().unwrap();
        for expected in [
            "etc/passwd".to_string(),
            "etc/group".into(),
            "tmp/".into(),
            loader[1..].to_string(),
            format!("usr/local/bin/{command}"),
        ] {
            assert!(files.contains(&expected), "{name}: {expected} in {files:?}");
        }
    }
    assert_eq!(
        bases.len(),
        1,
        "one base layer shared by every server image"
    );
}

#[test]
fn the_smollm2_image_is_the_server_plus_the_model() {
    let build = built();
    let plain = build.layout("maas-inference-server");
    let smollm2 = build.layout(SMOLLM2);
    let layers = &smollm2.manifest.layers;
    assert_eq!(layers.len(), plain.manifest.layers.len() + 1);
    assert_eq!(
        layers[..plain.manifest.layers.len()],
        plain.manifest.layers[..]
    );
    let model_layer = smollm2.layer_tars().pop().unwrap();
    let listed = tarball::list(&model_layer).unwrap();
    let paths: Vec<&str> = listed.iter().map(|entry| entry.path.as_str()).collect();
    assert_eq!(paths, ["models/", &MODEL_IN_IMAGE[1..]]);

    let config = smollm2.config();
    assert_eq!(config.config.entrypoint, plain.config().config.entrypoint);
    assert_eq!(
        config.config.cmd,
        [
            "--host=0.0.0.0".to_string(),
            format!("--model={MODEL_IN_IMAGE}"),
            "--model-id=smollm2-135m-instruct".into(),
        ]
    );
    let model = support::inputs().model;
    let mut archive = tar::Archive::new(model_layer.as_slice());
    let mut entry = archive.entries().unwrap().nth(1).unwrap().unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
    assert_eq!(entry.header().mode().unwrap(), 0o644);
    assert!(
        bytes == fs::read(model).unwrap(),
        "the model, byte for byte"
    );
}

#[test]
fn the_filter_is_a_wasm_artifact_istio_can_pull() {
    let build = built();
    let layout = build.layout(FILTER);
    let manifest = &layout.manifest;
    // pkg/wasm/imagefetcher.go, extractOCIArtifactImage: exactly two layers,
    // the module in the one typed ...content.layer.v1+wasm, read raw.
    assert_eq!(manifest.config.media_type, oci::WASM_CONFIG);
    let types: Vec<&str> = manifest
        .layers
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(types, [oci::WASM_CONFIG, oci::WASM_CONTENT]);
    let module = fs::read(support::inputs().filter_wasm).unwrap();
    assert!(
        layout.blob(&manifest.layers[1]) == module,
        "the layer is the module, byte for byte"
    );
    let runtime: serde_json::Value =
        serde_json::from_slice(&layout.blob(&manifest.config)).unwrap();
    assert_eq!(runtime["type"], "envoy_proxy");
    assert_eq!(runtime["abiVersions"], json!(["proxy_abi_version_0_2_1"]));
    assert_eq!(
        layout.blob(&manifest.layers[0]),
        layout.blob(&manifest.config)
    );
    assert!(layout.manifest_descriptor.platform.is_none());

    let pinned = format!("oci://{REGISTRY}/{FILTER}@{}", build.digest(FILTER));
    assert!(build.stdout.contains(&pinned), "{}", build.stdout);
}

#[test]
fn building_twice_gives_the_same_digests_and_archives() {
    let first = built();
    let second = support::build("b");
    for name in all_images() {
        assert_eq!(
            first.images[name].digest, second.images[name].digest,
            "{name}"
        );
        let archive = |build: &Build| {
            Digest::of(&fs::read(build.out.join(&build.images[name].archive)).unwrap())
        };
        assert_eq!(archive(first), archive(&second), "{name}.oci.tar");
    }
}

#[test]
fn each_server_binary_runs_from_its_unpacked_image_as_nonroot() {
    let version = env!("CARGO_PKG_VERSION");
    for (name, command) in SERVERS {
        let layout = built().layout(name);
        let rootfs = layout.unpack(name);
        let config = layout.config().config;
        let mut argv = config.entrypoint;
        argv.push("--version".into());
        let output = run_in_rootfs(&rootfs, &config.env, &argv);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {argv:?} exited {}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.trim(), format!("{command} {version}"), "{name}");
    }
}

#[test]
fn the_smollm2_image_serves_chat_completions_from_its_rootfs() {
    let layout = built().layout(SMOLLM2);
    let rootfs = layout.unpack(SMOLLM2);
    let config = layout.config().config;
    let port = support::free_port();
    // The image's own entrypoint and command, on a free port, bound to
    // loopback: the test shares the host's network, and its server is no
    // one else's (the command binds 0.0.0.0, checked above).
    let mut argv = config.entrypoint.clone();
    argv.extend(config.cmd.iter().map(|arg| match arg.as_str() {
        "--host=0.0.0.0" => "--host=127.0.0.1".to_string(),
        _ => arg.clone(),
    }));
    assert!(argv.iter().any(|a| a == "--host=127.0.0.1"), "{argv:?}");
    argv.push(format!("--port={port}"));
    let log = support::scratch(SMOLLM2).join("server.log");
    let mut server = Running(
        support::in_rootfs(&rootfs, &config.env, &argv)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let health = format!("http://127.0.0.1:{port}/health");
    maas_testkit::eventually(Duration::from_secs(120), || {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "the server exited ({status}): {}",
                fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
        }
        match maas_testkit::try_request("GET", &health, &[], None) {
            Ok(response) if response.status == 200 => Ok(()),
            Ok(response) => Err(format!("/health answered {}", response.status)),
            Err(error) => Err(error.to_string()),
        }
    });
    assert_eq!(
        support::uid_inside(server.0.id()),
        NONROOT,
        "the server runs as nonroot"
    );

    let response = maas_testkit::post_json(
        &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        &[],
        &json!({
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 4,
        }),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["model"], "smollm2-135m-instruct");
    assert_eq!(body["usage"]["completion_tokens"], 4, "{body}");
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
}

#[test]
fn the_kustomization_pins_the_server_images_to_the_built_digests() {
    let build = built();
    let text = fs::read_to_string(build.out.join("kustomization.yaml")).unwrap();
    let kustomization: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources = kustomization["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 1);
    let istio = build.out.join(resources[0].as_str().unwrap());
    assert!(
        istio.join("kustomization.yaml").is_file(),
        "{istio:?} holds a kustomization"
    );
    assert_eq!(
        istio.canonicalize().unwrap(),
        support::workspace_root()
            .join("istio")
            .canonicalize()
            .unwrap()
    );

    let pins = kustomization["images"].as_array().unwrap();
    let expected: Vec<serde_json::Value> = SERVERS
        .iter()
        .map(|(name, _)| {
            json!({
                "name": name,
                "newName": format!("{REGISTRY}/{name}"),
                "digest": build.digest(name).to_string(),
            })
        })
        .collect();
    assert_eq!(pins, &expected);
    assert!(build
        .stdout
        .contains(&format!("kubectl apply -k {}", build.out.display())));
    for name in all_images() {
        assert!(
            build.stdout.contains(&format!(
                "oci-archive:{}",
                build.out.join(format!("{name}.oci.tar")).display()
            )),
            "{name}: {}",
            build.stdout
        );
    }
}

#[test]
fn a_missing_input_is_named_with_its_variable() {
    let out = support::scratch("missing").join("out");
    let output = support::maas_images_build()
        .arg("--out")
        .arg(&out)
        .env("MAAS_INFERENCE_SERVER", "/nonexistent/inference-server")
        .env("MAAS_CONTROL_PLANE", "/nonexistent/maas-control-plane")
        .env("MAAS_LIMITER", "/nonexistent/maas-limiter")
        .env("MAAS_FILTER_WASM", "/nonexistent/maas_filter.wasm")
        .env("MAAS_MODEL_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no inference server binary at \"/nonexistent/inference-server\"")
            && stderr.contains("MAAS_INFERENCE_SERVER"),
        "{stderr}"
    );
    assert!(!out.join("images.json").exists());
}
