//! The control plane's router on a loopback port with a SQLite database in
//! a temp dir, and tokens from the local test issuer: what the API tests
//! and the page test share.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use maas_control_plane::api::{admission, router, AppState, Authenticator};
use maas_control_plane::key_lifetime::KeyLifetime;
use maas_control_plane::oidc::{OidcSettings, TokenVerifier};
use maas_control_plane::store::Store;
use maas_filter::auth::keys::KeyDigest;
use maas_testkit::{request, Response};
use serde_json::{json, Value};

pub const ADMIN: &str = "admin-token-for-tests";
pub const GATEWAY: &str = "gateway-token-for-tests";
pub const ISSUER_KEY: &[u8] = include_bytes!("../fixtures/issuer.key.pem");
pub const FORGER_KEY: &[u8] = include_bytes!("../fixtures/forger.key.pem");
const JWKS: &[u8] = include_bytes!("../fixtures/jwks.json");
const ISS: &str = "https://issuer.test";

pub struct ControlPlane {
    pub addr: SocketAddr,
    pub store: Store,
    _dir: TempDir,
    pub runtime: tokio::runtime::Runtime,
}

struct TempDir(std::path::PathBuf);

/// A database file kept aside; see [`ControlPlane::backup`].
pub struct Backup(TempDir);

fn fresh_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("maas-cp-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `serve` takes as flags and a test may change.
pub struct Settings {
    /// `--max-key-lifetime`.
    pub max_key_lifetime: Option<KeyLifetime>,
    /// `--max-keys-minted-per-day`.
    pub max_keys_minted_per_day: u64,
    /// How many callers' requests run at once: in all, per caller, and
    /// how long one waits for a place.
    pub admission: (usize, usize, std::time::Duration),
}

impl Default for Settings {
    /// `serve`'s defaults.
    fn default() -> Self {
        Self {
            max_key_lifetime: None,
            max_keys_minted_per_day: 100,
            admission: (
                admission::CALLERS_AT_ONCE,
                admission::PER_CALLER_AT_ONCE,
                admission::WAIT,
            ),
        }
    }
}

impl ControlPlane {
    pub fn start() -> Self {
        Self::start_with(Settings::default())
    }

    /// A control plane started with `settings`.
    pub fn start_with(settings: Settings) -> Self {
        Self::start_in(fresh_dir(), settings)
    }

    /// A copy of the database as it is now (SQLite's `VACUUM INTO`), as an
    /// operator's backup would be.
    pub fn backup(&self) -> Backup {
        use sqlx::Connection as _;
        let dir = fresh_dir();
        let from = format!("sqlite://{}", self._dir.0.join("maas.db").display());
        let into = format!("VACUUM INTO '{}'", dir.join("maas.db").display());
        self.runtime
            .block_on(async move {
                let mut conn = sqlx::SqliteConnection::connect(&from).await?;
                // A path of the test's own temp dir.
                sqlx::query(sqlx::AssertSqlSafe(into))
                    .execute(&mut conn)
                    .await
            })
            .unwrap();
        Backup(TempDir(dir))
    }

    /// A control plane on a copy of `backup`: the database restored.
    pub fn restore(backup: &Backup) -> Self {
        let dir = fresh_dir();
        std::fs::copy(backup.0 .0.join("maas.db"), dir.join("maas.db")).unwrap();
        Self::start_in(dir, Settings::default())
    }

    fn start_in(dir: std::path::PathBuf, settings: Settings) -> Self {
        let url = format!("sqlite://{}?mode=rwc", dir.join("maas.db").display());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, store) = runtime.block_on(async {
            let store = Store::connect(&url).await.unwrap();
            let handle = store.clone();
            let oidc = TokenVerifier::new(
                OidcSettings {
                    issuer: ISS.into(),
                    audience: "maas".into(),
                    groups_claim: "groups".into(),
                    admin_groups: vec!["maas-admins".into()],
                },
                JWKS,
            )
            .unwrap();
            let state = Arc::new(AppState {
                store,
                auth: Authenticator::new(
                    Some(KeyDigest::of(ADMIN)),
                    Some(KeyDigest::of(GATEWAY)),
                    Some(Arc::new(oidc)),
                ),
                max_key_lifetime: settings.max_key_lifetime,
                max_keys_minted_per_day: settings.max_keys_minted_per_day,
                admission: admission::Admission::new(
                    settings.admission.0,
                    settings.admission.1,
                    settings.admission.2,
                ),
                price_exposition: Default::default(),
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, router(state)).await });
            (addr, handle)
        });
        Self {
            addr,
            store,
            _dir: TempDir(dir),
            runtime,
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let auth = bearer.map(|b| format!("Bearer {b}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        let body = body.map(Value::to_string);
        request(
            method,
            &format!("http://{}{path}", self.addr),
            &headers,
            body.as_deref().map(str::as_bytes),
        )
    }

    /// Usage in the current minute's bucket, as the sampler would add it.
    pub fn add_usage(&self, rows: &[maas_control_plane::store::UsageRow]) {
        let bucket = (now() as i64 / 60) * 60;
        self.runtime
            .block_on(self.store.add_usage(bucket, rows))
            .unwrap();
    }

    pub fn subscription(&self, spec: Value) -> Response {
        self.subscription_as(ADMIN, spec)
    }

    /// `POST /api-keys` with `bearer`'s rights.
    pub fn mint(&self, bearer: &str, body: Value) -> Response {
        self.call("POST", "/maas-api/v1/api-keys", Some(bearer), Some(&body))
    }

    /// Every key, as the administrator lists them.
    pub fn all_keys(&self) -> Vec<Value> {
        let listed = self
            .call("GET", "/maas-api/v1/api-keys", Some(ADMIN), None)
            .json();
        listed["data"].as_array().cloned().unwrap_or_default()
    }

    /// `DELETE /api-keys/{id}` with `bearer`'s rights.
    pub fn revoke(&self, id: &str, bearer: &str) -> Response {
        self.call(
            "DELETE",
            &format!("/maas-api/v1/api-keys/{id}"),
            Some(bearer),
            None,
        )
    }

    /// `PUT` a subscription with `bearer`'s rights.
    pub fn subscription_as(&self, bearer: &str, spec: Value) -> Response {
        let name = spec["name"].as_str().unwrap().to_string();
        self.call(
            "PUT",
            &format!("/maas-api/v1/subscriptions/{name}"),
            Some(bearer),
            Some(&spec),
        )
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn token_with(key: &[u8], subject: &str, groups: &[&str], exp: u64) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-issuer-1".into());
    let claims = json!({"iss": ISS, "aud": "maas", "sub": subject, "exp": exp, "groups": groups});
    encode(&header, &claims, &EncodingKey::from_rsa_pem(key).unwrap()).unwrap()
}

pub fn token(subject: &str, groups: &[&str]) -> String {
    token_with(ISSUER_KEY, subject, groups, now() + 600)
}

pub fn setup() -> ControlPlane {
    setup_with(Settings::default())
}

/// [`setup`] on [`ControlPlane::start_with`].
pub fn setup_with(settings: Settings) -> ControlPlane {
    let cp = ControlPlane::start_with(settings);
    for spec in [
        json!({"name": "team-a", "models": ["smollm2-135m-instruct"], "limits": {"tokens": ["20000/min"]}, "groups": ["team-a"], "cost_center": "CC-1"}),
        json!({"name": "team-b", "models": ["other-model"], "limits": "unlimited", "groups": ["team-b"]}),
    ] {
        let r = cp.subscription(spec);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    cp
}
