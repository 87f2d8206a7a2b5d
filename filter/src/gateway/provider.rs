//! External backends, seen from the gateway role: a request is refused
//! before anything is reserved when one of its model's backends could not
//! take it (Anthropic's Messages API cannot express everything OpenAI's
//! can), so that whichever backend answers, failover never changes what a
//! client may ask. Making the request each provider's own, and its answer
//! OpenAI's again, is the backend role's work, per attempt
//! ([`crate::backend`]): this role reads and writes OpenAI's API only.

use crate::config::Config;
use crate::error::GatewayError;
use crate::openai::endpoint::Endpoint;
use crate::providers::{anthropic, ProviderError, ProviderKind, AZURE_NO_RESPONSES};

/// Step 3's check: every backend of `model` can take `body` at `endpoint`,
/// as many completions as it asks for (`outputs`), and the `service_tier`
/// it names.
pub(super) fn check_backends(
    config: &Config,
    model: &str,
    endpoint: Option<&Endpoint>,
    body: &[u8],
    outputs: u64,
    service_tier: Option<&str>,
) -> Result<(), GatewayError> {
    // Every backend that may answer must take them: a fallback too.
    if let Some(max) = config.backends(model).filter_map(|b| b.max_outputs).min() {
        if outputs > max {
            return Err(GatewayError::Provider(ProviderError::TooManyOutputs {
                asked: outputs,
                max,
            }));
        }
    }
    // A tier bills the operator's account at its own rates, which the
    // tokens the gateway counts do not show.
    if let Some(tier) = service_tier {
        if config.backends(model).any(|b| !b.takes_service_tier(tier)) {
            return Err(GatewayError::Provider(ProviderError::ServiceTier(
                tier.chars().take(64).collect(),
            )));
        }
    }
    if endpoint == Some(&Endpoint::Responses)
        && config
            .backends(model)
            .any(|b| b.kind == ProviderKind::AzureOpenAi)
    {
        return Err(GatewayError::Provider(AZURE_NO_RESPONSES));
    }
    // Only Anthropic's API takes less than OpenAI's, and one translation
    // judges every Anthropic backend of the model alike.
    let Some(backend) = config
        .backends(model)
        .find(|b| b.kind == ProviderKind::Anthropic)
    else {
        return Ok(());
    };
    if endpoint != Some(&Endpoint::ChatCompletions) {
        return Err(GatewayError::Provider(anthropic::CHAT_ONLY));
    }
    anthropic::to_messages_request(body, &backend.upstream_model)
        .map(|_| ())
        .map_err(GatewayError::Provider)
}
