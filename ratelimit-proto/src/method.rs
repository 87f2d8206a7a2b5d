//! The gRPC services and methods, by the names Envoy's `dispatch_grpc_call`
//! takes (service, method) and the HTTP/2 `:path` a server routes on.

/// One unary method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcMethod {
    /// Fully qualified service: `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: &'static str,
    /// Method: `ShouldRateLimit`.
    pub method: &'static str,
    /// `/service/method`.
    pub path: &'static str,
}

macro_rules! envoy_rls {
    () => {
        "envoy.service.ratelimit.v3.RateLimitService"
    };
}

macro_rules! kuadrant {
    () => {
        "kuadrant.service.ratelimit.v1.RateLimitService"
    };
}

macro_rules! method {
    ($service:tt, $method:literal) => {
        GrpcMethod {
            service: $service!(),
            method: $method,
            path: concat!("/", $service!(), "/", $method),
        }
    };
}

/// Envoy's rate limit service v3 (Limitador serves it too).
pub const ENVOY_RLS_SERVICE: &str = envoy_rls!();
/// Kuadrant's extension, served beside Envoy's on the same port.
pub const KUADRANT_SERVICE: &str = kuadrant!();

/// Check and, when allowed, count `hits_addend` (Envoy's `ratelimit` filter calls this).
pub const SHOULD_RATE_LIMIT: GrpcMethod = method!(envoy_rls, "ShouldRateLimit");
/// Would this request be allowed? Counts nothing.
pub const CHECK_RATE_LIMIT: GrpcMethod = method!(kuadrant, "CheckRateLimit");
/// Count `hits_addend` without checking.
pub const REPORT: GrpcMethod = method!(kuadrant, "Report");
/// Hold an estimated amount.
pub const RESERVE: GrpcMethod = method!(kuadrant, "Reserve");
/// Apply the real amount and release the hold.
pub const COMMIT: GrpcMethod = method!(kuadrant, "Commit");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_service_slash_method() {
        let cases = [
            (
                SHOULD_RATE_LIMIT,
                "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            ),
            (
                CHECK_RATE_LIMIT,
                "/kuadrant.service.ratelimit.v1.RateLimitService/CheckRateLimit",
            ),
            (
                REPORT,
                "/kuadrant.service.ratelimit.v1.RateLimitService/Report",
            ),
            (
                RESERVE,
                "/kuadrant.service.ratelimit.v1.RateLimitService/Reserve",
            ),
            (
                COMMIT,
                "/kuadrant.service.ratelimit.v1.RateLimitService/Commit",
            ),
        ];
        for (method, path) in cases {
            assert_eq!(method.path, path);
            assert_eq!(
                method.path,
                format!("/{}/{}", method.service, method.method)
            );
        }
    }
}
