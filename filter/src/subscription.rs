//! A subscription and the limits it grants: the domain types the
//! configuration parser ([`crate::config`]) builds, and the keys
//! ([`crate::auth::keys`]), the local and global limits
//! ([`crate::limits`]) and the request path read.
//!
//! They live apart from the parser so that nothing that only reads a
//! subscription depends on how one is spelled in JSON: the parser imports
//! these types, these types import neither the parser nor the keys.
//!
//! Invariants (established by [`crate::config`], relied on everywhere):
//! - A [`ScopeLimits`]' `quantities` and `group.rates` have the same length
//!   and go index for index; its counter key names the window layout.
//! - [`Subscription::holder_limits`] and [`Subscription::holder_descriptor`]
//!   decide who a request counts against in one place, so the local counter
//!   and the limiter's descriptor cannot disagree.

use crate::limits::{LimitGroup, Rate};
use serde::{Deserialize, Serialize};
use std::rc::Rc;

/// Enough for a person's laptop, CI, a few services and a rotation (old
/// and new key live together); few enough that per-key limits times keys
/// stays near the per-key limits. With `key_limits_per: "owner"` the count
/// no longer multiplies limits and only bounds key sprawl.
pub const DEFAULT_MAX_KEYS_PER_OWNER: u64 = 10;

/// A cap above this is a typo, or a wish for no cap, which per-owner
/// limits express better.
pub const MAX_KEYS_PER_OWNER_LIMIT: u64 = 1000;

/// Whom a subscription's `key_limits` count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyLimitsPer {
    /// Each key has its own counters (`maas/key/<id>`; limiter descriptor
    /// `key: <id>`): an owner with N keys gets N times the limits, up to
    /// `max_keys_per_owner`.
    #[default]
    Key,
    /// All keys of one owner share the owner's counters, the ones the
    /// owner's OIDC token counts against too (`maas/user/<subscription>/<owner>`;
    /// descriptor `key: user:<owner>`): more keys buy no more.
    Owner,
}

/// What an unreachable or failing limiter means for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse with 503: a limit that cannot be checked is not granted.
    #[default]
    Deny,
    /// Let the request through uncounted by that limiter.
    Allow,
}

/// One configured global limit of a scope (kept by the rate limiter
/// service: see [`crate::limits::global_limits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalRate {
    pub quantity: Quantity,
    pub rate: Rate,
    /// `None`: the limiter's default.
    pub failure_mode: Option<FailureMode>,
}

/// What to do with a request whose `max_tokens` exceeds the subscription's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxTokensPolicy {
    /// At least 1 (validated).
    pub cap: u64,
    pub mode: CapMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapMode {
    /// Lower `max_tokens` to the cap and let the request through.
    #[default]
    Clamp,
    /// Refuse the request with 400.
    Reject,
}

/// What a limit counts. OpenAI reports it as the error `type` of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    Requests,
    Tokens,
}

impl Quantity {
    pub fn as_str(self) -> &'static str {
        match self {
            Quantity::Requests => "requests",
            Quantity::Tokens => "tokens",
        }
    }

    /// This quantity's share of a request that is `requests` requests and `tokens` tokens.
    pub fn of(self, requests: u64, tokens: u64) -> u64 {
        match self {
            Quantity::Requests => requests,
            Quantity::Tokens => tokens,
        }
    }
}

/// The configured limits of one scope (a subscription or a key), kept in one
/// shared-data counter with one window per rate.
#[derive(Debug, Clone)]
pub struct ScopeLimits {
    /// Rates in configuration order: requests, then tokens.
    pub group: LimitGroup,
    /// What each rate of `group` counts, index for index.
    pub quantities: Vec<Quantity>,
    /// For messages: "subscription free" or "key alice-1".
    pub scope: String,
    /// Limits kept by the limiter service instead of `group`.
    pub global: Vec<GlobalRate>,
}

impl ScopeLimits {
    /// "unlimited": nothing to reserve.
    pub fn unlimited(counter_key: &str, scope: &str) -> Self {
        ScopeLimits {
            group: LimitGroup {
                counter_key: counter_key.to_string(),
                rates: Vec::new(),
            },
            quantities: Vec::new(),
            scope: scope.to_string(),
            global: Vec::new(),
        }
    }

    /// No local limits (global ones may remain: see [`Self::global`]).
    pub fn is_empty(&self) -> bool {
        self.quantities.is_empty()
    }

    /// The global limits counting `quantity`.
    pub fn global_of(&self, quantity: Quantity) -> impl Iterator<Item = &GlobalRate> {
        self.global.iter().filter(move |g| g.quantity == quantity)
    }

    pub fn len(&self) -> usize {
        self.quantities.len()
    }

    /// The amount to reserve or charge per rate, given one request's quantities.
    pub fn amounts(&self, requests: u64, tokens: u64) -> Vec<u64> {
        let amount = |q: &Quantity| q.of(requests, tokens);
        self.quantities.iter().map(amount).collect()
    }
}

#[derive(Debug)]
pub struct Subscription {
    /// Shared with the metrics that carry it as a label.
    pub name: Rc<str>,
    /// Sorted, so `/v1/models` lists them in a stable order.
    pub models: Vec<String>,
    pub limits: ScopeLimits,
    /// The limits each key (or owner, see `key_limits_per`) of the
    /// subscription gets on its own, as a template:
    /// [`Subscription::holder_limits`] gives a request its counter.
    pub key_limits: Option<ScopeLimits>,
    pub key_limits_per: KeyLimitsPer,
    pub max_tokens: Option<MaxTokensPolicy>,
    /// OIDC groups that use this subscription (sorted).
    pub groups: Vec<String>,
}

/// Counter prefix of a `key_limits` template; replaced by the key's own.
pub(crate) const KEY_TEMPLATE_PREFIX: &str = "maas/key/-";

/// Whose `key_limits` a request counts against.
enum Holder<'a> {
    Key(&'a str),
    User(&'a str),
}

impl Subscription {
    pub fn allows(&self, model: &str) -> bool {
        self.models
            .binary_search_by(|m| m.as_str().cmp(model))
            .is_ok()
    }

    /// The `key_limits` a request counts against: those of key `key_id`,
    /// or, for a token holder (`key_id` `None`) and for any key under
    /// `key_limits_per: "owner"`, those of user `user` (the key's owner).
    pub fn holder_limits(&self, key_id: Option<&str>, user: &str) -> ScopeLimits {
        match self.holder(key_id, user) {
            Holder::Key(id) => self.key_limits_for(id),
            Holder::User(user) => self.user_limits_for(user),
        }
    }

    /// The limiter descriptor's `key` entry for the same holder as
    /// [`Subscription::holder_limits`]: the key id, or `user:<name>` (key
    /// ids never contain ':').
    pub fn holder_descriptor(&self, key_id: Option<&str>, user: &str) -> String {
        match self.holder(key_id, user) {
            Holder::Key(id) => id.to_string(),
            Holder::User(user) => format!("user:{user}"),
        }
    }

    /// The one place that decides who a request's own limits count, so the
    /// local counter and the limiter's descriptor cannot disagree.
    fn holder<'a>(&self, key_id: Option<&'a str>, user: &'a str) -> Holder<'a> {
        match (key_id, self.key_limits_per) {
            (Some(id), KeyLimitsPer::Key) => Holder::Key(id),
            _ => Holder::User(user),
        }
    }

    /// The per-key limits of key `id` under this subscription.
    pub fn key_limits_for(&self, id: &str) -> ScopeLimits {
        self.own_limits(&format!("maas/key/{id}"), &format!("key {id}"))
    }

    /// The same per-key limits for a token-authenticated user: each user
    /// counts like one key.
    pub fn user_limits_for(&self, user: &str) -> ScopeLimits {
        // Per subscription: a user of two subscriptions gets each one's
        // per-key budget, as a key would.
        self.own_limits(
            &format!("maas/user/{}/{user}", self.name),
            &format!("user {user}"),
        )
    }

    fn own_limits(&self, prefix: &str, scope: &str) -> ScopeLimits {
        match &self.key_limits {
            None => ScopeLimits::unlimited(prefix, scope),
            Some(t) => {
                let layout = t
                    .group
                    .counter_key
                    .strip_prefix(KEY_TEMPLATE_PREFIX)
                    .unwrap_or_default();
                let mut limits = t.clone();
                limits.group.counter_key = format!("{prefix}{layout}");
                limits.scope = scope.to_string();
                limits
            }
        }
    }
}
