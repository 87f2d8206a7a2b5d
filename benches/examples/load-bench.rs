//! The typed half of `benches/load.sh`
//! (`cargo build --release -p maas-benches --example load-bench`):
//!
//! `load-bench render --out-dir DIR --upstream HOST:PORT --key KEY --variant NAME=none|NAME=MODULE.wasm…`
//!   writes `DIR/filter-config.json` (our filter's benchmark configuration,
//!   one key: KEY) and one Envoy bootstrap per variant, `DIR/NAME.yaml`,
//!   rendered from `envoy/gateway.template.yaml` (access log `DIR/NAME.access.log`,
//!   listener and admin on ephemeral ports).
//!
//! `load-bench report --results FILE --baseline NAME --empty NAME --filter NAME… [--label NAME=TEXT…] [--saturation TEXT] [--paced TEXT]`
//!   prints the Markdown table of medians, costs against the baselines and
//!   the targets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use maas_benches::load::report::{self, Roles, RunShape};
use maas_benches::load::variants::{bench_filter_config, render_variant, Variant};
use maas_testkit::gateway::gateway_template_path;

const USAGE: &str = "usage:\n  load-bench render --out-dir DIR --upstream HOST:PORT --key KEY --variant NAME=none|NAME=PATH [--variant ...]\n  load-bench report --results FILE --baseline NAME --empty NAME --filter NAME [--filter ...] [--label NAME=TEXT ...] [--saturation TEXT] [--paced TEXT]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let outcome = match args.next().as_deref() {
        Some("render") => render(args),
        Some("report") => report(args),
        _ => Err(String::new()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("load-bench: {problem}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `--flag value` pairs, in order; a flag without a value is an error.
fn pairs(mut args: impl Iterator<Item = String>) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

fn render(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut out_dir, mut upstream, mut key, mut variants) = (None, None, None, Vec::new());
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--out-dir" => out_dir = Some(PathBuf::from(value)),
            "--upstream" => {
                upstream = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|_| format!("--upstream {value:?} is not IP:PORT"))?,
                )
            }
            "--key" => key = Some(value),
            "--variant" => variants.push(value.parse::<Variant>().map_err(|e| e.to_string())?),
            other => return Err(format!("render: unknown argument {other:?}")),
        }
    }
    let (Some(out_dir), Some(upstream), Some(key)) = (out_dir, upstream, key) else {
        return Err("render needs --out-dir, --upstream and --key".into());
    };
    if variants.is_empty() {
        return Err("render needs at least one --variant".into());
    }
    // Envoy resolves relative paths against its own working directory.
    let out_dir = std::path::absolute(&out_dir).map_err(|e| format!("{out_dir:?}: {e}"))?;
    let template_path = gateway_template_path();
    let template = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
    let config = bench_filter_config(&key);
    let write = |name: &str, text: String| {
        let path = out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("filter-config.json", format!("{config:#}\n"))?;
    for variant in &variants {
        let access_log = out_dir.join(format!("{}.access.log", variant.name));
        let bootstrap = render_variant(&template, variant, &config, upstream, &access_log)
            .map_err(|e| format!("variant {}: {e}", variant.name))?;
        write(&format!("{}.yaml", variant.name), bootstrap)?;
    }
    Ok(())
}

fn report(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut results, mut baseline, mut empty, mut filters) = (None, None, None, Vec::new());
    let mut labels = BTreeMap::new();
    let mut shape = RunShape {
        saturation: "wrk at full speed".into(),
        paced: "wrk with a pause between requests".into(),
    };
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--results" => results = Some(PathBuf::from(value)),
            "--baseline" => baseline = Some(value),
            "--empty" => empty = Some(value),
            "--filter" => filters.push(value),
            "--label" => {
                let (name, text) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--label {value:?}: expected NAME=TEXT"))?;
                labels.insert(name.to_owned(), text.to_owned());
            }
            "--saturation" => shape.saturation = value,
            "--paced" => shape.paced = value,
            other => return Err(format!("report: unknown argument {other:?}")),
        }
    }
    let (Some(results), Some(baseline), Some(empty)) = (results, baseline, empty) else {
        return Err("report needs --results, --baseline and --empty".into());
    };
    if filters.is_empty() {
        return Err("report needs at least one --filter".into());
    }
    let text = std::fs::read_to_string(&results)
        .map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let samples = report::parse_results(&text).map_err(|e| e.to_string())?;
    let roles = Roles {
        baseline,
        empty,
        filters,
        labels,
    };
    let markdown = report::render(&samples, &roles, &shape).map_err(|e| e.to_string())?;
    print!("{markdown}");
    Ok(())
}
