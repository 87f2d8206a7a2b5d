//! An OpenAI-shaped upstream on a loopback port, steered per request by
//! `x-mock-*` headers, that records what it receives.
//!
//! Routes:
//! - `POST /v1/chat/completions`, `POST /v1/completions`: a completion of
//!   `min(max_tokens, x-mock-completion-tokens or 16)` tokens, each the text
//!   `"tok "`. Non-streaming bodies carry `usage`; streams send one SSE event
//!   per token (a body frame each), a `finish_reason` chunk, the usage chunk
//!   only when `stream_options.include_usage` is true (the other chunks then
//!   carry `"usage": null`, as OpenAI does; without it they have no `usage`
//!   field), then `data: [DONE]`.
//! - `POST /v1/messages`: the same completion in Anthropic's Messages API
//!   (see `anthropic`): `anthropic-version` and `max_tokens` required, a
//!   `message` or its event stream, errors in Anthropic's shape.
//! - `GET /v1/models`: one model, `mock-model`.
//! - `GET|DELETE /__mock/requests`: the request log as JSON / clear it.
//! - anything else: 404 with an OpenAI error body.
//!
//! Headers: `x-mock-completion-tokens` (at most 1000000), `x-mock-prompt-tokens` (default: words
//! in the prompt + 3 per message, at least 1), `x-mock-omit-usage: 1`,
//! `x-mock-status: N` (error body, no usage), `x-mock-cut-after: K` (stream:
//! abort the connection after K content events), `x-mock-delay-ms` (before
//! the headers), `x-mock-chunk-delay-ms` (between stream events),
//! `x-mock-content-encoding: E` (a completion is labelled
//! `content-encoding: E`, its body left as it is). A malformed value is
//! answered 400 naming the header.
//!
//! Every request except the control path is recorded before it is answered.

mod anthropic;
mod behaviour;
mod body;
mod openai;
mod request_log;
mod server;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub use behaviour::DEFAULT_COMPLETION_TOKENS;
pub use openai::{MOCK_MODEL, TOKEN_TEXT};
pub use request_log::{RecordedRequest, RequestLog};
pub use server::{serve, REQUESTS_PATH};

/// A running mock on `127.0.0.1:<ephemeral>`, served by its own thread and
/// tokio runtime so synchronous tests can use it. Stops on drop.
pub struct MockUpstream {
    addr: SocketAddr,
    log: Arc<RequestLog>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Options for [`MockUpstream`]; `MockUpstream::start()` uses the defaults.
#[derive(Debug, Clone)]
pub struct MockUpstreamBuilder {
    workers: usize,
    record_limit: Option<usize>,
}

impl Default for MockUpstreamBuilder {
    fn default() -> Self {
        Self {
            // Enough for concurrent tests; a load generator may want more.
            workers: 2,
            // Tests assert on every request they sent.
            record_limit: None,
        }
    }
}

impl MockUpstreamBuilder {
    /// Runtime worker threads.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Keep only the last `limit` requests (`Some(0)`: record nothing). Use a
    /// bound when the mock serves a benchmark.
    pub fn record_limit(mut self, limit: Option<usize>) -> Self {
        self.record_limit = limit;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving; panics if the port or the
    /// runtime cannot be had, which leaves a test nothing to do anyway.
    pub fn start(self) -> MockUpstream {
        self.bind(0)
            .unwrap_or_else(|error| panic!("mock upstream: cannot start on 127.0.0.1:0: {error}"))
    }

    /// Binds `127.0.0.1:port` (0: any free port) and starts serving, on its
    /// own thread and runtime; what cannot be had is returned, for runners
    /// that must say which port was taken.
    pub fn bind(self, port: u16) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers)
            .thread_name("mock-upstream")
            .enable_all()
            .build()?;
        // Registered here, not in the thread, so a failure is returned.
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let log = Arc::new(RequestLog::new(self.record_limit));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let served_log = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name(format!("mock-upstream-{addr}"))
            .spawn(move || {
                runtime.block_on(serve(listener, served_log, async move {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                }));
            })?;
        Ok(MockUpstream {
            addr,
            log,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl MockUpstream {
    pub fn start() -> Self {
        Self::builder().start()
    }

    pub fn builder() -> MockUpstreamBuilder {
        MockUpstreamBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far (except the control path), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.log.snapshot()
    }

    pub fn clear_requests(&self) {
        self.log.clear();
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The server may already be gone (its thread panicked); nothing to stop then.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Dropping the runtime at the end of the thread closes open connections.
            let _ = thread.join();
        }
    }
}
