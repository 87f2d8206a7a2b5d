//! Process wiring: bind first (so `/health` answers "loading"), load the
//! model off the async threads, start the engine, serve until SIGTERM/SIGINT,
//! then drain.

use std::net::SocketAddr;
use std::sync::Arc;

use candle_core::Device;

use tokio::net::TcpListener;

use crate::api::{self, AppState, Ready};
use crate::config::{ChatTemplateFile, DeviceChoice, ReasoningFormat, ServerConfig};
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::model::{load_gguf_on, LoadedModel, Placement};
use crate::text::{
    choose_chat_template, ChatTemplate, TemplateCandidates, TemplateOrigin, TextError,
};

/// How long past the engine's grace period open connections may linger.
const DRAIN_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot load {path}: {message}")]
    Load { path: String, message: String },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

pub async fn serve(config: ServerConfig) -> Result<(), ServeError> {
    let addr = SocketAddr::new(config.host, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr()?;
    // One machine-readable line on stdout: with `--port 0`, supervisors and
    // tests learn the port from it.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{bound}");
        let _ = out.flush();
    }
    let metrics = Arc::new(Metrics::default());
    let app = Arc::new(AppState::new(
        config.model_id.clone(),
        (config.max_body_bytes, config.body_read_timeout),
        metrics.clone(),
        config.api_keys.clone(),
    ));
    tracing::info!(
        addr = %bound,
        model = %config.model_path.display(),
        api_key_required = config.api_keys.is_some(),
        "listening; loading the model"
    );

    let server = tokio::spawn({
        let app = app.clone();
        async move {
            axum::serve(listener, api::router(app))
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    });

    let model_path = config.model_path.display().to_string();
    let load_error = |message: String| ServeError::Load {
        path: model_path.clone(),
        message,
    };
    let path = config.model_path.clone();
    let context = config.context;
    let started = std::time::Instant::now();
    let device = config.device;
    let mut loaded = tokio::task::spawn_blocking(move || {
        let placement = match device {
            DeviceChoice::Cpu => Placement::Host,
            DeviceChoice::CandleCpu => Placement::Device(Device::Cpu),
            DeviceChoice::Cuda(n) => Placement::Device(
                Device::new_cuda(n).map_err(|e| format!("cannot open CUDA device {n}: {e}"))?,
            ),
        };
        load_gguf_on(&path, context, &placement).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| load_error(e.to_string()))?
    .map_err(load_error)?;
    let chat_template = chat_template(config.chat_template.as_ref(), &mut loaded)
        .map_err(|e| load_error(format!("chat template: {e}")))?
        .map(|(template, origin)| (Arc::new(template), origin));
    let loaded = Arc::new(loaded);
    let context = loaded.model.max_positions();
    tracing::info!(
        seconds = started.elapsed().as_secs_f32(),
        architecture = %loaded.model.config().architecture,
        format = loaded.file.format.as_deref().unwrap_or("unstated"),
        layers = loaded.model.config().layers,
        context,
        device = %loaded.model.placement(),
        "model loaded"
    );
    let engine = Engine::start(
        loaded.clone(),
        EngineConfig {
            limits: config.limits,
            kv: config.kv,
            shutdown_grace: config.shutdown_grace,
            threads: config.threads,
        },
        metrics,
    )
    .map_err(|e| load_error(e.to_string()))?;
    let handle = engine.handle.clone();
    let reasoning = config.reasoning_format == ReasoningFormat::Auto
        && chat_template
            .as_ref()
            // `think>`: some templates only strip `</think>` from history
            // (early DeepSeek-R1 distills), and their models still think.
            .is_some_and(|(t, _)| t.source().contains("think>"));
    let _ = app.ready.set(Ready {
        engine: engine.handle,
        loaded,
        context,
        chat_template,
        grammars: Default::default(),
        reasoning,
    });

    // The signal ends the accept loop; in-flight responses finish (or are cut
    // by the engine's grace deadline) before `serve` returns. A client that
    // stops reading could hold its connection open forever, so the drain
    // itself has a deadline too.
    let signalled = Arc::new(tokio::sync::Notify::new());
    let shutdown = tokio::spawn({
        let (handle, signalled) = (handle.clone(), signalled.clone());
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new requests; finishing running ones");
            handle.shutdown();
            signalled.notify_one();
        }
    });
    let drain = config.shutdown_grace + DRAIN_MARGIN;
    let mut server = server;
    let served = tokio::select! {
        served = &mut server => served.map_err(|e| std::io::Error::other(e.to_string()))?,
        () = async { signalled.notified().await; tokio::time::sleep(drain).await } => {
            tracing::warn!(seconds = drain.as_secs(), "connections still open after the drain deadline; closing them");
            server.abort();
            Ok(())
        }
    };
    shutdown.abort();
    handle.shutdown();
    let _ = tokio::task::spawn_blocking(move || engine.thread.join()).await;
    served?;
    Ok(())
}

/// The template chats use, chosen once: `--chat-template`, else the file's,
/// else the built-in one for the architecture. It moves out of `loaded`,
/// whose own field nothing reads after this.
fn chat_template(
    option: Option<&ChatTemplateFile>,
    loaded: &mut LoadedModel,
) -> Result<Option<(ChatTemplate, TemplateOrigin)>, TextError> {
    let architecture = loaded.model.config().architecture.clone();
    let token = |id: Option<u32>| id.and_then(|id| loaded.tokenizer.token_text(id));
    let (bos_token, eos_token) = (
        token(loaded.tokenizer.bos_token_id()),
        token(loaded.tokenizer.eos_token_id()),
    );
    let file = loaded.chat_template.take();
    let file_had_one = file.is_some();
    let chosen = choose_chat_template(TemplateCandidates {
        option: option.map(|o| o.source.as_str()),
        file,
        architecture: &architecture,
        bos_token,
        eos_token,
    })?;
    match chosen.as_ref().map(|(_, origin)| origin) {
        Some(TemplateOrigin::Option) => tracing::info!(
            path = %option.map_or_else(String::new, |o| o.path.display().to_string()),
            overrides_the_file = file_had_one,
            "using the chat template from --chat-template"
        ),
        Some(TemplateOrigin::File) => {}
        Some(TemplateOrigin::Builtin) => tracing::info!(
            "no chat template in the file; using the built-in {architecture} template"
        ),
        None => tracing::warn!(
            "no chat template in the file and none built in for {architecture}; \
             /v1/chat/completions will refuse requests (pass --chat-template FILE)"
        ),
    }
    Ok(chosen)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
