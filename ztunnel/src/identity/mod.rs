//! SPIFFE identities, the local CA that signs workload certificates, and the cache that keeps
//! them fresh.

mod ca;
mod manager;

pub use ca::{CaError, LocalCa, WorkloadCert};
pub use manager::CertManager;

use std::fmt;
use std::str::FromStr;

/// A workload's SPIFFE identity: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a SPIFFE identity of the Kubernetes form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a SPIFFE identity of the form spiffe://<trust domain>/ns/<ns>/sa/<sa>")]
pub struct IdentityParseError {
    input: String,
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || IdentityParseError {
            input: s.to_owned(),
        };
        let rest = s.strip_prefix("spiffe://").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            // The trust domain and service account may be empty: Istio's ztunnel gives a
            // workload of a local file without them the identity `spiffe:///ns/<ns>/sa/`.
            [td, "ns", ns, "sa", sa] if !ns.is_empty() => Ok(Identity::new(td, ns, sa)),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_kubernetes_form() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "web"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn parses_the_identity_istio_gives_a_local_workload_without_trust_domain() {
        let id: Identity = "spiffe:///ns/default/sa/".parse().unwrap();
        assert_eq!(id, Identity::new("", "default", ""));
        assert_eq!(id.to_string(), "spiffe:///ns/default/sa/");
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/b",
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/extra",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
