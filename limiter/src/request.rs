//! What every method makes of a request before asking the engine: the
//! domain is Limitador's namespace, the descriptors become the CEL list
//! `descriptors` (one map of entries per descriptor, in order), and an
//! addend of 0 counts as 1 (proto3 cannot tell 0 from unset, and both Envoy
//! and Limitador read unset as 1).

use std::collections::HashMap;

use limitador::limit::{Context, Namespace};
use maas_ratelimit_proto::RateLimitDescriptor;

use crate::limits_file::DESCRIPTORS;

/// The request's domain and descriptors, owned, so a spawned task can build
/// its evaluation context from them.
#[derive(Debug, Clone)]
pub struct Subject {
    pub namespace: Namespace,
    descriptors: Vec<HashMap<String, String>>,
}

impl Subject {
    /// `None` for an empty domain, which names no namespace (Limitador
    /// answers UNKNOWN to it).
    pub fn new(domain: String, descriptors: &[RateLimitDescriptor]) -> Option<Self> {
        if domain.is_empty() {
            return None;
        }
        let descriptors = descriptors
            .iter()
            .map(|descriptor| {
                descriptor
                    .entries
                    .iter()
                    // A repeated key keeps its first value, as
                    // `RateLimitDescriptor::get` reads it.
                    .rev()
                    .map(|entry| (entry.key.clone(), entry.value.clone()))
                    .collect()
            })
            .collect();
        Some(Self {
            namespace: domain.into(),
            descriptors,
        })
    }

    /// The CEL context the limits' conditions and variables are evaluated in.
    pub fn context(&self) -> Context<'static> {
        let mut context = Context::default();
        context.list_binding(DESCRIPTORS.to_string(), self.descriptors.clone());
        context
    }
}

/// `hits_addend` as counted: 0 (unset) is 1.
pub fn hits(addend: u32) -> u64 {
    u64::from(addend.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use limitador::limit::Predicate;

    #[test]
    fn zero_hits_count_as_one() {
        assert_eq!(hits(0), 1);
        assert_eq!(hits(1), 1);
        assert_eq!(hits(300), 300);
        assert_eq!(hits(u32::MAX), u64::from(u32::MAX));
    }

    #[test]
    fn an_empty_domain_is_no_subject() {
        assert!(Subject::new(String::new(), &[]).is_none());
    }

    #[test]
    fn descriptors_bind_in_order_first_value_wins() {
        let subject = Subject::new(
            "ns".into(),
            &[
                RateLimitDescriptor::new([("user", "alice"), ("user", "mallory")]),
                RateLimitDescriptor::new([("model", "m")]),
            ],
        )
        .unwrap();
        let context = subject.context();
        let holds = |source: &str| Predicate::parse(source).unwrap().test(&context).unwrap();
        assert!(holds("descriptors[0].user == 'alice'"));
        assert!(holds("descriptors[1].model == 'm'"));
        assert!(!holds("descriptors[0].model == 'm'"));
    }
}
