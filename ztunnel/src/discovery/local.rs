//! Istio's local configuration file, unchanged: `workloads`, `services`, `policies`, with
//! camelCase fields. Our additions are optional (a workload's `netns`), so that a file without
//! them means the same to Istio's ztunnel and to us.
//!
//! Errors name the file, the line and column, and the field; a file that fails to load never
//! replaces the state already serving.

use crate::rbac::Authorization;
use crate::state::{
    Endpoint, GatewayAddress, HealthStatus, NetworkAddress, Protocol, Service, State, StateHandle,
    Workload,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A local file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not the expected shape; serde_yaml's message carries the line, column and field.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    /// Well formed but inconsistent.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<LocalWorkload>,
    #[serde(default)]
    policies: Vec<Authorization>,
    #[serde(default)]
    services: Vec<LocalService>,
}

/// Istio's `LocalWorkload`: a `Workload` plus `services: {"ns/host": {port: targetPort}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalWorkload {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    trust_domain: String,
    workload_ips: Vec<IpAddr>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    node: String,
    #[serde(default)]
    network: String,
    #[serde(default)]
    canonical_name: String,
    #[serde(default)]
    canonical_revision: String,
    #[serde(default)]
    workload_name: String,
    #[serde(default)]
    workload_type: String,
    #[serde(default)]
    cluster_id: String,
    #[serde(default)]
    status: HealthStatus,
    #[serde(default)]
    authorization_policies: Vec<String>,
    #[serde(default)]
    waypoint: Option<GatewayAddress>,
    #[serde(default)]
    services: HashMap<String, BTreeMap<u16, u16>>,
    /// Ours: path of the pod's network namespace (eBPF enrollment).
    #[serde(default)]
    netns: Option<PathBuf>,
    // Istio fields accepted so that its files load unchanged; not used by this agent yet.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    network_gateway: Option<GatewayAddress>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    network_mode: Option<serde_yaml::Value>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    hostname: String,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    native_tunnel: bool,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    application_tunnel: Option<serde_yaml::Value>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    locality: Option<serde_yaml::Value>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    capacity: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
    vips: Vec<NetworkAddress>,
    ports: BTreeMap<u16, u16>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    waypoint: Option<GatewayAddress>,
    #[serde(default)]
    endpoints: HashMap<String, LocalEndpoint>,
    // Accepted for compatibility; not used by this agent yet.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    canonical: bool,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    load_balancer: Option<serde_yaml::Value>,
    #[serde(default)]
    #[expect(dead_code, reason = "accepted so that Istio's files load unchanged")]
    ip_families: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalEndpoint {
    workload_uid: String,
    port: BTreeMap<u16, u16>,
    #[serde(default)]
    status: HealthStatus,
}

/// Defaults applied where the file leaves a field empty.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub trust_domain: String,
    pub cluster_id: String,
}

/// Parses the text of a local file (named `path` in errors) into a state.
pub fn parse(path: &Path, text: &str, defaults: &Defaults) -> Result<State, LocalConfigError> {
    let cfg: LocalConfig = if text.trim().is_empty() {
        LocalConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|source| LocalConfigError::Parse {
            path: path.to_owned(),
            source,
        })?
    };
    let invalid = |what: String| LocalConfigError::Invalid {
        path: path.to_owned(),
        what,
    };

    let mut workloads = Vec::new();
    let mut endpoints: HashMap<String, Vec<Endpoint>> = HashMap::new();
    let mut seen_ips = HashMap::new();
    for (i, w) in cfg.workloads.into_iter().enumerate() {
        let uid = if w.uid.is_empty() {
            format!("{}//v1/Pod/{}/{}", defaults.cluster_id, w.namespace, w.name)
        } else {
            w.uid
        };
        if workloads.iter().any(|x: &Workload| x.uid == uid) {
            return Err(invalid(format!(
                "workloads[{i}]: uid `{uid}` appears twice"
            )));
        }
        // `::ffff:a.b.c.d` is the IPv4 address, the form every lookup uses.
        let workload_ips: Vec<IpAddr> = w.workload_ips.iter().map(|ip| ip.to_canonical()).collect();
        for ip in &workload_ips {
            if let Some(other) = seen_ips.insert((w.network.clone(), *ip), uid.clone()) {
                return Err(invalid(format!(
                    "workloads[{i}] ({uid}): workloadIps {ip} already belongs to {other}"
                )));
            }
        }
        for (svc, ports) in w.services {
            endpoints.entry(svc).or_default().push(Endpoint {
                workload_uid: uid.clone(),
                ports,
            });
        }
        workloads.push(Workload {
            uid,
            name: w.name,
            namespace: w.namespace,
            service_account: or(w.service_account, "default"),
            trust_domain: or(w.trust_domain, &defaults.trust_domain),
            workload_ips,
            protocol: w.protocol,
            node: w.node,
            network: w.network,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            workload_type: or(w.workload_type, "pod"),
            cluster_id: or(w.cluster_id, &defaults.cluster_id),
            status: w.status,
            authorization_policies: w.authorization_policies,
            waypoint: w.waypoint,
            netns: w.netns,
        });
    }

    let mut services = Vec::new();
    let mut seen_vips = HashMap::new();
    for (i, s) in cfg.services.into_iter().enumerate() {
        let key = format!("{}/{}", s.namespace, s.hostname);
        // A second entry would silently replace the first: say so instead.
        if services.iter().any(|x: &Service| x.key() == key) {
            return Err(invalid(format!("services[{i}]: `{key}` appears twice")));
        }
        for vip in &s.vips {
            if let Some(other) = seen_vips.insert(vip.clone(), key.clone()) {
                return Err(invalid(format!(
                    "services[{i}] ({key}): vip {vip} already belongs to {other}"
                )));
            }
        }
        let mut eps = endpoints.remove(&key).unwrap_or_default();
        for (_, ep) in s.endpoints {
            if ep.status == HealthStatus::Healthy {
                eps.push(Endpoint {
                    workload_uid: ep.workload_uid,
                    ports: ep.port,
                });
            }
        }
        services.push(Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips: s.vips,
            ports: s.ports,
            subject_alt_names: s.subject_alt_names,
            waypoint: s.waypoint,
            endpoints: eps,
        });
    }
    for key in endpoints.keys() {
        tracing::warn!(file = %path.display(), service = %key, "a workload names a service that the file does not define");
    }
    for (i, p) in cfg.policies.iter().enumerate() {
        if cfg.policies[..i].iter().any(|x| x.key() == p.key()) {
            return Err(invalid(format!(
                "policies[{i}]: `{}` appears twice",
                p.key()
            )));
        }
    }
    Ok(State::new(workloads, services, cfg.policies))
}

fn or(v: String, default: &str) -> String {
    if v.is_empty() { default.to_owned() } else { v }
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path, defaults: &Defaults) -> Result<State, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, defaults)
}

/// Re-reads `path` whenever its content changes and replaces the state; a file that does not
/// load is reported and the previous state keeps serving.
pub async fn watch(path: PathBuf, defaults: Defaults, state: Arc<StateHandle>, every: Duration) {
    let mut last = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(every).await;
        let now = match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                if last.is_some() {
                    tracing::error!(file = %path.display(), error = %e, "local config unreadable; keeping the previous state");
                }
                None
            }
        };
        if now.is_none() || now == last {
            continue;
        }
        last = now;
        let text = match std::str::from_utf8(last.as_deref().unwrap_or_default()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "local config is not UTF-8; keeping the previous state");
                continue;
            }
        };
        match parse(&path, text, &defaults) {
            Ok(s) => {
                tracing::info!(file = %path.display(), "local config changed; state replaced");
                state.replace(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "local config rejected; keeping the previous state")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn defaults() -> Defaults {
        Defaults {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
        }
    }

    /// Istio's own example file (examples/localhost.yaml), unchanged.
    const ISTIO_EXAMPLE: &str = r#"
workloads:
- uid: cluster1//v1/Pod/default/local
  name: local
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.1"]
  protocol: HBONE
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
    "default/example2.com":
      80: 8080
- uid: cluster1//v1/Pod/default/local-tcp
  name: local-tcp
  namespace: default
  serviceAccount: default
  workloadIps: ["127.0.0.2"]
  protocol: TCP
  node: local
  network: ""
  services:
    "default/example.com":
      80: 8080
    "default/example2.com":
      80: 8080
policies:
  - action: Allow
    rules:
    - - - notDestinationPorts:
          - 9999
    name: deny-9999
    namespace: default
    scope: Namespace
services:
- name: local
  namespace: default
  hostname: example.com
  vips:
    - /127.10.0.1
  ports:
    80: 8080
  subjectAltNames:
   - spiffe://cluster.local/ns/default/sa/local
- name: remote
  namespace: default
  hostname: example2.com
  vips:
    - remote/127.10.0.2
  ports:
    80: 8080
"#;

    #[test]
    fn istio_example_loads_unchanged() {
        let s = parse(Path::new("x.yaml"), ISTIO_EXAMPLE, &defaults()).unwrap();
        assert_eq!(s.workloads().count(), 2);
        assert_eq!(s.policies().count(), 1);
        let w = s.workload_by_ip("", "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(w.protocol, Protocol::HBONE);
        assert_eq!(
            w.identity().to_string(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
        // The VIP resolves to an endpoint with the target port, round robin over both.
        let picker = Default::default();
        let dst: SocketAddr = "127.10.0.1:80".parse().unwrap();
        let a = s.resolve("", dst, &picker).unwrap();
        let b = s.resolve("", dst, &picker).unwrap();
        assert_eq!(a.addr.port(), 8080);
        assert_ne!(a.workload.uid, b.workload.uid);
        // A VIP in another network is not ours.
        assert!(
            s.resolve("", "127.10.0.2:80".parse().unwrap(), &picker)
                .is_none()
        );
    }

    #[test]
    fn ipv4_mapped_addresses_in_the_file_are_the_ipv4_ones() {
        let text = "workloads:\n- {name: w, namespace: n, workloadIps: [\"::ffff:10.0.0.1\"], services: {\"n/a.n.svc\": {80: 8080}}}\nservices:\n- {name: a, namespace: n, hostname: a.n.svc, vips: [\"/::ffff:10.96.0.1\"], ports: {80: 8080}}\n";
        let s = parse(Path::new("f.yaml"), text, &defaults()).unwrap();
        assert!(s.workload_by_ip("", "10.0.0.1".parse().unwrap()).is_some());
        let up = s
            .resolve("", "10.96.0.1:80".parse().unwrap(), &Default::default())
            .unwrap();
        assert_eq!(up.addr, "10.0.0.1:8080".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn inbound_metrics_name_the_service_the_client_named_else_the_one_on_the_port() {
        let text = "workloads:\n- uid: w\n  name: w\n  namespace: n\n  workloadIps: [\"10.0.0.1\"]\n  services: {\"n/a.n.svc\": {80: 8080}, \"n/b.n.svc\": {81: 8080, 90: 9090}}\nservices:\n- {name: a, namespace: n, hostname: a.n.svc, vips: [\"/10.96.0.1\"], ports: {80: 8080}}\n- {name: b, namespace: n, hostname: b.n.svc, vips: [\"/10.96.0.2\"], ports: {81: 8080, 90: 9090}}\n- {name: c, namespace: n, hostname: c.n.svc, vips: [\"/10.96.0.3\"], ports: {80: 8080}}\n";
        let s = parse(Path::new("f.yaml"), text, &defaults()).unwrap();
        let w = s.workload_by_uid("w").unwrap();
        let host = |port, named| {
            s.inbound_service(w, port, named)
                .map(|s| s.hostname.clone())
        };
        assert_eq!(host(8080, Some("b.n.svc")).as_deref(), Some("b.n.svc"));
        assert_eq!(host(8080, None).as_deref(), Some("a.n.svc"));
        assert_eq!(host(9090, None).as_deref(), Some("b.n.svc"));
        // A service that does not front the workload is not believed, whoever names it.
        assert_eq!(host(8080, Some("c.n.svc")).as_deref(), Some("a.n.svc"));
        assert_eq!(host(7070, None), None);
    }

    #[test]
    fn unknown_field_is_reported_with_file_and_line() {
        let text = "workloads:\n- name: a\n  namespace: default\n  workloadIps: [\"10.0.0.1\"]\n  protocl: HBONE\n";
        let err = parse(Path::new("/etc/mesh.yaml"), text, &defaults())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/mesh.yaml"), "{err}");
        assert!(err.contains("protocl"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn bad_ip_is_reported_with_line() {
        let text = "services:\n- name: a\n  namespace: b\n  hostname: c\n  vips: [\"/10.0.0.300\"]\n  ports: {80: 80}\n";
        let err = parse(Path::new("f.yaml"), text, &defaults())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10.0.0.300") && err.contains("line 5"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_ip_is_refused() {
        let text = "workloads:\n- {name: a, namespace: n, workloadIps: [\"10.0.0.1\"]}\n- {name: b, namespace: n, workloadIps: [\"10.0.0.1\"]}\n";
        let err = parse(Path::new("f.yaml"), text, &defaults())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workloads[1]") && err.contains("10.0.0.1"),
            "{err}"
        );
    }

    /// A second service or policy of the same name (or a VIP used twice) would silently
    /// replace the first, and a DENY could vanish: each is refused, naming the entry.
    #[test]
    fn a_service_vip_or_policy_given_twice_is_refused() {
        let svc = |host: &str, vip: &str| {
            format!(
                "- {{name: s, namespace: n, hostname: {host}, vips: [\"/{vip}\"], ports: {{80: 8080}}}}\n"
            )
        };
        let policy = "- {name: p, namespace: n, scope: Namespace, action: Deny, rules: []}\n";
        for (text, want) in [
            (
                format!(
                    "services:\n{}{}",
                    svc("a", "10.96.0.1"),
                    svc("a", "10.96.0.2")
                ),
                "services[1]: `n/a` appears twice",
            ),
            (
                format!(
                    "services:\n{}{}",
                    svc("a", "10.96.0.1"),
                    svc("b", "10.96.0.1")
                ),
                "services[1] (n/b): vip /10.96.0.1 already belongs to n/a",
            ),
            (
                format!("policies:\n{policy}{policy}"),
                "policies[1]: `n/p` appears twice",
            ),
        ] {
            let err = parse(Path::new("f.yaml"), &text, &defaults())
                .unwrap_err()
                .to_string();
            assert!(err.contains("f.yaml") && err.contains(want), "{err}");
        }
    }
}
