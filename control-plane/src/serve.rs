//! Running the control plane: open the database (migrations run on
//! connect), load or create the admin and gateway tokens, load the OIDC
//! issuer's JWKS when configured, and serve until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
            Some(
                TokenVerifier::new(settings.clone(), &jwks)
                    .map_err(|e| ServeError::Jwks(jwks_path.clone(), e))?,
            )
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
