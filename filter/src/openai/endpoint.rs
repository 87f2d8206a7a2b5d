//! Which OpenAI endpoint a request addresses. The gateway is closed by
//! default: a path it does not know is refused, so no route can reach a model
//! server without being authenticated, limited and accounted.

use crate::error::GatewayError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    /// OpenAI's Responses API, stateless: the gateway bounds a request by
    /// its body, so what names stored state is refused
    /// ([`crate::openai::request`]).
    Responses,
    ListModels,
    RetrieveModel(String),
}

/// `path` without its query string (or fragment): what endpoints are
/// classified by, audit records show, and providers are sent.
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

impl Endpoint {
    /// Classifies `method` + `path` (query string allowed; Envoy has already
    /// normalised dot segments and merged slashes).
    pub fn classify(method: &str, path: &str) -> Result<Endpoint, GatewayError> {
        let path = path_only(path);
        let (endpoint, allow) = match path {
            "/v1/chat/completions" => (Endpoint::ChatCompletions, "POST"),
            "/v1/completions" => (Endpoint::Completions, "POST"),
            "/v1/responses" => (Endpoint::Responses, "POST"),
            "/v1/models" => (Endpoint::ListModels, "GET"),
            // Everything after the prefix is the id: model ids may hold `/`
            // (`meta-llama/Llama-3.1-8B`), and SDKs send it as it is. (An
            // escaped `%2F` never gets here: Envoy refuses escaped slashes.)
            _ => match path.strip_prefix("/v1/models/") {
                Some(id) if !id.is_empty() => (Endpoint::RetrieveModel(id.to_string()), "GET"),
                _ => {
                    return Err(GatewayError::UnknownEndpoint {
                        method: method.to_string(),
                        path: path.to_string(),
                    })
                }
            },
        };
        let allowed = method == allow || (allow == "GET" && method == "HEAD");
        if allowed {
            Ok(endpoint)
        } else {
            Err(GatewayError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_string(),
                allow,
            })
        }
    }

    pub fn is_completion(&self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Responses
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_known_endpoints() {
        let table = [
            ("POST", "/v1/chat/completions", Endpoint::ChatCompletions),
            ("POST", "/v1/completions?x=1", Endpoint::Completions),
            ("POST", "/v1/responses", Endpoint::Responses),
            ("GET", "/v1/models", Endpoint::ListModels),
            ("HEAD", "/v1/models", Endpoint::ListModels),
            (
                "GET",
                "/v1/models/m-1",
                Endpoint::RetrieveModel("m-1".into()),
            ),
            // Model ids may hold `/`, as SDKs send them.
            (
                "GET",
                "/v1/models/meta-llama/Llama-3.1-8B?x=1",
                Endpoint::RetrieveModel("meta-llama/Llama-3.1-8B".into()),
            ),
            (
                "GET",
                "/v1/models/a/b",
                Endpoint::RetrieveModel("a/b".into()),
            ),
        ];
        for (method, path, want) in table {
            assert_eq!(
                Endpoint::classify(method, path).unwrap(),
                want,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn refuses_everything_else() {
        for (method, path, status) in [
            ("GET", "/v1/chat/completions", 405),
            ("POST", "/v1/models", 405),
            ("POST", "/v1/embeddings", 404),
            // A stored response is not the gateway's to give out.
            ("GET", "/v1/responses/resp_1", 404),
            ("GET", "/v1/responses", 405),
            ("GET", "/", 404),
            ("POST", "/v1/chat/completions/", 404),
            ("GET", "/v1/models/", 404),
            ("POST", "/v1/models/a/b", 405),
            ("POST", "/V1/chat/completions", 404),
        ] {
            let err = Endpoint::classify(method, path).unwrap_err();
            assert_eq!(err.status(), status, "{method} {path}");
        }
    }
}
