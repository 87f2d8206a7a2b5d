//! Running the control plane: open the database (migrations run on
//! connect), load or create the admin and gateway tokens, load the OIDC
//! issuer's JWKS when configured, and serve until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{router, AppState, Authenticator};
use crate::key_lifetime::KeyLifetime;
use crate::oidc::{OidcSettings, TokenVerifier};
use crate::showback::gateways::Gateways;
use crate::store::{redacted_url, Store};
use crate::tokens;
use maas_filter::auth::keys::KeyDigest;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Default: SQLite at `<data_dir>/maas.db`.
    pub database_url: Option<String>,
    pub oidc: Option<(OidcSettings, PathBuf)>,
    /// Envoy admin base URLs whose `maas_*` counters are sampled for
    /// showback; each once ([`Gateways::new`] refuses one listed twice).
    pub gateways: Vec<String>,
    pub usage_interval: std::time::Duration,
    /// The longest a minted key may live, and the lifetime of keys minted
    /// without `expires_in`; `None`: no maximum (such keys never expire).
    pub max_key_lifetime: Option<KeyLifetime>,
    /// See `AppState::max_keys_minted_per_day`.
    pub max_keys_minted_per_day: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Token(#[from] tokens::TokenFileError),
    #[error("cannot read the OIDC key set {0}: {1}")]
    JwksFile(PathBuf, std::io::Error),
    #[error("OIDC key set {0}: {1}")]
    Jwks(PathBuf, crate::oidc::JwksError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error(transparent)]
    Gateways(#[from] crate::showback::gateways::DuplicateGateway),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let gateways = Gateways::new(config.gateways.clone())?;
    let url = config.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            config.data_dir.join("maas.db").display()
        )
    });
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| tokens::TokenFileError::Write(config.data_dir.clone(), e))?;
    let store = Store::connect(&url).await?;
    let (admin, new_admin) =
        tokens::load_or_create(&config.data_dir, "admin-token", "maas-admin-")?;
    let (gateway, _) = tokens::load_or_create(&config.data_dir, "gateway-token", "maas-gateway-")?;
    if new_admin {
        // Printed once; afterwards it is in the (owner-only) data directory.
        println!(
            "admin token (also in {}): {admin}",
            config.data_dir.join("admin-token").display()
        );
    }
    let oidc = match &config.oidc {
        Some((settings, jwks_path)) => {
            let jwks =
                std::fs::read(jwks_path).map_err(|e| ServeError::JwksFile(jwks_path.clone(), e))?;
            let verifier = Arc::new(
                TokenVerifier::new(settings.clone(), &jwks)
                    .map_err(|e| ServeError::Jwks(jwks_path.clone(), e))?,
            );
            tokio::spawn(reload_jwks(
                Arc::clone(&verifier),
                jwks_path.clone(),
                jwks,
                JWKS_RELOAD_INTERVAL,
            ));
            Some(verifier)
        }
        None => None,
    };
    if !gateways.is_empty() {
        // Every replica runs one; the one holding the lease samples.
        tokio::spawn(crate::showback::sampler::run(
            store.clone(),
            gateways,
            config.usage_interval,
        ));
    }
    let state = Arc::new(AppState {
        store,
        auth: Authenticator::new(
            Some(KeyDigest::of(&admin)),
            Some(KeyDigest::of(&gateway)),
            oidc,
        ),
        max_key_lifetime: config.max_key_lifetime,
        max_keys_minted_per_day: config.max_keys_minted_per_day,
        admission: Default::default(),
        price_exposition: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind(config.listen, e))?;
    let bound = listener.local_addr()?;
    println!("listening on http://{bound}");
    tracing::info!(addr = %bound, database = %redacted_url(&url), "control plane serving");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    state.store.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// How often the `--oidc-jwks` file is read again.
const JWKS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps `verifier` on the key set in `path`: the issuer's rotated keys are
/// taken, and a key it withdrew (after a compromise) refused, within
/// `every` and without a restart. A file that cannot be read, or is no key
/// set, leaves the keys in use and is logged once per change.
pub(crate) async fn reload_jwks(
    verifier: Arc<TokenVerifier>,
    path: PathBuf,
    mut last: Vec<u8>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut unreadable = false;
    loop {
        tick.tick().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => {
                unreadable = false;
                bytes
            }
            Err(e) => {
                if !unreadable {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the JWKS file; keeping the keys in use");
                }
                unreadable = true;
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        match verifier.replace_keys(&bytes) {
            Ok(0) => {
                tracing::warn!(path = %path.display(), "JWKS reloaded with no usable key: every OIDC token is refused")
            }
            Ok(keys) => tracing::info!(path = %path.display(), keys, "JWKS reloaded"),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the JWKS file changed but is not usable; keeping the keys in use")
            }
        }
        last = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::fixtures::{now, token, ISS, ISSUER_KEY, JWKS};
    use serde_json::json;

    fn signed(kid: &str) -> String {
        let claims = json!({"iss": ISS, "aud": "maas", "sub": "alice", "exp": now() + 300});
        token(ISSUER_KEY, kid, claims)
    }

    /// The issuer's key set rewritten on disk is taken by the running
    /// reloader; a broken rewrite leaves the keys in use.
    #[tokio::test]
    async fn a_rewritten_jwks_file_is_taken_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("maas-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, JWKS).unwrap();
        let settings = OidcSettings {
            issuer: ISS.into(),
            audience: "maas".into(),
            groups_claim: "groups".into(),
            admin_groups: Vec::new(),
        };
        let verifier = Arc::new(TokenVerifier::new(settings, JWKS).unwrap());
        let task = tokio::spawn(reload_jwks(
            Arc::clone(&verifier),
            path.clone(),
            JWKS.to_vec(),
            Duration::from_millis(20),
        ));
        let (old, new) = (signed("test-issuer-1"), signed("test-issuer-2"));
        assert!(verifier.verify(&old).is_ok() && verifier.verify(&new).is_err());
        let rotated = String::from_utf8(JWKS.to_vec())
            .unwrap()
            .replace("test-issuer-1", "test-issuer-2");
        std::fs::write(&path, rotated).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while verifier.verify(&new).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "the new key set was not taken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            verifier.verify(&old).is_err(),
            "the withdrawn key is refused"
        );
        std::fs::write(&path, b"{not json").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(verifier.verify(&new).is_ok(), "the keys in use stay");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
