//! Generates the tonic server stubs of the two services the limiter serves,
//! from a Rust description of their unary methods over the hand-written
//! message types of `maas-ratelimit-proto`: no `.proto` files, no protoc.

use tonic_build::manual::{Builder, Method, Service};

const CODEC: &str = "tonic_prost::ProstCodec";

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("maas_ratelimit_proto::{input}"))
        .output_type(format!("maas_ratelimit_proto::{output}"))
        .codec_path(CODEC)
        .build()
}

fn main() {
    let envoy = Service::builder()
        .name("RateLimitService")
        .package("envoy.service.ratelimit.v3")
        .method(unary(
            "should_rate_limit",
            "ShouldRateLimit",
            "RateLimitRequest",
            "RateLimitResponse",
        ))
        .build();
    let kuadrant = Service::builder()
        .name("RateLimitService")
        .package("kuadrant.service.ratelimit.v1")
        .method(unary(
            "check_rate_limit",
            "CheckRateLimit",
            "RateLimitRequest",
            "RateLimitResponse",
        ))
        .method(unary(
            "report",
            "Report",
            "RateLimitRequest",
            "RateLimitResponse",
        ))
        .method(unary(
            "reserve",
            "Reserve",
            "ReserveRequest",
            "ReserveResponse",
        ))
        .method(unary("commit", "Commit", "CommitRequest", "CommitResponse"))
        .build();
    Builder::new()
        .build_client(false)
        .compile(&[envoy, kuadrant]);
}
