//! The HTTP/1 server: accept loop, routing, and the streaming sender.
//!
//! Built for load as well as for tests (whole-system benchmarks put it behind
//! Envoy): no per-request logging, stream events pre-rendered, and the only
//! shared state is the request log's mutex and one counter.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::anthropic;
use super::behaviour::Behaviour;
use super::body::{FrameResult, MockBody};
use super::openai::{
    error_body, models_body, Completion, CompletionRequest, Endpoint, StreamEvents,
};
use super::request_log::{RecordedRequest, RequestLog};

/// The control path: lists (GET) or clears (DELETE) the request log; never recorded.
pub const REQUESTS_PATH: &str = "/__mock/requests";

/// An aborting stream first waits until hyper has taken every queued event
/// (hyper drops what it has buffered but not written when the body errors,
/// and it flushes in the same poll that finds the body empty), then this long
/// more for good measure, then fails the body.
const ABORT_FLUSH_GRACE: Duration = Duration::from_millis(10);
/// Bound on the wait for hyper to take the queued events; a client that stopped
/// reading must not pin the task.
const ABORT_DRAIN_LIMIT: Duration = Duration::from_secs(5);

struct State {
    log: Arc<RequestLog>,
    serial: AtomicU64,
}

/// Serves the mock on `listener` until `shutdown` completes. Connections still
/// open at that point are dropped with the runtime that runs them.
pub async fn serve(
    listener: TcpListener,
    log: Arc<RequestLog>,
    shutdown: impl Future<Output = ()>,
) {
    let state = Arc::new(State {
        log,
        serial: AtomicU64::new(0),
    });
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Stream events are small writes a client waits on.
                    let _ = stream.set_nodelay(true);
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        let service = service_fn(move |request| handle(request, Arc::clone(&state)));
                        // A client that resets mid-response is routine (and is
                        // exactly what cut-after tests provoke); nothing to report.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors under load: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn handle(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = request.into_parts();
    if parts.uri.path() == REQUESTS_PATH {
        return Ok(request_log_endpoint(&parts.method, &state.log));
    }
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The client went away mid-body; no one reads this answer.
        Err(_) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "incomplete request body",
                "invalid_request_error",
                None,
            ))
        }
    };
    state.log.record(RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });

    let behaviour = match Behaviour::from_headers(&parts.headers) {
        Ok(behaviour) => behaviour,
        Err(invalid) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &invalid.to_string(),
                "invalid_request_error",
                None,
            ))
        }
    };
    if let Some(delay) = behaviour.delay {
        tokio::time::sleep(delay).await;
    }
    let messages_api = parts.uri.path() == "/v1/messages";
    if let Some(status) = behaviour.status {
        if messages_api {
            return Ok(anthropic_error(status, "mock failure"));
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(error(status, "mock failure", "server_error", None));
    }

    let response = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/v1/messages") => {
            if parts.headers.contains_key(anthropic::VERSION_HEADER) {
                messages(&body, &behaviour, &state)
            } else {
                anthropic_error(400, "anthropic-version: header is required")
            }
        }
        (&Method::POST, "/v1/chat/completions") => {
            completion(Endpoint::ChatCompletions, &body, &behaviour, &state)
        }
        (&Method::POST, "/v1/completions") => {
            completion(Endpoint::Completions, &body, &behaviour, &state)
        }
        (&Method::GET, "/v1/models") => json(StatusCode::OK, models_body()),
        (method, path) => error(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
            "invalid_request_error",
            Some("unknown_url"),
        ),
    };
    Ok(response)
}

fn request_log_endpoint(method: &Method, log: &RequestLog) -> Response<MockBody> {
    match *method {
        Method::GET => {
            let entries: Vec<_> = log
                .snapshot()
                .iter()
                .map(RecordedRequest::to_json)
                .collect();
            json(
                StatusCode::OK,
                Bytes::from(serde_json::Value::from(entries).to_string()),
            )
        }
        Method::DELETE => {
            log.clear();
            plain(StatusCode::NO_CONTENT, MockBody::full(Bytes::new()))
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET or DELETE",
            "invalid_request_error",
            None,
        ),
    }
}

fn completion(
    endpoint: Endpoint,
    body: &[u8],
    behaviour: &Behaviour,
    state: &State,
) -> Response<MockBody> {
    let request = match CompletionRequest::parse(body) {
        Ok(request) => request,
        Err(invalid) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {invalid}"),
                "invalid_request_error",
                None,
            )
        }
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let serial = state.serial.fetch_add(1, Ordering::Relaxed);
    let plan = Completion::plan(endpoint, &request, behaviour, serial, created);
    let mut response = if request.streams() {
        stream_response(plan.stream(request.include_usage()), behaviour)
    } else {
        json(StatusCode::OK, plan.body())
    };
    if let Some(encoding) = behaviour
        .content_encoding
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        response.headers_mut().insert(CONTENT_ENCODING, encoding);
    }
    response
}

/// A `text/event-stream` response sending `events` one frame each.
fn stream_response(events: StreamEvents, behaviour: &Behaviour) -> Response<MockBody> {
    // Small buffer: the sender should not run far ahead of a slow reader.
    let (sender, receiver) = mpsc::channel(8);
    tokio::spawn(send_stream(
        EventSender {
            sender,
            delay: behaviour.chunk_delay,
            sent: 0,
        },
        events,
        behaviour.cut_after,
    ));
    let mut response = plain(StatusCode::OK, MockBody::Channel(receiver));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Anthropic's `POST /v1/messages`: a `message`, or its event stream.
fn messages(body: &[u8], behaviour: &Behaviour, state: &State) -> Response<MockBody> {
    let request = match anthropic::MessagesRequest::parse(body) {
        Ok(request) => request,
        Err(invalid) => return anthropic_error(400, &format!("invalid request body: {invalid}")),
    };
    let serial = state.serial.fetch_add(1, Ordering::Relaxed);
    let plan = anthropic::Message::plan(&request, behaviour, serial);
    if !request.stream {
        return json(StatusCode::OK, plan.body());
    }
    stream_response(plan.stream(), behaviour)
}

fn anthropic_error(status: u16, message: &str) -> Response<MockBody> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, anthropic::error_body(status, message))
}

/// Feeds one event per body frame, pausing `delay` between events.
struct EventSender {
    sender: mpsc::Sender<FrameResult>,
    delay: Option<Duration>,
    sent: u64,
}

impl EventSender {
    /// False when the client is gone (the body was dropped): stop producing.
    async fn send(&mut self, event: Bytes) -> bool {
        if let (Some(delay), true) = (self.delay, self.sent > 0) {
            tokio::time::sleep(delay).await;
        }
        self.sent += 1;
        self.sender.send(Ok(Frame::data(event))).await.is_ok()
    }

    async fn abort(self) {
        let drained = async {
            while self.sender.capacity() < self.sender.max_capacity() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let _ = tokio::time::timeout(ABORT_DRAIN_LIMIT, drained).await;
        tokio::time::sleep(ABORT_FLUSH_GRACE).await;
        let _ = self
            .sender
            .send(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "x-mock-cut-after: aborting the stream",
            )))
            .await;
    }
}

async fn send_stream(mut sender: EventSender, events: StreamEvents, cut_after: Option<u64>) {
    for index in 0..events.content_events {
        if cut_after == Some(index) {
            return sender.abort().await;
        }
        if !sender.send(events.content(index)).await {
            return;
        }
    }
    if cut_after == Some(events.content_events) {
        return sender.abort().await;
    }
    if !sender.send(events.finish.clone()).await {
        return;
    }
    if let Some(usage) = events.usage.clone() {
        if !sender.send(usage).await {
            return;
        }
    }
    sender.send(events.done.clone()).await;
}

fn plain(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = plain(status, MockBody::full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response<MockBody> {
    json(status, error_body(message, kind, code))
}
