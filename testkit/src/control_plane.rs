//! The real control plane as a child process: the binary `make test` builds,
//! on a loopback port it picks itself, with its data directory (tokens, and
//! the SQLite database unless a PostgreSQL URL is given) kept across
//! restarts of the same launch, so a test can kill it and bring it back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::artifacts::CONTROL_PLANE;
use crate::child::Restartable;
use crate::client::{request, Response};

const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `MAAS_CONTROL_PLANE`, or the `serve`-profile build `make test` makes.
pub fn find_control_plane() -> Option<PathBuf> {
    CONTROL_PLANE.find()
}

pub fn control_plane_binary() -> PathBuf {
    CONTROL_PLANE.require()
}

/// An OIDC issuer the control plane's API trusts.
#[derive(Debug, Clone)]
pub struct ControlPlaneOidc {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: PathBuf,
    pub admin_group: String,
}

/// How to start a control plane.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneLaunch {
    /// 0: any free port.
    pub port: u16,
    /// Tokens and (by default) the SQLite database; kept across restarts.
    pub data_dir: PathBuf,
    /// A PostgreSQL (or SQLite) URL instead of the data directory's SQLite.
    pub database_url: Option<String>,
    pub oidc: Option<ControlPlaneOidc>,
    /// Envoy admin URLs whose usage counters are sampled.
    pub envoy_admin: Vec<String>,
    pub usage_interval_secs: Option<u64>,
    /// Where its log (stderr) goes; default `<data_dir>/control-plane.log`.
    pub log: Option<PathBuf>,
}

pub struct ControlPlaneProcess {
    child: Child,
    addr: SocketAddr,
    launch: ControlPlaneLaunch,
}

impl ControlPlaneProcess {
    /// Starts the control plane and waits until `/maas-api/health` answers.
    pub fn launch(launch: &ControlPlaneLaunch) -> Result<Self, String> {
        std::fs::create_dir_all(&launch.data_dir)
            .map_err(|e| format!("cannot create {:?}: {e}", launch.data_dir))?;
        let log = launch.log_path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {log:?}: {e}"))?;
        let mut command = Command::new(control_plane_binary());
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", launch.port)])
            .arg("--data-dir")
            .arg(&launch.data_dir)
            .env_remove("MAAS_DATABASE_URL")
            .stdin(Stdio::null())
            .stderr(stderr);
        if let Some(url) = &launch.database_url {
            command.args(["--database-url", url]);
        }
        if let Some(oidc) = &launch.oidc {
            command
                .args(["--oidc-issuer", &oidc.issuer])
                .args(["--oidc-audience", &oidc.audience])
                .arg("--oidc-jwks")
                .arg(&oidc.jwks_file)
                .args(["--oidc-admin-group", &oidc.admin_group]);
        }
        for admin in &launch.envoy_admin {
            command.args(["--envoy-admin", admin]);
        }
        if let Some(secs) = launch.usage_interval_secs {
            command.args(["--usage-interval-secs", &secs.to_string()]);
        }
        let (child, addr) =
            crate::child::spawn_server(&mut command, LISTEN_TIMEOUT, "control plane", &log)?;
        let mut process = Self {
            child,
            addr,
            launch: launch.clone(),
        };
        let url = process.url("/maas-api/health");
        crate::child::wait_healthy(&mut process.child, &url, LISTEN_TIMEOUT, "the API")
            .map_err(|why| crate::child::not_up("control plane", &why, &process.log()))?;
        Ok(process)
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

    /// The admin token it created in its data directory at first start.
    pub fn admin_token(&self) -> String {
        self.token("admin-token")
    }

    /// The token the gateway filter syncs with.
    pub fn gateway_token(&self) -> String {
        self.token("gateway-token")
    }

    fn token(&self, name: &str) -> String {
        let path = self.launch.data_dir.join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))
            .trim()
            .to_string()
    }

    pub fn data_dir(&self) -> &Path {
        &self.launch.data_dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.launch.log_path()).unwrap_or_default()
    }

    /// Calls its API with a bearer token and a JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&serde_json::Value>,
    ) -> Response {
        let auth = format!("Bearer {bearer}");
        let body = body.map(serde_json::Value::to_string);
        request(
            method,
            &self.url(path),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_deref().map(str::as_bytes),
        )
    }
}

impl ControlPlaneLaunch {
    fn log_path(&self) -> PathBuf {
        self.log
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control-plane.log"))
    }
}

impl Restartable for ControlPlaneProcess {
    type Launch = ControlPlaneLaunch;

    fn start(launch: &ControlPlaneLaunch) -> Result<Self, String> {
        Self::launch(launch)
    }

    fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn relaunch(&self) -> ControlPlaneLaunch {
        let mut launch = self.launch.clone();
        launch.port = self.addr.port();
        launch
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
