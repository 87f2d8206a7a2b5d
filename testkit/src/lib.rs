//! The MaaS gateway's test harness and local development upstream.
//!
//! - [`mock_upstream`]: an OpenAI-shaped model server on a loopback port,
//!   steered per request by `x-mock-*` headers (also the `mock-upstream` binary).
//! - [`gateway`]: renders `envoy/gateway.template.yaml` into an Envoy bootstrap
//!   (also behind the `maas-stack` crate's `render-gateway` binary).
//! - [`envoy`]: runs that bootstrap in a real Envoy with the filter, waits until
//!   it serves, reads its admin API, metrics and access log, and stops it on drop.
//! - [`inference`]: the real inference server binary on a loopback port.
//! - [`control_plane`]: the real control plane binary on a loopback port.
//! - [`limiter`], [`redis`]: the real rate limiter binary and a throwaway
//!   Redis on loopback ports; [`ratelimit_client`] talks gRPC to a limiter.
//! - [`postgres`]: the PostgreSQL server `make test` starts, for tests that
//!   make their own database on it.
//! - [`test_ca`]: a throwaway CA and server certificates (the `openssl`
//!   CLI) for TLS tests; [`envoy::TlsFront`] serves one in front of a mock.
//! - [`artifacts`]: where those binaries and the filter module are found.
//! - [`child`]: supervision of the processes all of the above start (spawn,
//!   wait until healthy, terminate), also used by the local stack runner
//!   (the `maas-stack` crate, which `make run` starts).
//! - [`client`], [`eventually()`], [`prometheus`]: what tests use to talk to
//!   both and to assert on state that settles asynchronously.
//!
//! Everything binds `127.0.0.1` port 0, so tests run in parallel.

// The workspace denies panics in shipped code; this crate is test harness,
// where a failed setup or an assertion helper (`eventually`) must fail the
// test at once, so it may panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod artifacts;
pub mod child;
pub use child::Restartable;
pub mod client;
pub mod control_plane;
pub mod envoy;
pub mod eventually;
pub mod gateway;
pub mod inference;
pub mod limiter;
pub mod mock_upstream;
pub mod postgres;
pub mod private_file;
pub use maas_prometheus_text as prometheus;
pub mod ratelimit_client;
pub mod redis;
pub mod test_ca;

pub use client::{get, post_json, request, try_request, ClientError, Response};
pub use control_plane::{
    control_plane_binary, ControlPlaneLaunch, ControlPlaneOidc, ControlPlaneProcess,
};
pub use envoy::{validate, validate_yaml, Gateway, GatewayBuilder, StartError};
pub use eventually::eventually;
pub use gateway::{
    credential_sds_path, gateway_template, render_gateway, workspace_root, write_credential_sds,
    CredentialSpec, GatewaySpec, OidcSpec, ProviderSpec, RenderError,
};
pub use inference::{
    default_model, inference_server_binary, python_with_openai, InferenceLaunch, InferenceServer,
};
pub use limiter::{limiter_binary, LimiterLaunch, LimiterProcess};
pub use mock_upstream::{MockUpstream, RecordedRequest};
pub use ratelimit_client::{GrpcCode, GrpcStatus, RateLimitClient};
pub use redis::{redis_server_binary, RedisProcess};
pub use test_ca::{ServerCert, TestCa};
