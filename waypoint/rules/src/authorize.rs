//! Authorization with Istio's semantics: a matching DENY rule denies; else, if any ALLOW
//! policy applies, some ALLOW rule must match; else the request is allowed.
//!
//! A peer without a principal (plaintext) matches no `principals` or `namespaces` condition,
//! `*` included, and matches every `notPrincipals` and `notNamespaces` condition: Envoy's RBAC
//! evaluates `not` of a principal matcher that failed for lack of a certificate as true.

use crate::model::{
    AuthzAction, AuthzRule, L7Policy, ObjectRef, Operation, Peer, RequestView, Rules, Source,
};

/// Why a request was refused: the policy (`namespace/name`) and the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("denied by {policy}: {reason}")]
pub struct Denied {
    /// The DENY policy that matched, or the ALLOW policies that applied (comma-separated).
    pub policy: String,
    pub reason: DenyReason,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// Rule `n` (0-based) of a DENY policy matched.
    #[error("DENY rule {0} matched")]
    DenyRule(usize),
    /// ALLOW policies apply and none of their rules matched.
    #[error("no ALLOW policy matched")]
    NoAllowMatch,
}

impl Rules {
    /// Checks `req` from `peer` to `service` against the L7 policies.
    ///
    /// # Errors
    ///
    /// [`Denied`] naming the policy when the request is refused.
    pub fn authorize(
        &self,
        service: &ObjectRef,
        peer: &Peer<'_>,
        req: &RequestView<'_>,
    ) -> Result<(), Denied> {
        self.decide(service, |rule, _| rule.matches(peer, req))
    }

    /// Checks a tunnel that is not HTTP (carried as TCP) to `port` of `service`, as Istio
    /// does for TCP: a DENY rule's HTTP-only conditions (hosts, methods, paths) are left out,
    /// so it denies more, and an ALLOW rule that has any never matches. Otherwise a client
    /// could skip a path DENY by sending bytes the waypoint does not read as HTTP.
    ///
    /// # Errors
    ///
    /// [`Denied`] naming the policy when the connection is refused.
    pub fn authorize_tcp(
        &self,
        service: &ObjectRef,
        peer: &Peer<'_>,
        port: u16,
    ) -> Result<(), Denied> {
        self.decide(service, |rule, action| rule.matches_tcp(peer, port, action))
    }

    /// DENY first, then ALLOW if any applies, with `matches` deciding each rule.
    fn decide(
        &self,
        service: &ObjectRef,
        matches: impl Fn(&AuthzRule, AuthzAction) -> bool,
    ) -> Result<(), Denied> {
        let applies = |p: &&L7Policy| p.services.as_ref().is_none_or(|s| s.contains(service));
        for policy in self
            .authz
            .iter()
            .filter(applies)
            .filter(|p| p.action == AuthzAction::Deny)
        {
            if let Some(rule) = policy
                .rules
                .iter()
                .position(|r| matches(r, AuthzAction::Deny))
            {
                return Err(Denied {
                    policy: format!("{}/{}", policy.namespace, policy.name),
                    reason: DenyReason::DenyRule(rule),
                });
            }
        }
        let mut allows = self
            .authz
            .iter()
            .filter(applies)
            .filter(|p| p.action == AuthzAction::Allow)
            .peekable();
        if allows.peek().is_none() {
            return Ok(());
        }
        if allows
            .clone()
            .any(|p| p.rules.iter().any(|r| matches(r, AuthzAction::Allow)))
        {
            return Ok(());
        }
        // Denied: only now are the names worth building.
        Err(Denied {
            policy: allows
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect::<Vec<_>>()
                .join(", "),
            reason: DenyReason::NoAllowMatch,
        })
    }
}

impl AuthzRule {
    /// `from` (any source) and `to` (any operation) both hold; an empty list holds.
    pub fn matches(&self, peer: &Peer<'_>, req: &RequestView<'_>) -> bool {
        self.source_holds(peer) && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req)))
    }

    /// [`AuthzRule::matches`] for TCP (see [`Rules::authorize_tcp`]).
    fn matches_tcp(&self, peer: &Peer<'_>, port: u16, action: AuthzAction) -> bool {
        self.source_holds(peer)
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_tcp(port, action)))
    }

    fn source_holds(&self, peer: &Peer<'_>) -> bool {
        self.from.is_empty() || self.from.iter().any(|s| s.matches(peer))
    }
}

impl Source {
    /// Every non-empty field holds.
    pub fn matches(&self, peer: &Peer<'_>) -> bool {
        let positive = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|p| wildcard_match(p, v)))
        };
        let negative = |list: &[String], value: Option<&str>| {
            value.is_none_or(|v| !list.iter().any(|p| wildcard_match(p, v)))
        };
        positive(&self.principals, peer.principal)
            && negative(&self.not_principals, peer.principal)
            && positive(&self.namespaces, peer.namespace)
            && negative(&self.not_namespaces, peer.namespace)
            && (self.ip_blocks.is_empty() || self.ip_blocks.iter().any(|b| b.contains(&peer.ip)))
            && !self.not_ip_blocks.iter().any(|b| b.contains(&peer.ip))
    }
}

impl Operation {
    /// Every non-empty field holds.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        // Host patterns are lowercased at load; the request's host only when one is checked.
        let host = if self.hosts.is_empty() && self.not_hosts.is_empty() {
            String::new()
        } else {
            req.host.to_ascii_lowercase()
        };
        let bare = strip_port(&host);
        let host_match =
            |pattern: &String| wildcard_match(pattern, &host) || wildcard_match(pattern, bare);
        let method = req.method.as_str();
        (self.hosts.is_empty() || self.hosts.iter().any(host_match))
            && !self.not_hosts.iter().any(host_match)
            && self.port_holds(req.port)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && !self.not_methods.iter().any(|m| m == method)
            && (self.paths.is_empty() || self.paths.iter().any(|p| wildcard_match(p, req.path)))
            && !self.not_paths.iter().any(|p| wildcard_match(p, req.path))
    }

    /// The ports hold; the HTTP-only fields hold for a DENY and fail for an ALLOW.
    fn matches_tcp(&self, port: u16, action: AuthzAction) -> bool {
        let http_only = [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|f| !f.is_empty());
        (action == AuthzAction::Deny || !http_only) && self.port_holds(port)
    }

    fn port_holds(&self, port: u16) -> bool {
        (self.ports.is_empty() || self.ports.contains(&port)) && !self.not_ports.contains(&port)
    }
}

/// Istio's forms: `*` (anything), `prefix*`, `*suffix`, else exact.
pub(crate) fn wildcard_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// `host:port` to `host` (`[::1]:80` to `[::1]`).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_forms() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("/api/*", "/api/v1"));
        assert!(!wildcard_match("/api/*", "/apix"));
        assert!(wildcard_match("*/admin", "/x/admin"));
        assert!(!wildcard_match("*/admin", "/x/admin/y"));
        assert!(wildcard_match("/exact", "/exact"));
        assert!(!wildcard_match("/exact", "/exact/"));
    }

    #[test]
    fn strip_port_forms() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
