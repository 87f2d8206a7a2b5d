//! `render-gateway --filter-config FILE --model NAME=HOST:PORT... [options]`:
//! writes the Envoy bootstrap for an Envoy you run yourself, from the same
//! template and renderer `make run` and the tests use.
//!
//! Options: `--listen-port N` (default 10000), `--admin-port N` (default 9901),
//! `--wasm PATH` (default: the release filter), `--access-log PATH` (default
//! /dev/stdout), `--control-plane HOST:PORT` (the filter's key sync and
//! `/maas-api/*`), `--limiter HOST:PORT` (the `limitador` cluster the
//! filter's global limits call), `--oidc-issuer URL --oidc-audience AUD --oidc-jwks FILE`
//! (verify OIDC bearer tokens on model traffic), `--providers FILE
//! --credential-sds-dir DIR` (the filter configuration's external providers:
//! where each is and which file holds its key; the SDS file that points
//! Envoy's credential injector at each key file is written into DIR; see
//! `maas_stack::providers_file`), `--template PATH` (default
//! envoy/gateway.template.yaml), `--out PATH` (default stdout).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use maas_testkit::gateway::{
    gateway_template_path, render_gateway, workspace_root, write_credential_sds, GatewaySpec,
    OidcSpec,
};

const USAGE: &str =
    "usage: render-gateway --filter-config FILE --model NAME=HOST:PORT [--model ...] \
[--listen-port 10000] [--admin-port 9901] [--wasm PATH] [--access-log PATH] \
[--control-plane HOST:PORT] [--limiter HOST:PORT] [--oidc-issuer URL --oidc-audience AUD --oidc-jwks FILE] \
[--providers FILE --credential-sds-dir DIR] [--template PATH] [--out PATH]";

struct Args {
    spec: GatewaySpec,
    template: PathBuf,
    out: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut spec = GatewaySpec {
        control_plane: None,
        limiter: None,
        oidc: None,
        providers: Vec::new(),
        credential_sds_dir: None,
        listen_port: 10000,
        admin_port: 9901,
        wasm_path: workspace_root().join("target/wasm32-wasip1/release/maas_filter.wasm"),
        filter_config: serde_json::Value::Null,
        access_log_path: "/dev/stdout".into(),
        models: Vec::new(),
    };
    let (mut template, mut out, mut have_config) = (gateway_template_path(), None, false);
    let (mut issuer, mut audience, mut jwks) = (None, None, None);
    let mut providers_file: Option<PathBuf> = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--filter-config" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {path}: {e}"))?;
                spec.filter_config =
                    serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
                have_config = true;
            }
            "--model" => {
                let text = value()?;
                let (name, addr) = text
                    .rsplit_once('=')
                    .ok_or_else(|| format!("--model {text:?}: expected NAME=HOST:PORT"))?;
                let addr: SocketAddr = addr.parse().map_err(|_| {
                    format!("--model {text:?}: {addr:?} is not HOST:PORT (an IP address)")
                })?;
                spec.models.push((name.to_owned(), addr));
            }
            "--control-plane" => {
                let text = value()?;
                spec.control_plane = Some(text.parse().map_err(|_| {
                    format!("--control-plane {text:?} is not HOST:PORT (an IP address)")
                })?);
            }
            "--limiter" => {
                let text = value()?;
                spec.limiter =
                    Some(text.parse().map_err(|_| {
                        format!("--limiter {text:?} is not HOST:PORT (an IP address)")
                    })?);
            }
            "--oidc-issuer" => issuer = Some(value()?),
            "--oidc-audience" => audience = Some(value()?),
            "--oidc-jwks" => {
                let path = value()?;
                jwks = Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {path}: {e}"))?,
                );
            }
            "--listen-port" => spec.listen_port = port(&value()?)?,
            "--admin-port" => spec.admin_port = port(&value()?)?,
            "--wasm" => spec.wasm_path = absolute(value()?),
            "--access-log" => spec.access_log_path = absolute(value()?),
            "--providers" => providers_file = Some(value()?.into()),
            "--credential-sds-dir" => spec.credential_sds_dir = Some(absolute(value()?)),
            "--template" => template = value()?.into(),
            "--out" => out = Some(value()?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !have_config {
        return Err("--filter-config is required".into());
    }
    match (&providers_file, &spec.credential_sds_dir) {
        (Some(file), Some(_)) => {
            spec.providers = maas_stack::providers_file::read(file, &spec.filter_config)
                .map_err(|e| e.to_string())?;
        }
        (None, None) => {}
        _ => return Err("--providers and --credential-sds-dir go together".into()),
    }
    spec.oidc = match (issuer, audience, jwks) {
        (Some(issuer), Some(audience), Some(jwks)) => Some(OidcSpec {
            issuer,
            audience,
            jwks,
        }),
        (None, None, None) => None,
        _ => return Err("--oidc-issuer, --oidc-audience and --oidc-jwks go together".into()),
    };
    Ok(Args {
        spec,
        template,
        out,
    })
}

fn port(text: &str) -> Result<u16, String> {
    text.parse().map_err(|_| format!("bad port {text:?}"))
}

/// Envoy resolves relative paths against its own working directory, which
/// need not be ours.
fn absolute(path: String) -> PathBuf {
    std::path::absolute(&path).unwrap_or_else(|_| path.into())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("render-gateway: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Envoy's credential injectors read the providers' SDS files, which
    // name the key files; written first, so the bootstrap never points at
    // a file that is not there.
    if let Some(dir) = &args.spec.credential_sds_dir {
        if let Err(error) = std::fs::create_dir_all(dir)
            .and_then(|()| write_credential_sds(dir, &args.spec.providers))
        {
            eprintln!(
                "render-gateway: cannot write the SDS files into {}: {error}",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let rendered = std::fs::read_to_string(&args.template)
        .map_err(|error| format!("cannot read {}: {error}", args.template.display()))
        .and_then(|template| {
            render_gateway(&template, &args.spec).map_err(|error| error.to_string())
        });
    let written = rendered.and_then(|text| match &args.out {
        // The bootstrap may hold the control plane's gateway token.
        Some(path) => maas_testkit::private_file::write_private(path, text)
            .map_err(|error| format!("cannot write {}: {error}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("render-gateway: {problem}");
            ExitCode::FAILURE
        }
    }
}
