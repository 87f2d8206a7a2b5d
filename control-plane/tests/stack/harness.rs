//! The whole product on loopback: the real control plane (SQLite, or a
//! fresh PostgreSQL database on the server `MAAS_TEST_POSTGRES_URL` names,
//! which the PostgreSQL scenarios require; `make test` starts one), the real
//! inference server with SmolLM2, and Envoy with the filter syncing keys from
//! the control plane and verifying OIDC tokens from the test issuer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use maas_testkit::{
    ControlPlaneLaunch, ControlPlaneOidc, ControlPlaneProcess, Gateway, InferenceServer, Response,
    Restartable,
};
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;

pub const MODEL: &str = "smollm2-135m-instruct";
/// Routed by the gateway, allowed only to team-b.
pub const OTHER_MODEL: &str = "other-model";
pub const ISSUER: &str = "https://issuer.test";
pub const SYNC_INTERVAL_MS: u64 = 200;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Stack {
    pub gateway: Gateway,
    pub cp: ControlPlaneProcess,
    pub admin: String,
    _server: InferenceServer,
    postgres: Option<String>,
    dir: PathBuf,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Stack {
    /// Fails the test, saying how to get one, when PostgreSQL is wanted and
    /// no server is configured. `sampled`: the control plane samples the
    /// gateway's usage counters every second.
    pub fn start(backend: Backend, sampled: bool) -> Stack {
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let root = maas_testkit::postgres::postgres_server();
                let url = format!("{root}/{}", unique("maas_e2e"));
                sqlx::any::install_default_drivers();
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(sqlx::Any::create_database(&url)).unwrap();
                Some(url)
            }
        };
        let dir = std::env::temp_dir().join(unique("maas-e2e"));
        let server = InferenceServer::start(&[]);
        let mut launch = ControlPlaneLaunch {
            data_dir: dir.join("control-plane"),
            database_url: postgres.clone(),
            oidc: Some(ControlPlaneOidc {
                issuer: ISSUER.into(),
                audience: "maas".into(),
                jwks_file: fixtures().join("jwks.json"),
                admin_group: "maas-admins".into(),
            }),
            usage_interval_secs: Some(1),
            ..ControlPlaneLaunch::default()
        };
        let mut cp = ControlPlaneProcess::launch(&launch).unwrap_or_else(|e| panic!("{e}"));
        let gateway = Gateway::builder()
            .filter_config(json!({
                "models": [MODEL, OTHER_MODEL],
                "subscriptions": {},
                "default_max_tokens": 64,
                "control_plane": {
                    "cluster": "maas-control-plane",
                    "token": cp.gateway_token(),
                    "sync_interval_ms": SYNC_INTERVAL_MS,
                    "timeout_ms": 1000,
                    // Small pages, so a sync of a few keys takes several.
                    "sync_page_keys": 2
                },
                "oidc": {}
            }))
            .model(MODEL, server.addr())
            .model(OTHER_MODEL, server.addr())
            .control_plane(cp.addr())
            .oidc(
                ISSUER,
                "maas",
                std::fs::read_to_string(fixtures().join("jwks.json")).unwrap(),
            )
            .concurrency(2)
            .start();
        if sampled {
            // The sampler needs the gateway's admin address, known only now.
            launch.port = cp.addr().port();
            launch.envoy_admin = vec![gateway.admin_url("")];
            drop(cp);
            cp = ControlPlaneProcess::launch(&launch).unwrap_or_else(|e| panic!("{e}"));
        }
        let admin = cp.admin_token();
        let stack = Stack {
            gateway,
            cp,
            admin,
            _server: server,
            postgres,
            dir,
        };
        for spec in [
            json!({"name": "team-a", "models": [MODEL], "limits": {"tokens": ["100000/min"]},
                   "key_limits": {"requests": ["100/min"]}, "groups": ["team-a"]}),
            json!({"name": "team-b", "models": [OTHER_MODEL], "limits": "unlimited", "groups": ["team-b"]}),
        ] {
            let name = spec["name"].as_str().unwrap().to_string();
            let r = stack.api(
                "PUT",
                &format!("/maas-api/v1/subscriptions/{name}"),
                &stack.admin,
                Some(&spec),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Subscriptions reach the gateway with the next sync (keys need not
        // wait: one the gateway has not seen yet is looked up).
        maas_testkit::eventually(Duration::from_secs(10), || {
            let stats = stack.stats();
            match maas_testkit::prometheus::metric(&stats, "maas_subscriptions", &[]) {
                Some(n) if n >= 2.0 => Ok(()),
                other => Err(format!("subscriptions in force: {other:?}")),
            }
        });
        stack
    }

    /// The control plane's API, through the gateway's `/maas-api` route.
    pub fn api(&self, method: &str, path: &str, bearer: &str, body: Option<&Value>) -> Response {
        let auth = format!("Bearer {bearer}");
        let body = body.map(Value::to_string);
        self.gateway.request(
            method,
            path,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_deref().map(str::as_bytes),
        )
    }

    /// Mints a key as `bearer` and returns the API's answer (201 expected).
    pub fn mint(&self, bearer: &str, body: Value) -> Value {
        let r = self.api("POST", "/maas-api/v1/api-keys", bearer, Some(&body));
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    /// A short greedy chat with `credential` as the bearer.
    pub fn chat(&self, credential: &str, model: &str, stream: bool) -> Response {
        let auth = format!("Bearer {credential}");
        self.gateway.post_json(
            "/v1/chat/completions",
            &[("authorization", auth.as_str())],
            &json!({"model": model, "max_tokens": 8, "temperature": 0, "stream": stream,
                    "messages": [{"role": "user", "content": "Say hello."}],
                    "stream_options": stream.then(|| json!({"include_usage": true}))}),
        )
    }

    /// Polls `/v1/models` with `key` until it answers `status`; how long that took.
    pub fn until_status(&self, key: &str, status: u16, within: Duration) -> Duration {
        let start = Instant::now();
        let auth = format!("Bearer {key}");
        loop {
            let r = self.gateway.request(
                "GET",
                "/v1/models",
                &[("authorization", auth.as_str())],
                None,
            );
            if r.status == status {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "still {} after {within:?}: {}",
                r.status,
                r.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stats(&self) -> String {
        self.gateway.admin_get("/stats/prometheus")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cp.kill();
        if let Some(url) = &self.postgres {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                let _ = rt.block_on(sqlx::Any::force_drop_database(url));
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
