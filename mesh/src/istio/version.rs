//! Which Istio releases the rendering works on, and why older ones are
//! refused.

use super::RenderError;

/// The oldest Istio the rendering works on. The filter needs Envoy's
/// `allow_on_headers_stop_iteration` (Envoy >= 1.35) to read a completion's
/// body before its headers go upstream; istiod <= 1.27 does not know the
/// field and drops it from an EnvoyFilter patch with only a webhook
/// warning, and completions then stall until they time out.
pub const ISTIO_FLOOR: IstioVersion = IstioVersion {
    major: 1,
    minor: 28,
};

/// An Istio release, `major.minor` (a patch level is accepted and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IstioVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::str::FromStr for IstioVersion {
    type Err = RenderError;

    fn from_str(text: &str) -> Result<Self, RenderError> {
        let bad = || RenderError::IstioVersion(text.to_string());
        let mut parts = text.trim().trim_start_matches('v').split('.');
        let mut number = || -> Result<u32, RenderError> {
            parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)
        };
        Ok(IstioVersion {
            major: number()?,
            minor: number()?,
        })
    }
}

impl std::fmt::Display for IstioVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Refuses an Istio older than [`ISTIO_FLOOR`], saying why.
pub fn check_istio_version(version: IstioVersion) -> Result<(), RenderError> {
    if version < ISTIO_FLOOR {
        return Err(RenderError::IstioTooOld(version));
    }
    Ok(())
}
