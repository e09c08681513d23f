//! L4 authorization with Istio's semantics and Istio's local-file shape.
//!
//! A policy's `rules` are OR-ed; each rule's clauses are AND-ed; each clause's matches are
//! OR-ed. Within one match every kind of field given must pass: one of the positive values
//! matches and none of the `not*` values does. DENY policies are checked first; then, if any
//! ALLOW policy applies to the workload, one of them must match.

use crate::identity::Identity;
use crate::state::Workload;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Scope {
    /// Every workload.
    Global,
    /// Workloads in the policy's namespace.
    Namespace,
    /// Workloads that list the policy (`ns/name`) in `authorizationPolicies`.
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Istio's `Authorization` as the local file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    #[serde(default)]
    pub rules: Vec<Vec<Vec<RbacMatch>>>,
    /// Accepted for compatibility; a dry-run policy is logged, never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

/// A string condition: `Exact: x`, `Prefix: x`, `Suffix: x` or `Presence: []`, written
/// either as a one-key map or, as serde_yaml writes enums, a tag (`!Exact x`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::Value;
        let (kind, value) = match Value::deserialize(d)? {
            Value::Tagged(t) => (
                t.tag.to_string().trim_start_matches('!').to_owned(),
                t.value,
            ),
            Value::Mapping(m) if m.len() == 1 => {
                let Some((k, v)) = m.into_iter().next() else {
                    return Err(D::Error::custom("empty string match"));
                };
                (k.as_str().unwrap_or_default().to_owned(), v)
            }
            other => {
                return Err(D::Error::custom(format!(
                    "expected a string match (Exact, Prefix, Suffix or Presence), found {other:?}"
                )));
            }
        };
        let text = || match &value {
            Value::String(s) => Ok(s.clone()),
            other => Err(D::Error::custom(format!(
                "{kind}: expected a string, found {other:?}"
            ))),
        };
        match kind.as_str() {
            "Exact" => Ok(StringMatch::Exact(text()?)),
            "Prefix" => Ok(StringMatch::Prefix(text()?)),
            "Suffix" => Ok(StringMatch::Suffix(text()?)),
            "Presence" => Ok(StringMatch::Presence),
            other => Err(D::Error::unknown_variant(
                other,
                &["Exact", "Prefix", "Suffix", "Presence"],
            )),
        }
    }
}

impl StringMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One match: every non-empty field must pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RbacMatch {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Identities without `spiffe://`, e.g. `Exact: cluster.local/ns/default/sa/web`.
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    /// The workload's (target) port, never 15008.
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// What policy sees of a connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The client's mTLS identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    /// The destination workload address (target port).
    pub dst: SocketAddr,
}

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("denied by policy {0}")]
    Explicit(String),
    #[error("allow policies exist and none matched")]
    NotAllowed,
}

fn check<T>(pos: &[T], neg: &[T], f: impl Fn(&T) -> bool) -> bool {
    (pos.is_empty() || pos.iter().any(&f)) && !neg.iter().any(f)
}

impl RbacMatch {
    fn is_empty(&self) -> bool {
        *self == RbacMatch::default()
    }

    fn matches(&self, c: &Connection) -> bool {
        if self.is_empty() {
            return false;
        }
        let ns = c.src_identity.as_ref().map(|i| i.namespace.as_str());
        let principal = c.src_identity.as_ref().map(|i| {
            format!(
                "{}/ns/{}/sa/{}",
                i.trust_domain, i.namespace, i.service_account
            )
        });
        let needs_identity = !self.namespaces.is_empty()
            || !self.principals.is_empty()
            || !self.service_accounts.is_empty();
        if needs_identity && c.src_identity.is_none() {
            return false;
        }
        check(&self.namespaces, &self.not_namespaces, |m| {
            ns.is_some_and(|ns| m.matches(ns))
        }) && check(&self.principals, &self.not_principals, |m| {
            principal.as_deref().is_some_and(|p| m.matches(p))
        }) && check(&self.service_accounts, &self.not_service_accounts, |m| {
            c.src_identity.as_ref().is_some_and(|i| {
                i.namespace == m.namespace && i.service_account == m.service_account
            })
        }) && check(&self.source_ips, &self.not_source_ips, |n| {
            n.contains(&c.src_ip)
        }) && check(&self.destination_ips, &self.not_destination_ips, |n| {
            n.contains(&c.dst.ip())
        }) && check(&self.destination_ports, &self.not_destination_ports, |p| {
            *p == c.dst.port()
        })
    }
}

impl Authorization {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn applies_to(&self, w: &Workload) -> bool {
        match self.scope {
            Scope::Global => true,
            Scope::Namespace => self.namespace == w.namespace,
            Scope::WorkloadSelector => w.authorization_policies.contains(&self.key()),
        }
    }

    pub fn matches(&self, c: &Connection) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter()
                .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(c)))
        })
    }
}

/// Decides a connection against the policies that apply to its destination.
pub fn evaluate<'a>(
    policies: impl Iterator<Item = &'a Authorization>,
    c: &Connection,
) -> Result<(), Denied> {
    let mut allows = Vec::new();
    for p in policies {
        match p.action {
            Action::Deny if p.matches(c) => {
                if p.dry_run {
                    tracing::info!(policy = %p.key(), "dry-run DENY policy would deny");
                } else {
                    return Err(Denied::Explicit(p.key()));
                }
            }
            Action::Deny => {}
            Action::Allow if !p.dry_run => allows.push(p),
            Action::Allow => {}
        }
    }
    if allows.is_empty() || allows.iter().any(|p| p.matches(c)) {
        Ok(())
    } else {
        Err(Denied::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<Authorization> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn conn(id: Option<&str>, port: u16) -> Connection {
        Connection {
            src_identity: id.map(|i| i.parse().unwrap()),
            src_ip: "10.0.0.1".parse().unwrap(),
            dst: SocketAddr::new("10.0.0.2".parse().unwrap(), port),
        }
    }

    const DENY_9090: &str = r#"
- name: deny-9090
  namespace: default
  scope: Namespace
  action: Deny
  rules:
  - - - destinationPorts: [9090]
"#;

    #[test]
    fn deny_on_a_port() {
        let p = policies(DENY_9090);
        let c = conn(Some("spiffe://cluster.local/ns/default/sa/a"), 9090);
        assert_eq!(
            evaluate(p.iter(), &c),
            Err(Denied::Explicit("default/deny-9090".into()))
        );
        assert_eq!(evaluate(p.iter(), &conn(None, 8080)), Ok(()));
    }

    #[test]
    fn allow_by_principal_and_namespace() {
        let p = policies(
            r#"
- name: allow-web
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - - - principals: [{Exact: cluster.local/ns/default/sa/web}]
    - - namespaces: [!Prefix def]
"#,
        );
        let web = conn(Some("spiffe://cluster.local/ns/default/sa/web"), 80);
        let other = conn(Some("spiffe://cluster.local/ns/default/sa/other"), 80);
        assert_eq!(evaluate(p.iter(), &web), Ok(()));
        assert_eq!(evaluate(p.iter(), &other), Err(Denied::NotAllowed));
        assert_eq!(evaluate(p.iter(), &conn(None, 80)), Err(Denied::NotAllowed));
    }

    #[test]
    fn not_fields_and_cidrs() {
        let p = policies(
            r#"
- name: a
  namespace: default
  scope: Global
  action: Allow
  rules:
  - - - sourceIps: ["10.0.0.0/8"]
        notDestinationPorts: [22]
"#,
        );
        assert_eq!(evaluate(p.iter(), &conn(None, 80)), Ok(()));
        assert_eq!(evaluate(p.iter(), &conn(None, 22)), Err(Denied::NotAllowed));
    }

    #[test]
    fn deny_wins_over_allow() {
        let mut p = policies(DENY_9090);
        p.extend(policies(
            r#"
- name: allow-all
  namespace: default
  scope: Namespace
  action: Allow
  rules:
  - []
"#,
        ));
        let c = conn(Some("spiffe://cluster.local/ns/default/sa/a"), 9090);
        assert!(matches!(evaluate(p.iter(), &c), Err(Denied::Explicit(_))));
        assert_eq!(evaluate(p.iter(), &conn(None, 80)), Ok(()));
    }

    #[test]
    fn unknown_match_field_is_named() {
        let err = serde_yaml::from_str::<Vec<Authorization>>(
            "- {name: a, namespace: b, scope: Global, action: Deny, rules: [[[{destinationPort: [1]}]]]}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("destinationPort"), "{err}");
    }
}
