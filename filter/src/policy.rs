//! The subscriptions in force: the configuration's, overridden and extended
//! by those the control plane synced (see [`crate::auth::key_sync`]). Each VM keeps
//! one [`Policy`] and rebuilds it when the sync state's version moves; a
//! request holds the one it started with, so its admission and its
//! settlement see the same limits.

use crate::auth::key_sync::{self, SyncState};
use crate::config::{synced_subscription, Config};
use crate::limits::{self, CounterStore};
use crate::subscription::{ScopeLimits, Subscription};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Debug, Default)]
pub struct Policy {
    /// The sync state this policy reflects (default: configuration only).
    pub state: SyncState,
    by_name: BTreeMap<Rc<str>, Rc<Subscription>>,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            state: SyncState::default(),
            by_name: config
                .subscriptions
                .iter()
                .map(|s| (Rc::clone(&s.name), Rc::clone(s)))
                .collect(),
        }
    }

    /// The configuration's subscriptions with `synced` (name → the control
    /// plane's JSON) over them. One that does not validate is left out and
    /// reported through `warn`; the others still apply.
    pub fn with_synced(
        config: &Config,
        state: SyncState,
        synced: &Map<String, Value>,
        warn: &mut dyn FnMut(String),
    ) -> Policy {
        let mut policy = Policy::from_config(config);
        policy.state = state;
        for value in synced.values() {
            match synced_subscription(value, &config.models) {
                Ok(sub) => {
                    policy.by_name.insert(Rc::clone(&sub.name), Rc::new(sub));
                }
                Err(e) => warn(format!("synced subscription ignored: {e}")),
            }
        }
        policy
    }

    /// The policy to use from now: `None` while the sync state in `store`
    /// is still the one this policy reflects (one small read), else the
    /// policy rebuilt from the synced subscriptions there, with the
    /// counters of their limits created.
    pub fn refreshed(
        &self,
        config: &Config,
        store: &dyn CounterStore,
        warn: &mut dyn FnMut(String),
    ) -> Option<Policy> {
        config.control_plane.as_ref()?;
        let state = key_sync::read_state(store).ok()?;
        if (state.version, state.epoch) == (self.state.version, self.state.epoch) {
            return None;
        }
        let synced = key_sync::read_subscriptions(store).unwrap_or_default();
        let policy = Policy::with_synced(config, state, &synced, warn);
        for scope in policy.subscription_limits() {
            let _ = limits::ensure_counter(store, &scope.group);
        }
        Some(policy)
    }

    pub fn subscription(&self, name: &str) -> Option<&Rc<Subscription>> {
        self.by_name.get(name)
    }

    /// The subscription a token holder with `groups` uses: the first by
    /// name whose groups include one of them.
    pub fn subscription_for_groups(&self, groups: &[String]) -> Option<&Rc<Subscription>> {
        self.by_name
            .values()
            .find(|s| groups.iter().any(|g| s.groups.binary_search(g).is_ok()))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every subscription scope with limits, for creating counters early.
    pub fn subscription_limits(&self) -> impl Iterator<Item = &ScopeLimits> {
        self.by_name
            .values()
            .map(|s| &s.limits)
            .filter(|l| !l.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::from_json(
            json!({
                "models": ["m1", "m2"],
                "subscriptions": {
                    "static": {"models": ["m1"], "limits": "unlimited"},
                    "shadowed": {"models": ["m1"], "limits": "unlimited"}
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn synced_subscriptions_extend_and_override_and_bad_ones_are_reported() {
        let c = config();
        let synced: Map<String, Value> = serde_json::from_value(json!({
            "shadowed": {"name": "shadowed", "models": ["m2", "elsewhere"],
                         "limits": {"tokens": ["100/min"]},
                         "key_limits": {"requests": ["2/min"]}},
            "new": {"name": "new", "models": ["m1"], "limits": "unlimited", "groups": ["ml", "ops"]},
            "broken": {"name": "broken", "models": ["m1"], "limits": {"tokens": ["lots"]}}
        }))
        .unwrap();
        let mut warnings = Vec::new();
        let state = SyncState {
            version: 4,
            epoch: 1,
            resync_epoch: 0,
            last_ok_ms: 9,
            ..SyncState::default()
        };
        let p = Policy::with_synced(&c, state, &synced, &mut |w| warnings.push(w));
        assert_eq!(p.state, state);
        assert_eq!(p.len(), 3, "static, shadowed, new");
        let shadowed = p.subscription("shadowed").unwrap();
        assert_eq!(
            shadowed.models,
            ["m2"],
            "the synced spec wins; models this gateway does not route are left out"
        );
        assert_eq!(p.subscription_limits().count(), 1);
        let key = shadowed.key_limits_for("abc");
        assert_eq!(key.group.counter_key, "maas/key/abc/r60");
        assert_eq!(key.scope, "key abc");
        assert!(p.subscription("new").is_some());
        assert_eq!(
            p.subscription_for_groups(&["x".into(), "ml".into()])
                .map(|s| &*s.name),
            Some("new")
        );
        assert!(p.subscription_for_groups(&["x".into()]).is_none());
        assert!(p.subscription("broken").is_none());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("subscriptions.broken.limits.tokens[0]"));
    }
}
