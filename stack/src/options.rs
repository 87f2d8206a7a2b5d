//! `maas-stack`'s command line, parsed into [`StackOptions`]. Paths are made
//! absolute here: Envoy resolves relative paths against its own working
//! directory, and the banner should name files a user can open from anywhere.

use std::path::{Path, PathBuf};

use maas_testkit::gateway::workspace_root;

pub const USAGE: &str = "\
usage: maas-stack [--config FILE] [--providers FILE] [--listen-port 10000] [--admin-port 9901]
                  [--model [ID=]FILE.gguf ... | --mock | --upstream HOST:PORT]
                  [--upstream-port 8000] [--state-dir DIR]
                  [--control-plane-port 8090] [--control-plane-dir DIR]
                  [--no-control-plane] [--limiter-port 8081] [--no-demo-provider]

Runs Envoy with the MaaS filter in front of the inference server (the embedded
SmolLM2-135M-Instruct unless --model says otherwise), and the control plane
(SQLite) it syncs keys from, in the foreground, until Ctrl-C (SIGINT) or
SIGTERM (a second one stops everything at once, also while starting).
Creates a demo subscription and key on the way.

  --config FILE         filter configuration (default envoy/filter-config.json)
  --providers FILE      where the configuration's `providers` are and which files
                        hold their keys (render-gateway's providers file,
                        docs/providers.md); needed when the configuration has any
  --listen-port N       gateway listener on 127.0.0.1 (default 10000; 0 = any free port)
  --admin-port N        Envoy admin on 127.0.0.1 (default 9901; 0 = any free port)
  --model [ID=]FILE.gguf  a GGUF for an inference server of its own, served as ID
                        (default: the configuration's first model for one file, the
                        file's name for several); repeat for several models, each
                        routed to its server and added to the configuration's
                        models (default: the embedded model)
  --mock                testkit's OpenAI-shaped mock instead of the inference server
  --upstream-port N     port of the built-in upstream (default 8000; 0 = any free port)
  --upstream HOST:PORT  an existing OpenAI-compatible server instead of a built-in one
  --state-dir DIR       envoy.yaml, envoy.log, audit.log, inference.log go here
                        (default .cache/run)
  --control-plane-port N  the control plane on 127.0.0.1 (default 8090; 0 = any free port)
  --control-plane-dir DIR its tokens and SQLite database (default .cache/control-plane,
                        where `maas-control-plane key ...` finds the admin token)
  --no-control-plane    only the keys in the filter configuration
  --limiter-port N      maas-limiter (with Redis) for the configuration's global
                        limits, when it has a `limiter` block (default 8081)
  --no-demo-provider    without the demo's external model (claude-demo, served by a
                        local stand-in for Anthropic over TLS); it is only added when
                        the configuration names no `providers` of its own";

/// One `--model`: a GGUF file and the id it is served as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelArg {
    pub path: PathBuf,
    /// `None`: decided at launch (see [`UpstreamChoice::Inference`]).
    pub id: Option<String>,
}

impl ModelArg {
    /// `ID=FILE` or `FILE`. The text before the first `=` is an id when it
    /// is one the filter accepts (`[A-Za-z0-9._:/-]`, `org/model` included,
    /// starting with a letter or digit) and the whole text names no
    /// existing file, so a file name with `=` in it still reads as a file.
    fn parse(text: &str) -> ModelArg {
        if let Some((id, file)) = text.split_once('=') {
            // An id starts with a letter or digit: `/m/a=b.gguf` and
            // `./a=b.gguf` are paths.
            let is_id = id.starts_with(|c: char| c.is_ascii_alphanumeric())
                && !file.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
                && !id.ends_with(".gguf")
                && !Path::new(text).exists();
            if is_id {
                return ModelArg {
                    path: absolute(file),
                    id: Some(id.to_string()),
                };
            }
        }
        ModelArg {
            path: absolute(text),
            id: None,
        }
    }
}

/// Which model server the gateway routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamChoice {
    /// The workspace's inference server, one per model, started by the stack;
    /// none given: the embedded default model. A lone model without an id is
    /// served as the configuration's first model; several are served under
    /// their ids or file names.
    Inference { models: Vec<ModelArg> },
    /// testkit's OpenAI-shaped mock, in-process.
    Mock,
    /// An existing server (`HOST:PORT`), resolved at start.
    External(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackOptions {
    /// The filter's JSON configuration; its `models` are all routed upstream.
    pub config: PathBuf,
    pub listen_port: u16,
    pub admin_port: u16,
    /// Where a built-in upstream listens; unused with an external one.
    pub upstream_port: u16,
    pub upstream: UpstreamChoice,
    pub state_dir: PathBuf,
    /// `None`: no control plane (`--no-control-plane`).
    pub control_plane: Option<ControlPlaneOptions>,
    /// Where the rate limiter listens when the configuration has global limits.
    pub limiter_port: u16,
    /// Serve the demo's external model (see `demo_provider`).
    pub demo_provider: bool,
    /// The providers file for a configuration with `providers`.
    pub providers: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneOptions {
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Default for StackOptions {
    fn default() -> Self {
        let root = workspace_root();
        Self {
            config: root.join("envoy/filter-config.json"),
            listen_port: 10000,
            admin_port: 9901,
            upstream_port: 8000,
            upstream: UpstreamChoice::Inference { models: Vec::new() },
            state_dir: root.join(".cache/run"),
            control_plane: Some(ControlPlaneOptions {
                port: 8090,
                data_dir: root.join(".cache/control-plane"),
            }),
            limiter_port: 8081,
            demo_provider: true,
            providers: None,
        }
    }
}

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// `-h`/`--help`: print the usage and exit successfully.
    #[error("help requested")]
    Help,
    #[error("{0}")]
    Invalid(String),
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<StackOptions, UsageError> {
    let mut options = StackOptions::default();
    let mut upstream_port_given = false;
    let mut chosen: Option<String> = None;
    let mut control_plane = options.control_plane.take();
    let mut no_control_plane = false;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        // `--flag=value` and `--flag value` both work.
        let (flag, inline) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.into())),
            _ => (flag, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| UsageError::Invalid(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--config" => options.config = absolute(&value()?),
            "--listen-port" => options.listen_port = port(&flag, &value()?)?,
            "--admin-port" => options.admin_port = port(&flag, &value()?)?,
            "--upstream-port" => {
                options.upstream_port = port(&flag, &value()?)?;
                upstream_port_given = true;
            }
            "--upstream" => {
                let text = value()?;
                if text.trim().is_empty() {
                    return Err(UsageError::Invalid("--upstream needs HOST:PORT".into()));
                }
                choose(
                    &mut options,
                    &mut chosen,
                    &flag,
                    UpstreamChoice::External(text),
                )?;
            }
            "--mock" => choose(&mut options, &mut chosen, &flag, UpstreamChoice::Mock)?,
            "--model" => {
                let model = ModelArg::parse(&value()?);
                let mut models =
                    match std::mem::replace(&mut options.upstream, UpstreamChoice::Mock) {
                        UpstreamChoice::Inference { models } if chosen.is_some() => models,
                        _ => Vec::new(),
                    };
                models.push(model);
                choose(
                    &mut options,
                    &mut chosen,
                    &flag,
                    UpstreamChoice::Inference { models },
                )?;
            }
            "--state-dir" => options.state_dir = absolute(&value()?),
            "--control-plane-port" => {
                let p = port(&flag, &value()?)?;
                control_plane.get_or_insert_with(default_control_plane).port = p;
            }
            "--control-plane-dir" => {
                let dir = absolute(&value()?);
                control_plane
                    .get_or_insert_with(default_control_plane)
                    .data_dir = dir;
            }
            "--no-control-plane" => no_control_plane = true,
            "--no-demo-provider" => options.demo_provider = false,
            "--providers" => options.providers = Some(absolute(&value()?)),
            "--limiter-port" => options.limiter_port = port(&flag, &value()?)?,
            "-h" | "--help" => return Err(UsageError::Help),
            other => return Err(UsageError::Invalid(format!("unknown argument {other:?}"))),
        }
    }
    options.control_plane = if no_control_plane {
        None
    } else {
        control_plane
    };
    if upstream_port_given && matches!(options.upstream, UpstreamChoice::External(_)) {
        return Err(UsageError::Invalid(
            "--upstream-port places a built-in upstream; it has no meaning with --upstream".into(),
        ));
    }
    // An external upstream leaves the built-in port unused.
    let upstream_port = match options.upstream {
        UpstreamChoice::External(_) => 0,
        _ => options.upstream_port,
    };
    let control_plane_port = options.control_plane.as_ref().map_or(0, |c| c.port);
    let fixed = [
        ("--listen-port", options.listen_port),
        ("--admin-port", options.admin_port),
        ("--upstream-port", upstream_port),
        ("--control-plane-port", control_plane_port),
        ("--limiter-port", options.limiter_port),
    ];
    for (index, (flag, port)) in fixed.iter().enumerate() {
        if let Some((other, _)) = fixed[index + 1..]
            .iter()
            .find(|(_, other)| *port != 0 && other == port)
        {
            return Err(UsageError::Invalid(format!(
                "{flag} and {other} are both {port}"
            )));
        }
    }
    Ok(options)
}

fn default_control_plane() -> ControlPlaneOptions {
    StackOptions::default()
        .control_plane
        .unwrap_or_else(|| ControlPlaneOptions {
            port: 8090,
            data_dir: workspace_root().join(".cache/control-plane"),
        })
}

/// `--model`, `--mock` and `--upstream` each pick the upstream: one of them.
fn choose(
    options: &mut StackOptions,
    chosen: &mut Option<String>,
    flag: &str,
    choice: UpstreamChoice,
) -> Result<(), UsageError> {
    if let Some(earlier) = chosen.as_deref().filter(|earlier| *earlier != flag) {
        return Err(UsageError::Invalid(format!(
            "{earlier} and {flag} both choose the upstream; give one"
        )));
    }
    *chosen = Some(flag.to_owned());
    options.upstream = choice;
    Ok(())
}

fn port(flag: &str, text: &str) -> Result<u16, UsageError> {
    text.parse()
        .map_err(|_| UsageError::Invalid(format!("{flag} {text:?} is not a port (0-65535)")))
}

fn absolute(path: &str) -> PathBuf {
    std::path::absolute(Path::new(path)).unwrap_or_else(|_| path.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<StackOptions, UsageError> {
        parse_args(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn defaults_match_make_run() {
        let options = parse(&[]).expect("no arguments are fine");
        assert_eq!(options.listen_port, 10000);
        assert_eq!(options.admin_port, 9901);
        let cp = options.control_plane.expect("a control plane by default");
        assert_eq!(cp.port, 8090);
        assert!(cp.data_dir.ends_with(".cache/control-plane") && cp.data_dir.is_absolute());
        assert_eq!(options.upstream_port, 8000);
        assert_eq!(
            options.upstream,
            UpstreamChoice::Inference { models: Vec::new() }
        );
        assert!(options.config.ends_with("envoy/filter-config.json"));
        assert!(options.state_dir.ends_with(".cache/run"));
        assert!(options.config.is_absolute() && options.state_dir.is_absolute());
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let options = parse(&[
            "--config",
            "my.json",
            "--listen-port=18080",
            "--admin-port",
            "0",
            "--upstream",
            "127.0.0.1:8000",
            "--state-dir",
            "/tmp/s",
        ])
        .expect("valid");
        assert!(options.config.is_absolute() && options.config.ends_with("my.json"));
        assert_eq!(options.listen_port, 18080);
        assert_eq!(options.admin_port, 0);
        assert_eq!(
            options.upstream,
            UpstreamChoice::External("127.0.0.1:8000".into())
        );
        let model = parse(&["--model", "m.gguf"]).expect("valid").upstream;
        assert!(
            matches!(&model, UpstreamChoice::Inference { models } if models.len() == 1
                && models[0].path.is_absolute() && models[0].path.ends_with("m.gguf")
                && models[0].id.is_none())
        );
        // Several, with and without ids; a path with `=` is still a path.
        let UpstreamChoice::Inference { models } = parse(&[
            "--model",
            "gemma=/m/g.gguf",
            "--model=/m/s.gguf",
            "--model",
            "/m/a=b.gguf",
            "--model",
            "meta-llama/Llama-3.2-1B=/m/l.gguf",
        ])
        .expect("valid")
        .upstream
        else {
            panic!("not the inference server")
        };
        let got: Vec<(String, Option<&str>)> = models
            .iter()
            .map(|m| (m.path.display().to_string(), m.id.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("/m/g.gguf".to_string(), Some("gemma")),
                ("/m/s.gguf".to_string(), None),
                ("/m/a=b.gguf".to_string(), None),
                ("/m/l.gguf".to_string(), Some("meta-llama/Llama-3.2-1B")),
            ]
        );
        assert_eq!(
            parse(&["--mock"]).expect("valid").upstream,
            UpstreamChoice::Mock
        );
        // The built-in port is free for others when an external server is used.
        assert!(parse(&["--upstream", "h:1", "--listen-port", "8000"]).is_ok());
        assert_eq!(options.state_dir, PathBuf::from("/tmp/s"));
        let cp = parse(&["--control-plane-port=0", "--control-plane-dir", "/tmp/cp"])
            .expect("valid")
            .control_plane
            .expect("kept");
        assert_eq!((cp.port, cp.data_dir), (0, PathBuf::from("/tmp/cp")));
        assert_eq!(
            parse(&["--no-control-plane"]).expect("valid").control_plane,
            None
        );
        assert!(parse(&[]).expect("valid").demo_provider);
        assert!(!parse(&["--no-demo-provider"]).expect("valid").demo_provider);
        let providers = parse(&["--providers", "p.json"]).expect("valid").providers;
        assert!(providers.is_some_and(|p| p.is_absolute() && p.ends_with("p.json")));
    }

    #[test]
    fn bad_command_lines_are_named() {
        for (args, expected) in [
            (
                &["--listen-port", "80800"][..],
                "--listen-port \"80800\" is not a port",
            ),
            (&["--admin-port"], "--admin-port needs a value"),
            (&["--bogus"], "unknown argument \"--bogus\""),
            (&["--upstream", " "], "--upstream needs HOST:PORT"),
            (
                &["--upstream", "127.0.0.1:1", "--upstream-port", "9"],
                "no meaning with --upstream",
            ),
            (
                &["--mock", "--model", "m.gguf"],
                "--mock and --model both choose the upstream",
            ),
            (
                &["--upstream", "h:1", "--mock"],
                "--upstream and --mock both choose",
            ),
            (
                &["--admin-port", "10000"],
                "--listen-port and --admin-port are both 10000",
            ),
            (
                &["--upstream-port", "9901"],
                "--admin-port and --upstream-port are both 9901",
            ),
            (
                &["--control-plane-port", "8000"],
                "--upstream-port and --control-plane-port are both 8000",
            ),
        ] {
            match parse(args) {
                Err(UsageError::Invalid(message)) => {
                    assert!(message.contains(expected), "{args:?}: {message}");
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert_eq!(parse(&["-h"]), Err(UsageError::Help));
        // Two ports of 0 do not collide: the kernel picks distinct ones.
        assert!(parse(&["--listen-port", "0", "--admin-port", "0"]).is_ok());
    }
}
