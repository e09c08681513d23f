//! What the agent knows about the mesh: workloads, services and policies, whatever the
//! source. Readers take a cheap snapshot ([`StateHandle::snapshot`]); a source replaces the
//! whole state at once and every subscriber hears of it (open connections re-check policy).

use crate::identity::Identity;
use crate::rbac::Authorization;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// An address within a network: `"<network>/<ip>"` in Istio's YAML (`"/10.0.0.1"` for the
/// default network).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

impl std::fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl std::str::FromStr for NetworkAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (network, ip) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("`{s}`: expected \"<network>/<ip>\", e.g. \"/10.0.0.1\""))?;
        let address = ip
            .parse::<IpAddr>()
            .map_err(|_| format!("`{s}`: `{ip}` is not an IP address"))?
            // `::ffff:a.b.c.d` is the IPv4 address, the form every lookup uses.
            .to_canonical();
        Ok(Self {
            network: network.to_owned(),
            address,
        })
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How a workload accepts inbound traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    /// Plain TCP: the workload is not in the mesh (or has no agent).
    #[default]
    TCP,
    /// HBONE on port 15008 of the workload's IP.
    HBONE,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// Where a waypoint or network gateway is reached: Istio's `GatewayAddress`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// `"<network>/<ip>"` or `"<namespace>/<hostname>"`.
    pub destination: String,
    pub hbone_mtls_port: u16,
}

/// A workload (pod) as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub node: String,
    pub network: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: String,
    pub cluster_id: String,
    pub status: HealthStatus,
    pub authorization_policies: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
    /// Ours: the path of the pod's network namespace, for eBPF enrollment.
    pub netns: Option<PathBuf>,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The name used in metrics and logs: the workload (deployment) name, else the pod name.
    pub fn display_name(&self) -> &str {
        if self.workload_name.is_empty() {
            &self.name
        } else {
            &self.workload_name
        }
    }
}

/// One endpoint of a service: a workload and its service-port to target-port map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub workload_uid: String,
    pub ports: BTreeMap<u16, u16>,
}

/// A service: virtual IPs and ports in front of a set of endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Service port to target port (0: the endpoint's own mapping decides).
    pub ports: BTreeMap<u16, u16>,
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `namespace/hostname`, the key workloads use in their `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// The whole known state at one moment.
#[derive(Debug, Default)]
pub struct State {
    workloads: BTreeMap<String, Arc<Workload>>,
    workload_by_ip: HashMap<NetworkAddress, String>,
    services: Vec<Arc<Service>>,
    service_by_vip: HashMap<NetworkAddress, usize>,
    service_by_host: HashMap<String, usize>,
    policies: BTreeMap<String, Arc<Authorization>>,
}

/// Where a connection to some address should go.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub workload: Arc<Workload>,
    /// The address to reach inside the workload (IP and target port).
    pub addr: SocketAddr,
    /// The service, when the destination was a service VIP.
    pub service: Option<Arc<Service>>,
}

impl State {
    pub fn new(
        workloads: Vec<Workload>,
        services: Vec<Service>,
        policies: Vec<Authorization>,
    ) -> Self {
        let mut s = State::default();
        for w in workloads {
            for ip in &w.workload_ips {
                s.workload_by_ip.insert(
                    NetworkAddress {
                        network: w.network.clone(),
                        address: *ip,
                    },
                    w.uid.clone(),
                );
            }
            s.workloads.insert(w.uid.clone(), Arc::new(w));
        }
        for svc in services {
            let i = s.services.len();
            for vip in &svc.vips {
                s.service_by_vip.insert(vip.clone(), i);
            }
            s.service_by_host.insert(svc.key(), i);
            s.services.push(Arc::new(svc));
        }
        for p in policies {
            s.policies.insert(p.key(), Arc::new(p));
        }
        s
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        let key = NetworkAddress {
            network: network.to_owned(),
            address: ip,
        };
        self.workloads.get(self.workload_by_ip.get(&key)?)
    }

    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        let key = NetworkAddress {
            network: network.to_owned(),
            address: ip,
        };
        self.services.get(*self.service_by_vip.get(&key)?)
    }

    /// The service `namespace/name`.
    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The service whose hostname is `host` (any namespace).
    pub fn service_by_hostname(&self, host: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.hostname == host)
    }

    /// The service an inbound connection to `w` on `port` was for, as Istio's ztunnel guesses
    /// it for its metrics: among the services that front `w`, the one the client named
    /// (`forwarded: host=`), else the first with `port` as a target port.
    pub fn inbound_service(
        &self,
        w: &Workload,
        port: u16,
        named: Option<&str>,
    ) -> Option<Arc<Service>> {
        let fronting = || {
            self.services.iter().filter_map(|s| {
                let ep = s.endpoints.iter().find(|e| e.workload_uid == w.uid)?;
                Some((s, ep))
            })
        };
        named
            .and_then(|host| fronting().find(|(s, _)| s.hostname == host))
            .or_else(|| {
                fronting().find(|(s, ep)| {
                    s.ports.iter().any(|(service_port, target)| {
                        *target == port || ep.ports.get(service_port) == Some(&port)
                    })
                })
            })
            .map(|(s, _)| s.clone())
    }

    /// The policies that apply to `workload`: global ones, its namespace's, and those that
    /// select it by name.
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Authorization> + 'a {
        self.policies
            .values()
            .filter(move |p| p.applies_to(workload))
            .map(|p| p.as_ref())
    }

    /// The healthy endpoints of `svc` for its port `port`: each workload with the address to
    /// reach it on (its IP of `like`'s family, the service port mapped to the target port).
    pub fn endpoints(
        &self,
        svc: &Service,
        port: u16,
        like: IpAddr,
    ) -> Vec<(Arc<Workload>, SocketAddr)> {
        svc.endpoints
            .iter()
            .filter_map(|ep| {
                let w = self.workloads.get(&ep.workload_uid)?;
                if w.status != HealthStatus::Healthy {
                    return None;
                }
                let target = match ep.ports.get(&port) {
                    Some(&p) if p != 0 => p,
                    _ => match svc.ports.get(&port) {
                        Some(&p) if p != 0 => p,
                        Some(_) => port,
                        None => return None,
                    },
                };
                let ip = pick_ip(w, like)?;
                Some((w.clone(), SocketAddr::new(ip, target)))
            })
            .collect()
    }

    /// Resolves a destination address: a service VIP (an endpoint is picked, the port mapped to
    /// its target port) or a workload IP. `None` when the address is unknown to the mesh.
    pub fn resolve(&self, network: &str, dst: SocketAddr, pick: &Picker) -> Option<Upstream> {
        if let Some(svc) = self.service_by_vip(network, dst.ip()) {
            let candidates = self.endpoints(svc, dst.port(), dst.ip());
            let (w, addr) = candidates.get(pick.next(candidates.len())?)?.clone();
            return Some(Upstream {
                workload: w,
                addr,
                service: Some(svc.clone()),
            });
        }
        let w = self.workload_by_ip(network, dst.ip())?;
        Some(Upstream {
            workload: w.clone(),
            addr: dst,
            service: None,
        })
    }

    /// Where the waypoint of `upstream` is, if it has one: the service's waypoint for traffic
    /// to a service, else the workload's. The waypoint's address (a service VIP or a workload
    /// IP) is resolved like any destination, on its HBONE port.
    pub fn waypoint_for(
        &self,
        upstream: &Upstream,
        pick: &Picker,
    ) -> Option<Result<Upstream, String>> {
        let gw = match &upstream.service {
            Some(svc) => svc.waypoint.as_ref()?,
            None => upstream.workload.waypoint.as_ref()?,
        };
        let resolved = match gw.destination.parse::<NetworkAddress>() {
            Ok(addr) => self.resolve(
                &addr.network,
                SocketAddr::new(addr.address, gw.hbone_mtls_port),
                pick,
            ),
            // `<namespace>/<hostname>`: the waypoint's service by name.
            Err(_) => gw.destination.split_once('/').and_then(|(ns, host)| {
                let svc = self
                    .services
                    .iter()
                    .find(|s| s.namespace == ns && s.hostname == host)?;
                let vip = svc.vips.first()?;
                self.resolve(
                    &vip.network,
                    SocketAddr::new(vip.address, gw.hbone_mtls_port),
                    pick,
                )
            }),
        };
        Some(
            resolved
                .ok_or_else(|| format!("waypoint {} has no reachable workload", gw.destination)),
        )
    }
}

/// The workload's address of the same family as `like`, else its first.
fn pick_ip(w: &Workload, like: IpAddr) -> Option<IpAddr> {
    w.workload_ips
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .or(w.workload_ips.first())
        .copied()
}

/// Round-robin choice among a service's endpoints.
#[derive(Debug, Default)]
pub struct Picker(AtomicUsize);

impl Picker {
    pub fn next(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        Some(self.0.fetch_add(1, Ordering::Relaxed) % n)
    }
}

/// The current state, shared by all tasks, and a signal when it changes.
#[derive(Debug)]
pub struct StateHandle {
    current: RwLock<Arc<State>>,
    version: watch::Sender<u64>,
}

impl Default for StateHandle {
    fn default() -> Self {
        Self::new(State::default())
    }
}

impl StateHandle {
    pub fn new(state: State) -> Self {
        Self {
            current: RwLock::new(Arc::new(state)),
            version: watch::channel(0).0,
        }
    }

    pub fn snapshot(&self) -> Arc<State> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, state: State) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        self.version.send_modify(|v| *v += 1);
    }

    /// Fires after every [`StateHandle::replace`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
