//! The request-headers phase: the filter's own headers are stripped, and
//! the caller is identified — by a token `jwt_authn` verified, a key of the
//! configuration, or a managed key (in shared data, or asked of the control
//! plane while the request waits) — then routed by endpoint.
//!
//! Invariant: a request held for a key lookup goes on only through
//! [`Stream::on_key_lookup`], identified or refused; nothing else releases it.

use super::{Identity, Stream};
use crate::auth::claims;
use crate::auth::key_sync::{self, Lookup};
use crate::auth::keys::{self, presented_key, AuthFailure};
use crate::auth::managed_keys::{self, ManagedKey, PresentedKey};
use crate::config::synced_subscription;
use crate::error::GatewayError;
use crate::host::{Flow, StreamHost};
use crate::metrics::{Metric, Outcome};
use crate::openai::endpoint::{path_only, Endpoint};
use crate::subscription::Subscription;
use std::rc::Rc;

/// Headers the filter owns on the way upstream: credentials it consumes and
/// identity it asserts. Client-sent values are always dropped. `api-key`
/// (Azure OpenAI's credential header) is not ours, but a client's value
/// must never reach a provider: only the credential Envoy injects does.
/// `x-maas-path` is what the backend role once read a provider's path from:
/// no client may name the endpoint a provider runs under our credential.
const OWNED_REQUEST_HEADERS: [&str; 8] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-maas-subscription",
    "x-maas-key-id",
    "x-maas-user",
    "x-maas-model",
    "x-maas-path",
];

/// The result of checking a presented API key.
enum KeyCheck {
    Found(Identity),
    Refused(AuthFailure),
    /// A managed key id this gateway has never seen: ask the control plane.
    Lookup(String),
}

/// A request held at its headers while the control plane is asked about
/// its key.
#[derive(Debug)]
pub(super) struct PendingLookup {
    key: String,
    end_of_stream: bool,
    content_length: Option<u64>,
    /// The buffered body's size, once the client has sent all of it.
    pub(super) body_size: Option<usize>,
}

impl Stream {
    pub fn on_request_headers(&mut self, host: &dyn StreamHost, end_of_stream: bool) -> Flow {
        self.request.start_ms = host.now_ms();
        let mut authorization = None;
        let mut x_api_key = None;
        let mut content_length = None;
        let mut to_remove: Vec<&'static str> = Vec::new();
        // Envoy obeys `x-envoy-*` request headers (timeouts, retries) from
        // callers it deems internal (any pod, with `use_remote_address`):
        // a caller could cut its own request short after the prompt was
        // computed, or have it retried, and pay once. Only Envoy sets them.
        let mut envoy_controls: Vec<String> = Vec::new();
        for (name, value) in host.request_headers() {
            match name.as_str() {
                ":method" => self.request.method = value,
                ":path" => self.request.path = path_only(&value).to_string(),
                "x-request-id" => self.request.request_id = Some(value),
                "content-length" => content_length = value.trim().parse::<u64>().ok(),
                // The response must arrive unencoded for its usage to be read.
                "accept-encoding" if !to_remove.contains(&"accept-encoding") => {
                    to_remove.push("accept-encoding")
                }
                _ if name.starts_with("x-envoy-") => envoy_controls.push(name),
                _ => {
                    let Some(owned) = OWNED_REQUEST_HEADERS.iter().find(|h| **h == name) else {
                        continue;
                    };
                    if !to_remove.contains(owned) {
                        to_remove.push(owned);
                    }
                    match *owned {
                        "authorization" if authorization.is_none() => authorization = Some(value),
                        "x-api-key" if x_api_key.is_none() => x_api_key = Some(value),
                        _ => {}
                    }
                }
            }
        }
        // Removing only the headers present saves a host call per absent one.
        for name in to_remove {
            host.set_request_header(name, None);
        }
        for name in envoy_controls {
            host.set_request_header(&name, None);
        }

        match self.token_identity(host) {
            Some(Ok(identity)) => {
                return self.identified(host, identity, end_of_stream, content_length)
            }
            Some(Err(err)) => {
                host.add_metric(
                    Metric::AuthFailures {
                        reason: AuthFailure::NoSubscription,
                    },
                    1,
                );
                return self.refuse(host, Outcome::Rejected, &err);
            }
            None => {}
        }
        let Some(presented) = presented_key(authorization.as_deref(), x_api_key.as_deref()) else {
            return self.refuse_auth(host, AuthFailure::Missing);
        };
        match self.check_key(host, presented) {
            KeyCheck::Found(identity) => {
                self.identified(host, identity, end_of_stream, content_length)
            }
            KeyCheck::Refused(reason) => self.refuse_auth(host, reason),
            KeyCheck::Lookup(id) => {
                let budget = self
                    .config
                    .control_plane
                    .as_ref()
                    .map_or(0, |c| c.lookups_per_second);
                if !key_sync::take_lookup_budget(
                    host.counters(),
                    budget,
                    self.request.start_ms / 1000,
                ) {
                    host.add_metric(
                        Metric::KeyLookups {
                            result: "throttled",
                        },
                        1,
                    );
                    return self.refuse_auth(host, AuthFailure::Unknown);
                }
                if !host.dispatch_key_lookup(&id) {
                    host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                    return self.refuse(
                        host,
                        Outcome::Rejected,
                        &GatewayError::KeyLookupUnavailable,
                    );
                }
                self.pending = Some(PendingLookup {
                    key: presented.to_string(),
                    end_of_stream,
                    content_length,
                    body_size: None,
                });
                Flow::Pause
            }
        }
    }

    /// The identity of a token `jwt_authn` verified (`None`: no token, or
    /// OIDC not configured); its groups pick the subscription.
    fn token_identity(&self, host: &dyn StreamHost) -> Option<Result<Identity, GatewayError>> {
        let oidc = self.config.oidc.as_ref()?;
        let user = claims::as_string(&host.token_claim(&oidc.user_claim)?)?;
        // It becomes a header value and a counter name, and must not pass
        // for one of the control plane's own identities (whose keys count
        // under the same name): the control plane's rule for subjects.
        if keys::check_subject(&user).is_err() {
            return None;
        }
        let groups = host
            .token_claim(&oidc.groups_claim)
            .map(|b| claims::as_string_list(&b))
            .unwrap_or_default();
        Some(match self.policy.subscription_for_groups(&groups) {
            Some(sub) => Ok(Identity {
                key_id: None,
                key_limits: Rc::new(sub.holder_limits(None, &user)),
                user,
                subscription: Rc::clone(sub),
            }),
            None => Err(GatewayError::NoSubscription { subject: user }),
        })
    }

    fn refuse_auth(&mut self, host: &dyn StreamHost, reason: AuthFailure) -> Flow {
        host.add_metric(Metric::AuthFailures { reason }, 1);
        let err = match reason {
            AuthFailure::Missing => GatewayError::MissingKey,
            _ => GatewayError::InvalidKey,
        };
        self.refuse(host, Outcome::Rejected, &err)
    }

    /// Configuration keys first (one hash lookup), then managed keys in
    /// shared data.
    fn check_key(&self, host: &dyn StreamHost, presented: &str) -> KeyCheck {
        let now_secs = self.request.start_ms / 1000;
        match self.config.keys.authenticate(presented, now_secs) {
            Ok((_, key)) => {
                let subscription = self
                    .config
                    .subscriptions
                    .get(key.subscription)
                    .and_then(|s| self.policy.subscription(&s.name));
                return match subscription {
                    Some(sub) => KeyCheck::Found(Identity {
                        key_id: Some(Rc::from(key.id.as_str())),
                        user: key.owner.clone(),
                        // The subscription in force, as for a managed key:
                        // the control plane may have changed its key_limits
                        // (or counted them per owner) since the
                        // configuration was read.
                        key_limits: if key.own_limits {
                            Rc::clone(&key.limits)
                        } else {
                            Rc::new(sub.holder_limits(Some(&key.id), &key.owner))
                        },
                        subscription: Rc::clone(sub),
                    }),
                    None => KeyCheck::Refused(AuthFailure::Unknown),
                };
            }
            Err(AuthFailure::Unknown) => {}
            Err(reason) => return KeyCheck::Refused(reason),
        }
        let Some(managed) = managed_keys::parse(presented) else {
            return KeyCheck::Refused(AuthFailure::Unknown);
        };
        if self.config.control_plane.is_none() {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        let epoch = self.policy.state.epoch;
        match key_sync::lookup(host.counters(), managed.id, epoch, self.request.start_ms) {
            // A key of a subscription this gateway has not synced yet: the
            // lookup answer carries the subscription too.
            Ok(Lookup::Found(record))
                if self.policy.subscription(&record.subscription).is_none() =>
            {
                KeyCheck::Lookup(managed.id.to_string())
            }
            Ok(Lookup::Found(record)) => self.managed_identity(&record, &managed, None),
            Ok(Lookup::Absent) => KeyCheck::Refused(AuthFailure::Unknown),
            Ok(Lookup::Unknown) => KeyCheck::Lookup(managed.id.to_string()),
            Err(e) => {
                host.warn(&format!("managed key store unavailable: {e}"));
                KeyCheck::Refused(AuthFailure::Unknown)
            }
        }
    }

    /// `extra`: the key's subscription as a lookup answer carried it, for a
    /// subscription so new the sync has not brought it yet.
    fn managed_identity(
        &self,
        record: &ManagedKey,
        presented: &PresentedKey<'_>,
        extra: Option<Subscription>,
    ) -> KeyCheck {
        if !record.verify(presented) {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        if record.revoked {
            return KeyCheck::Refused(AuthFailure::Revoked);
        }
        if record
            .expires_at
            .is_some_and(|t| self.request.start_ms / 1000 >= t)
        {
            return KeyCheck::Refused(AuthFailure::Expired);
        }
        // The control plane validates owners when it mints; one stored
        // before it did must still never reach a header.
        if keys::check_user_name(&record.owner).is_err() {
            return KeyCheck::Refused(AuthFailure::Unknown);
        }
        let subscription = match self.policy.subscription(&record.subscription) {
            Some(s) => Rc::clone(s),
            None => match extra {
                Some(s) if *s.name == *record.subscription => Rc::new(s),
                _ => return KeyCheck::Refused(AuthFailure::Unknown),
            },
        };
        KeyCheck::Found(Identity {
            key_id: Some(Rc::from(record.id.as_str())),
            user: record.owner.clone(),
            key_limits: Rc::new(subscription.holder_limits(Some(&record.id), &record.owner)),
            subscription,
        })
    }

    /// The control plane's answer about a pending key (`None`: the call
    /// failed or timed out). Resumes, or refuses, the held request.
    pub fn on_key_lookup(&mut self, host: &dyn StreamHost, status: Option<u32>, body: &[u8]) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if self.replied {
            return;
        }
        let Some(presented) = managed_keys::parse(&pending.key) else {
            return;
        };
        let now_ms = host.now_ms();
        let negative_ms = self
            .config
            .control_plane
            .as_ref()
            .map_or(0, |c| c.negative_cache_ms);
        let check = match status {
            Some(200) => {
                let delta = managed_keys::parse_sync(body).ok();
                let found = delta
                    .as_ref()
                    .and_then(|d| d.keys.iter().find(|k| k.id == presented.id));
                match found {
                    Some(answer) => {
                        if let Err(e) =
                            key_sync::record_lookup(host.counters(), presented.id, Some(answer), 0)
                        {
                            host.warn(&format!("could not store a looked-up key: {e}"));
                        }
                        host.add_metric(Metric::KeyLookups { result: "found" }, 1);
                        // What is stored now, if newer than the answer (a
                        // revocation the sync wrote meanwhile), decides.
                        let stored = key_sync::lookup(host.counters(), presented.id, 0, now_ms);
                        let record = match &stored {
                            Ok(Lookup::Found(r)) if r.version > answer.version => r,
                            _ => answer,
                        };
                        let extra = delta.as_ref().and_then(|d| {
                            let v = d.subscriptions.iter().find(|v| {
                                v.get("name").and_then(|n| n.as_str())
                                    == Some(record.subscription.as_str())
                            })?;
                            synced_subscription(v, &self.config.models).ok()
                        });
                        self.managed_identity(record, &presented, extra)
                    }
                    None => {
                        host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                        return self.fail_lookup(host);
                    }
                }
            }
            Some(404) => {
                let until = now_ms.saturating_add(negative_ms);
                if let Err(e) = key_sync::record_lookup(host.counters(), presented.id, None, until)
                {
                    host.warn(&format!("could not remember an unknown key: {e}"));
                }
                host.add_metric(Metric::KeyLookups { result: "absent" }, 1);
                KeyCheck::Refused(AuthFailure::Unknown)
            }
            _ => {
                host.add_metric(Metric::KeyLookups { result: "failed" }, 1);
                return self.fail_lookup(host);
            }
        };
        let flow = match check {
            KeyCheck::Found(identity) => self.identified(
                host,
                identity,
                pending.end_of_stream,
                pending.content_length,
            ),
            KeyCheck::Refused(reason) => self.refuse_auth(host, reason),
            KeyCheck::Lookup(_) => self.refuse_auth(host, AuthFailure::Unknown),
        };
        let flow = match (flow, pending.body_size) {
            (Flow::Pause, Some(size)) if self.awaiting_body() => {
                self.on_request_body(host, size, true)
            }
            (flow, _) => flow,
        };
        if flow == Flow::Continue && !self.replied {
            host.resume_request();
        }
    }

    fn fail_lookup(&mut self, host: &dyn StreamHost) {
        self.refuse(host, Outcome::Rejected, &GatewayError::KeyLookupUnavailable);
    }

    /// The request's identity is known: assert it upstream, then route by
    /// endpoint.
    fn identified(
        &mut self,
        host: &dyn StreamHost,
        identity: Identity,
        end_of_stream: bool,
        content_length: Option<u64>,
    ) -> Flow {
        if let Some(id) = &identity.key_id {
            host.set_request_header("x-maas-key-id", Some(id));
            host.publish_identity("key_id", id);
        }
        host.set_request_header("x-maas-user", Some(&identity.user));
        host.set_request_header("x-maas-subscription", Some(&identity.subscription.name));
        host.publish_identity("user", &identity.user);
        host.publish_identity("subscription", &identity.subscription.name);
        self.identity = Some(identity);

        let endpoint = match Endpoint::classify(&self.request.method, &self.request.path) {
            Ok(e) => e,
            Err(err) => return self.refuse(host, Outcome::Rejected, &err),
        };
        let flow = match &endpoint {
            Endpoint::ListModels => self.list_models(host),
            Endpoint::RetrieveModel(id) => self.retrieve_model(host, id),
            _ if end_of_stream => self.refuse(host, Outcome::Rejected, &GatewayError::BodyRequired),
            _ => {
                if content_length.is_some_and(|n| n > self.config.max_body_bytes as u64) {
                    return self.refuse_too_large(host);
                }
                Flow::Pause
            }
        };
        self.endpoint = Some(endpoint);
        flow
    }
}
