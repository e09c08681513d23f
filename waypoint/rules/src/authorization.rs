//! Istio `AuthorizationPolicy` (`security.istio.io/v1`, `v1beta1`) attached to a waypoint
//! with `targetRefs` (or the older `targetRef`).
//!
//! Skipped (debug log): policies without target refs (a `selector` or a namespace-wide
//! policy is enforced by ztunnel, not by a waypoint), policies that target only other
//! Gateways, and dry-run policies (annotation `istio.io/dry-run: "true"`). Refused by name:
//! actions `AUDIT` and `CUSTOM` (and `provider`), `when`, `requestPrincipals` and
//! `notRequestPrincipals` (no JWT here), `remoteIpBlocks` and `notRemoteIpBlocks`,
//! `serviceAccounts` and `notServiceAccounts`, target kinds other than Service and Gateway,
//! and every other field not in the types below.

use crate::build::Translated;
use crate::error::{FieldError, FieldResult};
use crate::fields::{PortString, Reference, reference};
use crate::load::Context;
use crate::model::{AuthzAction, AuthzRule, L7Policy, ObjectRef, Operation, Source};
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Spec {
    selector: Option<IgnoredAny>,
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    action: Option<ActionSpec>,
    provider: Option<IgnoredAny>,
    /// Absent and empty alike: an ALLOW policy then allows nothing.
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRef {
    group: Option<String>,
    kind: String,
    name: String,
    namespace: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum ActionSpec {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    from: Vec<FromSpec>,
    #[serde(default)]
    to: Vec<ToSpec>,
    when: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromSpec {
    source: SourceSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SourceSpec {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    request_principals: Option<IgnoredAny>,
    not_request_principals: Option<IgnoredAny>,
    remote_ip_blocks: Option<IgnoredAny>,
    not_remote_ip_blocks: Option<IgnoredAny>,
    service_accounts: Option<IgnoredAny>,
    not_service_accounts: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToSpec {
    operation: OperationSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OperationSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<PortString>,
    #[serde(default)]
    not_ports: Vec<PortString>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

pub(crate) fn translate(spec: Spec, cx: &Context<'_>) -> FieldResult<Option<Translated>> {
    let dry_run = cx.metadata.annotations.get("istio.io/dry-run");
    if dry_run.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        tracing::debug!(policy = %cx.object, "skipped: dry-run");
        return Ok(None);
    }
    let action = match spec.action.unwrap_or(ActionSpec::Allow) {
        ActionSpec::Allow => AuthzAction::Allow,
        ActionSpec::Deny => AuthzAction::Deny,
        ActionSpec::Audit => return Err(FieldError::unsupported("spec.action", "action AUDIT")),
        ActionSpec::Custom => return Err(FieldError::unsupported("spec.action", "action CUSTOM")),
    };
    if spec.provider.is_some() {
        return Err(FieldError::new(
            "spec.provider",
            "`provider` belongs only to action CUSTOM",
        ));
    }
    let Some(services) = targets(&spec, cx)? else {
        return Ok(None);
    };
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("spec.rules[{i}]")))
        .collect::<FieldResult<_>>()?;
    Ok(Some(Translated::Policy(L7Policy {
        namespace: cx.object.namespace.clone(),
        name: cx.object.name.clone(),
        action,
        services,
        rules,
    })))
}

/// `Some(None)`: the whole waypoint; `Some(Some(services))`: those; `None`: not ours.
fn targets(spec: &Spec, cx: &Context<'_>) -> FieldResult<Option<Option<Vec<ObjectRef>>>> {
    let (refs, at): (Vec<&TargetRef>, &str) = match (&spec.target_ref, spec.target_refs.is_empty())
    {
        (Some(_), false) => {
            return Err(FieldError::new(
                "spec.targetRef",
                "give `targetRef` or `targetRefs`, not both",
            ));
        }
        (Some(one), true) => (vec![one], "spec.targetRef"),
        (None, _) => (spec.target_refs.iter().collect(), "spec.targetRefs"),
    };
    if refs.is_empty() {
        let why = if spec.selector.is_some() {
            "a selector"
        } else {
            "namespace-wide"
        };
        tracing::debug!(policy = %cx.object, "skipped: {why} policy, enforced by ztunnel");
        return Ok(None);
    }
    let mut services = Vec::new();
    let mut whole = false;
    for (i, t) in refs.iter().enumerate() {
        let t_at = if spec.target_ref.is_some() {
            at.to_owned()
        } else {
            format!("{at}[{i}]")
        };
        if let Some(ns) = &t.namespace
            && *ns != cx.object.namespace
        {
            return Err(FieldError::new(
                format!("{t_at}.namespace"),
                format!("`{ns}`: a target must be in the policy's namespace"),
            ));
        }
        let object = ObjectRef::new(&cx.object.namespace, &t.name);
        match reference(
            t.group.as_deref().unwrap_or(""),
            &t.kind,
            &object,
            cx,
            &t_at,
            "target",
        )? {
            Reference::Service => services.push(object),
            Reference::ThisWaypoint => whole = true,
            Reference::OtherGateway => {}
        }
    }
    if whole {
        Ok(Some(None))
    } else if services.is_empty() {
        tracing::debug!(policy = %cx.object, "skipped: targets only other Gateways");
        Ok(None)
    } else {
        Ok(Some(Some(services)))
    }
}

fn rule(r: &RuleSpec, at: &str) -> FieldResult<AuthzRule> {
    if r.when.is_some() {
        return Err(FieldError::unsupported(format!("{at}.when"), "`when`"));
    }
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(k, f)| source(&f.source, &format!("{at}.from[{k}].source")))
        .collect::<FieldResult<_>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(k, t)| operation(&t.operation, &format!("{at}.to[{k}].operation")))
            .collect::<FieldResult<_>>()?;
    Ok(AuthzRule { from, to })
}

fn source(s: &SourceSpec, at: &str) -> FieldResult<Source> {
    let refused = [
        (s.request_principals.is_some(), "requestPrincipals"),
        (s.not_request_principals.is_some(), "notRequestPrincipals"),
        (s.remote_ip_blocks.is_some(), "remoteIpBlocks"),
        (s.not_remote_ip_blocks.is_some(), "notRemoteIpBlocks"),
        (s.service_accounts.is_some(), "serviceAccounts"),
        (s.not_service_accounts.is_some(), "notServiceAccounts"),
    ];
    if let Some((_, field)) = refused.iter().find(|(set, _)| *set) {
        return Err(FieldError::unsupported(
            format!("{at}.{field}"),
            &format!("`{field}`"),
        ));
    }
    let principals = |list: &[String], field: &str| -> FieldResult<Vec<String>> {
        list.iter()
            .enumerate()
            .map(|(k, p)| {
                let p = p.strip_prefix("spiffe://").unwrap_or(p);
                wildcard(p, &format!("{at}.{field}[{k}]")).map(str::to_owned)
            })
            .collect()
    };
    Ok(Source {
        principals: principals(&s.principals, "principals")?,
        not_principals: principals(&s.not_principals, "notPrincipals")?,
        namespaces: strings(&s.namespaces, &format!("{at}.namespaces"), false)?,
        not_namespaces: strings(&s.not_namespaces, &format!("{at}.notNamespaces"), false)?,
        ip_blocks: ip_blocks(&s.ip_blocks, &format!("{at}.ipBlocks"))?,
        not_ip_blocks: ip_blocks(&s.not_ip_blocks, &format!("{at}.notIpBlocks"))?,
    })
}

fn operation(o: &OperationSpec, at: &str) -> FieldResult<Operation> {
    let paths = |list: &[String], field: &str| -> FieldResult<Vec<String>> {
        for (k, p) in list.iter().enumerate() {
            if p.contains('{') {
                return Err(FieldError::unsupported(
                    format!("{at}.{field}[{k}]"),
                    &format!("the path template `{p}`"),
                ));
            }
        }
        strings(list, &format!("{at}.{field}"), false)
    };
    let ports = |list: &[PortString]| list.iter().map(|p| p.0).collect();
    Ok(Operation {
        hosts: strings(&o.hosts, &format!("{at}.hosts"), true)?,
        not_hosts: strings(&o.not_hosts, &format!("{at}.notHosts"), true)?,
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: strings(&o.methods, &format!("{at}.methods"), false)?,
        not_methods: strings(&o.not_methods, &format!("{at}.notMethods"), false)?,
        paths: paths(&o.paths, "paths")?,
        not_paths: paths(&o.not_paths, "notPaths")?,
    })
}

/// Checks each value's wildcard form; lowercases when the match is case-insensitive.
fn strings(list: &[String], at: &str, lowercase: bool) -> FieldResult<Vec<String>> {
    list.iter()
        .enumerate()
        .map(|(k, v)| {
            let v = wildcard(v, &format!("{at}[{k}]"))?;
            Ok(if lowercase {
                v.to_ascii_lowercase()
            } else {
                v.to_owned()
            })
        })
        .collect()
}

/// Istio's forms: exact, `prefix*`, `*suffix` or `*`; never empty.
fn wildcard<'a>(value: &'a str, field: &str) -> FieldResult<&'a str> {
    let inner = value.strip_prefix('*').unwrap_or(value);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    let both_ends = value.len() > 1 && value.starts_with('*') && value.ends_with('*');
    if value.is_empty() || inner.contains('*') || both_ends {
        return Err(FieldError::new(
            field,
            format!("`{value}`: expected an exact value, `prefix*`, `*suffix` or `*`"),
        ));
    }
    Ok(value)
}

fn ip_blocks(list: &[String], at: &str) -> FieldResult<Vec<IpNet>> {
    list.iter()
        .enumerate()
        .map(|(k, block)| {
            block
                .parse::<IpNet>()
                .or_else(|_| block.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    FieldError::new(
                        format!("{at}[{k}]"),
                        format!("`{block}` is not an IP address or CIDR block"),
                    )
                })
        })
        .collect()
}
