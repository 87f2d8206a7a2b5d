//! The gateways whose counters are sampled (`--envoy-admin`), checked once
//! at start: each Envoy admin endpoint listed once, since one listed twice
//! would have its usage counted twice.

/// A gateway listed twice (the same URL up to a trailing `/` and the case
/// of its scheme and host).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--envoy-admin: {second:?} is {first:?} again; each gateway is listed once, or its usage would be counted twice")]
pub struct DuplicateGateway {
    pub first: String,
    pub second: String,
}

/// Envoy admin base URLs, each one gateway, without a trailing `/` and
/// with its scheme and host in lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gateways(Vec<String>);

impl Gateways {
    pub fn new(urls: Vec<String>) -> Result<Self, DuplicateGateway> {
        let mut seen: Vec<(String, &String)> = Vec::new();
        for url in &urls {
            let key = identity(url);
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                return Err(DuplicateGateway {
                    first: (*first).clone(),
                    second: url.clone(),
                });
            }
            seen.push((key, url));
        }
        // Each as its identity: the sampler stores a gateway's last reading
        // under it, so replicas that spell one gateway's URL differently
        // (`http://GW:15000/`, `http://gw:15000`) resume from one reading,
        // rather than each from its own and the usage between counted twice.
        Ok(Self(urls.iter().map(|u| identity(u)).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// What names one endpoint: scheme and host are case-insensitive, a
/// trailing `/` is no different path.
fn identity(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let authority_end = url
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| url[start..].find('/').map(|end| start + end))
        .unwrap_or(url.len());
    format!(
        "{}{}",
        url[..authority_end].to_ascii_lowercase(),
        &url[authority_end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_gateway_listed_twice_is_refused_naming_both() {
        let cases = [
            ["http://gw-1:15000", "http://gw-1:15000"],
            ["http://gw-1:15000", "http://gw-1:15000/"],
            ["http://GW-1:15000/", "HTTP://gw-1:15000"],
        ];
        for [a, b] in cases {
            let err = Gateways::new(urls(&["http://other:15000", a, b])).unwrap_err();
            assert_eq!((err.first.as_str(), err.second.as_str()), (a, b));
            assert!(err.to_string().contains("counted twice"), "{err}");
        }
    }

    #[test]
    fn distinct_gateways_are_kept_in_order_without_trailing_slashes() {
        let g = Gateways::new(urls(&[
            "http://gw-1:15000/",
            "http://gw-2:15000",
            "http://gw-1:15001",
            // Paths stay case-sensitive: a prefix another proxy routes on.
            "http://proxy/GW",
            "http://Proxy/gw",
        ]))
        .unwrap();
        assert_eq!(
            g.iter().collect::<Vec<_>>(),
            [
                "http://gw-1:15000",
                "http://gw-2:15000",
                "http://gw-1:15001",
                "http://proxy/GW",
                "http://proxy/gw"
            ]
        );
        assert!(Gateways::new(Vec::new()).unwrap().is_empty());
    }
}
