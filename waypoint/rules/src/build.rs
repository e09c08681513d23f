//! Merges the translated objects of every file into one [`Rules`]: refuses duplicates and
//! conflicting route sources, and orders HTTPRoute entries by Gateway API precedence.

use crate::error::{Conflict, RulesError};
use crate::model::{
    Action, L7Policy, ObjectRef, PathMatch, RouteEntry, RouteMatch, Rules, TrafficPolicy,
};
use crate::referencegrant::{Grant, permits};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One translated object and where it came from.
pub(crate) struct Loaded {
    pub file: PathBuf,
    pub kind: String,
    pub object: ObjectRef,
    pub translated: Translated,
}

pub(crate) enum Translated {
    HttpRoute(RouteSet),
    VirtualService(VirtualRoutes),
    DestinationRule {
        service: ObjectRef,
        policy: TrafficPolicy,
    },
    Policy(L7Policy),
    ReferenceGrant(Grant),
}

/// An HTTPRoute's entries (rule order, then match order) and the parents it attaches to.
pub(crate) struct RouteSet {
    pub parents: Vec<Attachment>,
    pub entries: Vec<RouteEntry>,
    /// `metadata.creationTimestamp`, to order routes of equal precedence.
    pub created: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub parent: Parent,
    /// `parentRefs[].port`: the entries match only requests to this port.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parent {
    Service(ObjectRef),
    Waypoint,
}

/// A VirtualService's entries in order (first match wins) and the services it routes.
pub(crate) struct VirtualRoutes {
    pub services: Vec<ObjectRef>,
    pub entries: Vec<RouteEntry>,
}

/// An HTTPRoute entry with what orders it.
struct Ranked {
    specificity: Specificity,
    /// Routes without a timestamp sort after those with one.
    created: (bool, String),
    route: ObjectRef,
    /// Position among all entries loaded: rule order, then match order.
    seq: usize,
    entry: RouteEntry,
}

type Specificity = (
    Reverse<u8>,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
);

/// Gateway API precedence, most specific first: Exact path, then prefixes by length, then
/// regular expressions by length (Istio's order: Exact > Prefix > Regex), then a method, then
/// more header matches, then more query matches.
fn specificity(m: &RouteMatch) -> Specificity {
    let (rank, len) = match &m.path {
        Some(PathMatch::Exact(p)) => (3, p.len()),
        Some(PathMatch::SegmentPrefix(p) | PathMatch::Prefix(p)) => (2, p.len()),
        Some(PathMatch::Regex(r)) => (1, r.as_str().len()),
        None => (2, 1), // The same as PathPrefix "/".
    };
    (
        Reverse(rank),
        Reverse(len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query.len()),
    )
}

/// Where a service's routes come from, for conflict errors.
struct RouteSource {
    kind: String,
    object: ObjectRef,
    file: PathBuf,
}

pub(crate) fn build(loaded: Vec<Loaded>) -> Result<Rules, RulesError> {
    let grants: Vec<Grant> = loaded
        .iter()
        .filter_map(|item| match &item.translated {
            Translated::ReferenceGrant(g) => Some(g.clone()),
            _ => None,
        })
        .collect();
    let mut rules = Rules::default();
    let mut seen: BTreeMap<(String, ObjectRef), PathBuf> = BTreeMap::new();
    let mut sources: BTreeMap<ObjectRef, RouteSource> = BTreeMap::new();
    let mut traffic_sources: BTreeMap<ObjectRef, (ObjectRef, PathBuf)> = BTreeMap::new();
    let mut ranked: BTreeMap<Option<ObjectRef>, Vec<Ranked>> = BTreeMap::new();
    let mut seq = 0;
    for item in loaded {
        let conflict = |other_file: &PathBuf, message: String| {
            RulesError::Conflict(Box::new(Conflict {
                file: item.file.clone(),
                kind: item.kind.clone(),
                object: item.object.clone(),
                other_file: other_file.clone(),
                message,
            }))
        };
        let key = (item.kind.clone(), item.object.clone());
        if let Some(other) = seen.get(&key) {
            return Err(conflict(other, "defined twice".into()));
        }
        seen.insert(key, item.file.clone());
        match item.translated {
            Translated::HttpRoute(set) => {
                let entries: Vec<RouteEntry> = set
                    .entries
                    .iter()
                    .map(|e| granted(e, &item.object, &grants))
                    .collect();
                for attachment in &set.parents {
                    let service = match &attachment.parent {
                        Parent::Service(service) => Some(service.clone()),
                        Parent::Waypoint => None,
                    };
                    if let Some(service) = &service {
                        claim(&mut sources, service, &item.kind, &item.object, &item.file)
                            .map_err(|(f, m)| conflict(&f, m))?;
                    }
                    for entry in &entries {
                        let mut entry = entry.clone();
                        entry.matcher.port = attachment.port;
                        seq += 1;
                        ranked.entry(service.clone()).or_default().push(Ranked {
                            specificity: specificity(&entry.matcher),
                            created: match &set.created {
                                Some(t) => (false, t.clone()),
                                None => (true, String::new()),
                            },
                            route: item.object.clone(),
                            seq,
                            entry,
                        });
                    }
                }
            }
            Translated::VirtualService(vs) => {
                for service in vs.services {
                    claim(&mut sources, &service, &item.kind, &item.object, &item.file)
                        .map_err(|(f, m)| conflict(&f, m))?;
                    rules.routes.insert(service, vs.entries.clone());
                }
            }
            Translated::DestinationRule { service, policy } => {
                if let Some((other, file)) = traffic_sources.get(&service) {
                    let message = format!(
                        "service {service} already has DestinationRule {other}; merge them"
                    );
                    return Err(conflict(file, message));
                }
                traffic_sources.insert(service.clone(), (item.object.clone(), item.file.clone()));
                rules.traffic.insert(service, policy);
            }
            Translated::Policy(policy) => rules.authz.push(policy),
            Translated::ReferenceGrant(_) => {}
        }
    }
    for (parent, mut entries) in ranked {
        entries.sort_by(|a, b| {
            (&a.specificity, &a.created, &a.route, a.seq).cmp(&(
                &b.specificity,
                &b.created,
                &b.route,
                b.seq,
            ))
        });
        let entries = entries.into_iter().map(|r| r.entry).collect();
        match parent {
            Some(service) => {
                rules.routes.insert(service, entries);
            }
            None => rules.gateway_routes = entries,
        }
    }
    Ok(rules)
}

/// `entry` of HTTPRoute `route` with what no ReferenceGrant permits taken out: a backend in
/// another namespace is marked refused (its requests get 500), a mirror there is dropped.
fn granted(entry: &RouteEntry, route: &ObjectRef, grants: &[Grant]) -> RouteEntry {
    let allowed = |service: &ObjectRef| permits(grants, &route.namespace, service);
    let rule = &entry.rule;
    let refuses = match &rule.action {
        Action::Forward(backends) => backends.iter().any(|b| !allowed(&b.service)),
        _ => false,
    };
    if !refuses && rule.mirrors.iter().all(|m| allowed(&m.service)) {
        return entry.clone();
    }
    let mut rule = (**rule).clone();
    if let Action::Forward(backends) = &mut rule.action {
        for b in backends.iter_mut().filter(|b| !allowed(&b.service)) {
            b.refused = Some(format!(
                "no ReferenceGrant in namespace {} lets HTTPRoute {route} use Service {}",
                b.service.namespace, b.service
            ));
        }
    }
    rule.mirrors.retain(|m| {
        let ok = allowed(&m.service);
        if !ok {
            tracing::warn!(%route, service = %m.service, "mirror not sent: no ReferenceGrant permits it");
        }
        ok
    });
    RouteEntry {
        matcher: entry.matcher.clone(),
        rule: std::sync::Arc::new(rule),
    }
}

/// Records that `object` routes `service`. HTTPRoutes merge with each other; a VirtualService
/// must be the only source of a service's routes (Istio uses one VirtualService per host and
/// does not define mixing them with HTTPRoutes).
fn claim(
    sources: &mut BTreeMap<ObjectRef, RouteSource>,
    service: &ObjectRef,
    kind: &str,
    object: &ObjectRef,
    file: &std::path::Path,
) -> Result<(), (PathBuf, String)> {
    if let Some(other) = sources.get(service) {
        let both_routes = other.kind == "HTTPRoute" && kind == "HTTPRoute";
        if !both_routes && other.object != *object {
            return Err((
                other.file.clone(),
                format!(
                    "service {service} already has routes from {} {}; a service takes \
                     HTTPRoutes or one VirtualService",
                    other.kind, other.object
                ),
            ));
        }
        return Ok(());
    }
    sources.insert(
        service.clone(),
        RouteSource {
            kind: kind.to_owned(),
            object: object.clone(),
            file: file.to_owned(),
        },
    );
    Ok(())
}
