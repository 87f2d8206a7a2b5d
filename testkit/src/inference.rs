//! The real inference server as a child process: the release binary that
//! `make test` builds, on a loopback port it picks itself (`--port 0`),
//! waited on until `/health` says the model is loaded, stopped on drop. It
//! can be killed and brought back on the same port ([`Restartable`]), as a
//! crash and a redeploy would; its counters (`/metrics`) start from zero
//! again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::artifacts::INFERENCE_SERVER;
use crate::child::Restartable;
use crate::gateway::workspace_root;

const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The file name of the embedded default model in the project's cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `MAAS_INFERENCE_SERVER`, or the `serve`-profile build `make test` makes.
pub fn find_inference_server() -> Option<PathBuf> {
    INFERENCE_SERVER.find()
}

pub fn inference_server_binary() -> PathBuf {
    INFERENCE_SERVER.require()
}

/// Where the embedded default model belongs (`MAAS_MODEL_DIR` or
/// `.cache/models`), whether or not it is there yet.
pub fn default_model_path() -> PathBuf {
    let dir = std::env::var_os("MAAS_MODEL_DIR")
        .map_or_else(|| workspace_root().join(".cache/models"), PathBuf::from);
    dir.join(DEFAULT_MODEL_FILE)
}

/// The embedded default model; panics with the command that fetches it.
pub fn default_model() -> PathBuf {
    let path = default_model_path();
    assert!(
        path.is_file(),
        "no model at {path:?}: run `make test` (or `make model`), which fetches it"
    );
    path
}

pub struct InferenceServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    keep_log: bool,
    launch: InferenceLaunch,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// How to start a server beyond [`InferenceServer::start`]'s defaults.
#[derive(Debug, Clone)]
pub struct InferenceLaunch {
    /// 0: any free port (read back from the server's `listening on` line).
    pub port: u16,
    pub model: PathBuf,
    pub model_id: String,
    /// Where its log (stderr) goes; `None`: a temporary file removed on drop.
    pub log: Option<PathBuf>,
    pub args: Vec<String>,
}

impl InferenceLaunch {
    /// The embedded default model on any free port.
    pub fn default_model() -> Self {
        Self {
            port: 0,
            model: default_model(),
            model_id: "smollm2-135m-instruct".into(),
            log: None,
            args: Vec::new(),
        }
    }
}

impl InferenceServer {
    /// Starts the server with the default model plus `args`, and waits until
    /// it serves. Panics with the server's log when it does not come up.
    pub fn start(args: &[&str]) -> Self {
        let mut launch = InferenceLaunch::default_model();
        launch.args = args.iter().map(|a| a.to_string()).collect();
        Self::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a server and waits until `/health` says the model is loaded;
    /// `Err` carries the reason and the server's log.
    pub fn launch(launch: &InferenceLaunch) -> Result<Self, String> {
        let (log, keep_log) = match &launch.log {
            Some(path) => (path.clone(), true),
            None => {
                let n = SERVERS.fetch_add(1, Ordering::Relaxed);
                (
                    std::env::temp_dir()
                        .join(format!("maas-inference-{}-{n}.log", std::process::id())),
                    false,
                )
            }
        };
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("cannot create {log:?}: {e}"))?;
        let mut command = Command::new(inference_server_binary());
        command
            .args(["--host", "127.0.0.1", "--port", &launch.port.to_string()])
            .args(["--model-id", &launch.model_id])
            .arg("--model")
            .arg(&launch.model)
            .args(&launch.args)
            .stdin(Stdio::null())
            .stderr(stderr);
        let (child, addr) =
            crate::child::spawn_server(&mut command, LISTEN_TIMEOUT, "inference server", &log)?;
        let mut server = Self {
            child,
            addr,
            log,
            keep_log,
            launch: launch.clone(),
        };
        match server.wait_loaded() {
            Ok(()) => Ok(server),
            Err(why) => Err(server.failure(why)),
        }
    }

    fn wait_loaded(&mut self) -> Result<(), String> {
        let url = self.url("/health");
        crate::child::wait_healthy(&mut self.child, &url, LOAD_TIMEOUT, "the model")
    }

    fn failure(&mut self, why: String) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::child::not_up("inference server", &why, &self.log())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// The server's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn signal_term(&self) {
        crate::child::signal_term(&self.child);
    }

    /// Waits for the process to exit; kills it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        crate::child::wait_or_kill(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("cannot wait for the inference server"))
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_term();
        self.wait_exit(TERMINATE_TIMEOUT)
    }
}

impl Restartable for InferenceServer {
    type Launch = InferenceLaunch;

    fn start(launch: &InferenceLaunch) -> Result<Self, String> {
        Self::launch(launch)
    }

    fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn relaunch(&self) -> InferenceLaunch {
        let mut launch = self.launch.clone();
        launch.port = self.addr.port();
        launch
    }
}

impl Drop for InferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A Python interpreter that can `import openai` and `jsonschema` (the
/// pinned `examples/requirements.txt`), for the example scripts:
/// `MAAS_PYTHON` (set by `make test` to the pinned environment in
/// `.cache/python`), which then must work; else `python3` when it happens to
/// have the package; else the test fails, saying how to get one.
pub fn python_with_openai() -> PathBuf {
    let imports = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import openai, jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(python) = std::env::var_os("MAAS_PYTHON").map(PathBuf::from) {
        assert!(
            imports(&python),
            "MAAS_PYTHON={python:?} cannot import openai and jsonschema: run scripts/python-env.sh (make test does)"
        );
        return python;
    }
    let fallback = PathBuf::from("python3");
    assert!(
        imports(&fallback),
        "no python that can import openai and jsonschema: `make test` sets MAAS_PYTHON to the pinned environment \
         (scripts/python-env.sh); by hand: ./scripts/python-env.sh && export MAAS_PYTHON=$PWD/.cache/python/bin/python"
    );
    fallback
}
