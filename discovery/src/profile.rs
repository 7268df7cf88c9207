//! A service's profile (Linkerd's `DestinationProfile`): its routes, each
//! with a timeout and whether its requests may be retried, the retry
//! budget, and traffic split across other services. Published beside the
//! services in the snapshot; workers match a request against it.

use std::sync::Arc;
use std::time::Duration;

use crate::Authority;

/// What a request must look like for a route to apply.
#[derive(Clone, Debug)]
pub enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    /// The path matches the whole regex (anchored).
    Path(regex::Regex),
    /// The method, uppercase.
    Method(String),
}

impl RequestMatch {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        match self {
            Self::All(ms) => ms.iter().all(|m| m.matches(method, path)),
            Self::Any(ms) => ms.iter().any(|m| m.matches(method, path)),
            Self::Not(m) => !m.matches(method, path),
            Self::Path(re) => re.is_match(path),
            Self::Method(m) => m.eq_ignore_ascii_case(method),
        }
    }
}

/// One route of a profile.
#[derive(Clone, Debug)]
pub struct ProfileRoute {
    pub condition: RequestMatch,
    /// The `rt_route` metric label (the route's `route` metric label).
    pub name: Option<Arc<str>>,
    /// A failed request (5xx) may go again to another endpoint.
    pub retryable: bool,
    /// The request's budget, head to response head: past it, 504.
    pub timeout: Option<Duration>,
}

/// The retry budget: retries may add `ratio` of the requests, plus
/// `min_per_second`, counted over `ttl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetSpec {
    pub ratio: f32,
    pub min_per_second: u32,
    pub ttl: Duration,
}

/// A service's profile.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// The first route that matches a request applies.
    pub routes: Vec<ProfileRoute>,
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Traffic split: each request goes to one of these services, drawn
    /// by weight (empty: the service itself).
    pub dst_overrides: Vec<(Authority, u32)>,
    /// The service's port is opaque: no protocol detection.
    pub opaque: bool,
}

impl Profile {
    /// The route a request takes, if any matches.
    pub fn route(&self, method: &str, path: &str) -> Option<&ProfileRoute> {
        self.routes
            .iter()
            .find(|r| r.condition.matches(method, path))
    }

    /// One of the overrides, drawn by weight with `r` in `[0, 1)`; `None`
    /// without overrides (or when every weight is 0).
    pub fn split(&self, r: f64) -> Option<&Authority> {
        let total: u64 = self.dst_overrides.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut at = (r.clamp(0.0, 1.0) * total as f64) as u64;
        for (name, w) in &self.dst_overrides {
            let w = u64::from(*w);
            if at < w {
                return Some(name);
            }
            at -= w;
        }
        self.dst_overrides.last().map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_in_order_and_split_follows_weights() {
        let re = |s: &str| regex::Regex::new(&format!("^(?:{s})$")).unwrap();
        let p = Profile {
            routes: vec![
                ProfileRoute {
                    condition: RequestMatch::All(vec![
                        RequestMatch::Method("GET".into()),
                        RequestMatch::Path(re("/slow/.*")),
                    ]),
                    name: Some("slow".into()),
                    retryable: false,
                    timeout: Some(Duration::from_millis(100)),
                },
                ProfileRoute {
                    condition: RequestMatch::Not(Box::new(RequestMatch::Path(re("/admin")))),
                    name: Some("rest".into()),
                    retryable: true,
                    timeout: None,
                },
            ],
            dst_overrides: vec![
                (Authority::parse("a.test:80").unwrap(), 1),
                (Authority::parse("b.test:80").unwrap(), 3),
            ],
            ..Profile::default()
        };
        let name = |m, path| p.route(m, path).and_then(|r| r.name.as_deref());
        assert_eq!(name("GET", "/slow/x"), Some("slow"));
        assert_eq!(name("POST", "/slow/x"), Some("rest"));
        assert_eq!(name("GET", "/admin"), None);
        assert_eq!(name("get", "/slowx"), Some("rest"));
        let n = 4000;
        let b = (0..n)
            .filter(|i| p.split(*i as f64 / n as f64).unwrap().as_str() == "b.test:80")
            .count();
        assert_eq!(b, 3000);
        assert!(Profile::default().split(0.5).is_none());
    }
}
