//! `maas-images build`: writes the server images and the filter artifact as
//! OCI layouts and archives, `images.json` and a kustomization pinning the
//! manifests to them, then prints how to push and deploy them. Exits
//! non-zero with one line naming the problem (a missing input names the flag
//! and the variable that point at it).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, Parser, Subcommand};
use maas_images::base::CA_BUNDLE;
use maas_images::reference::{Registry, Tag};
use maas_images::{build, summary, Inputs, Options};

/// The model file the inference server embeds by default, looked for in
/// `--model-dir` when `--model` is not given.
const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(name = "maas-images", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Build every image into the output directory.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Registry prefix the images are pushed under: <REGISTRY>/<image>.
    #[arg(long, value_name = "HOST[/PATH]")]
    registry: Registry,
    /// Tag of every image (also its org.opencontainers.image.version).
    #[arg(long)]
    tag: Tag,
    #[arg(long, value_name = "FILE", env = "MAAS_INFERENCE_SERVER")]
    inference_server: PathBuf,
    #[arg(long, value_name = "FILE", env = "MAAS_CONTROL_PLANE")]
    control_plane: PathBuf,
    #[arg(long, value_name = "FILE", env = "MAAS_LIMITER")]
    limiter: PathBuf,
    /// The filter module (maas_filter.wasm).
    #[arg(long, value_name = "FILE", env = "MAAS_FILTER_WASM")]
    filter_wasm: PathBuf,
    /// The GGUF for the maas-inference-server-smollm2 image.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Where --model defaults to SmolLM2-135M-Instruct.Q4_1.gguf.
    #[arg(long, value_name = "DIR", env = "MAAS_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    #[arg(long, value_name = "DIR", default_value = "target/images")]
    out: PathBuf,
    /// The manifests the written kustomization overlays.
    #[arg(long, value_name = "DIR", default_value = "istio")]
    istio: PathBuf,
    /// For org.opencontainers.image.revision; default: `git rev-parse HEAD`.
    #[arg(long)]
    revision: Option<String>,
    /// For org.opencontainers.image.source (the repository URL); none by default.
    #[arg(long, value_name = "URL")]
    source: Option<String>,
    /// Modification time of every file in the images (seconds since 1970).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "SOURCE_DATE_EPOCH",
        default_value_t = 0
    )]
    source_date_epoch: u64,
}

fn main() -> ExitCode {
    let Verb::Build(args) = Cli::parse().command;
    let model = args.model.clone().or_else(|| {
        args.model_dir
            .as_ref()
            .map(|dir| dir.join(DEFAULT_MODEL_FILE))
    });
    let Some(model) = model else {
        eprintln!("maas-images: no model: pass --model FILE, or set MAAS_MODEL_DIR (`make model` fetches it into .cache/models)");
        return ExitCode::FAILURE;
    };
    let inputs = Inputs {
        inference_server: args.inference_server,
        control_plane: args.control_plane,
        limiter: args.limiter,
        filter_wasm: args.filter_wasm,
        model,
    };
    let options = Options {
        registry: args.registry,
        tag: args.tag,
        out: args.out,
        istio: args.istio,
        mtime: args.source_date_epoch,
        revision: args.revision.or_else(git_revision),
        source: args.source,
        ca_bundle: Path::new(CA_BUNDLE)
            .is_file()
            .then(|| PathBuf::from(CA_BUNDLE)),
    };
    match build(&inputs, &options) {
        Ok(built) => {
            print!("{}", summary::instructions(&built, &options));
            ExitCode::SUCCESS
        }
        Err(error) => {
            // Each error's message already ends with its cause.
            eprintln!("maas-images: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The checked-out commit, when this runs inside a git work tree.
fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    let revision = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !revision.is_empty()).then_some(revision)
}
