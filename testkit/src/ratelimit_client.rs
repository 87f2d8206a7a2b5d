//! A blocking gRPC client for the rate limiter (or any server of Envoy's RLS
//! v3 and Kuadrant's extension, Limitador included): unary calls by method
//! path over the shared `maas-ratelimit-proto` messages, h2c, with a
//! deadline per call. Errors are the call's gRPC status (a transport
//! failure reads as UNAVAILABLE).

use std::net::SocketAddr;
use std::time::Duration;

use maas_ratelimit_proto::{
    CommitRequest, CommitResponse, GrpcMethod, Message, RateLimitRequest, RateLimitResponse,
    ReserveRequest, ReserveResponse, CHECK_RATE_LIMIT, COMMIT, REPORT, RESERVE, SHOULD_RATE_LIMIT,
};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

pub use tonic::{Code as GrpcCode, Status as GrpcStatus};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RateLimitClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl RateLimitClient {
    /// A client of the server at `addr`; it connects at the first call (and
    /// reconnects after the server restarts).
    pub fn new(addr: SocketAddr) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr}: {e}"))?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = {
            let _entered = runtime.enter();
            endpoint.connect_lazy()
        };
        Ok(Self { runtime, channel })
    }

    pub fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, GrpcStatus> {
        self.call(SHOULD_RATE_LIMIT, request.clone())
    }

    pub fn check_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, GrpcStatus> {
        self.call(CHECK_RATE_LIMIT, request.clone())
    }

    pub fn report(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, GrpcStatus> {
        self.call(REPORT, request.clone())
    }

    pub fn reserve(&self, request: &ReserveRequest) -> Result<ReserveResponse, GrpcStatus> {
        self.call(RESERVE, request.clone())
    }

    pub fn commit(&self, request: &CommitRequest) -> Result<CommitResponse, GrpcStatus> {
        self.call(COMMIT, request.clone())
    }

    /// Any unary method, by its path.
    pub fn call<Req, Resp>(&self, method: GrpcMethod, request: Req) -> Result<Resp, GrpcStatus>
    where
        Req: Message + Send + 'static,
        Resp: Message + Default + Send + 'static,
    {
        self.runtime.block_on(async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready()
                .await
                .map_err(|e| GrpcStatus::unavailable(format!("not connected: {e}")))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(method.path),
                codec,
            )
            .await
            .map(tonic::Response::into_inner)
        })
    }
}
