//! `waypoint status`: the waypoints' status conditions, and the readiness wait that `apply
//! --wait` shares.

use std::io::Write;
use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, ListParams};
use tokio::time::Instant;

use crate::args::StatusArgs;
use crate::client::Session;
use crate::error::{Error, Op, Resource};
use crate::gateway::{Condition, api_resource, conditions, is_waypoint, programmed};
use crate::table;

/// Prints `NAME STATUS TYPE REASON MESSAGE`, one row per condition of each waypoint (istioctl
/// prints only the last or the Programmed one; every condition says more, e.g. why it is not
/// Accepted). Without `--name`, every waypoint in the namespace, as istioctl.
///
/// # Errors
/// [`Error::WaypointNotFound`] for a `--name` that is missing or not a waypoint;
/// [`Error::WaitTimeout`] with `--wait`; any error of the get or list.
pub async fn status(
    session: &Session,
    args: &StatusArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let ns = session.namespace.as_str();
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(session.client.clone(), ns, &api_resource());
    let mut found = match &args.name {
        Some(name) => {
            let op = Op {
                verb: "get",
                resource: Resource::Gateways,
                namespace: Some(ns),
                name: Some(name),
            };
            let gw = gateways
                .get(name)
                .await
                .map_err(|e| op.classify(&session.server, e))?;
            if !is_waypoint(&gw) {
                return Err(Error::WaypointNotFound {
                    namespace: ns.to_owned(),
                    names: vec![name.clone()],
                });
            }
            vec![gw]
        }
        None => {
            let mut all = session.waypoints(Some(ns), &ListParams::default()).await?;
            all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            all
        }
    };
    if found.is_empty() {
        writeln!(out, "No waypoints found.").map_err(Error::Output)?;
        return Ok(());
    }
    if args.wait {
        for gw in &mut found {
            let name = gw.metadata.name.clone().unwrap_or_default();
            *gw = wait_programmed(
                session,
                &gateways,
                &name,
                args.waypoint_timeout,
                args.poll_interval,
            )
            .await?;
        }
    }
    let mut rows = vec![cells(["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"])];
    for gw in &found {
        let name = gw.metadata.name.clone().unwrap_or_default();
        let mut conds = conditions(gw);
        if conds.is_empty() {
            conds.push(Condition {
                status: "Unknown".into(),
                message: "no status yet (is istiod running?)".into(),
                ..Condition::default()
            });
        }
        for c in conds {
            rows.push(vec![name.clone(), c.status, c.type_, c.reason, c.message]);
        }
    }
    out.write_all(table::render(&rows).as_bytes())
        .map_err(Error::Output)
}

fn cells<const N: usize>(texts: [&str; N]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

/// Polls the Gateway until its `Programmed` condition is `True`, as istioctl does (no watch, so
/// no `runtime` feature). Returns the Gateway as last read.
///
/// # Errors
/// [`Error::WaitTimeout`] with the last Programmed condition seen; any error of the GET.
pub(crate) async fn wait_programmed(
    session: &Session,
    gateways: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<DynamicObject, Error> {
    let ns = session.namespace.as_str();
    let op = Op {
        verb: "get",
        resource: Resource::Gateways,
        namespace: Some(ns),
        name: Some(name),
    };
    let start = Instant::now();
    loop {
        let gw = gateways
            .get(name)
            .await
            .map_err(|e| op.classify(&session.server, e))?;
        let condition = programmed(&gw);
        if condition.as_ref().is_some_and(|c| c.status == "True") {
            return Ok(gw);
        }
        if start.elapsed() >= timeout {
            return Err(Error::WaitTimeout {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                timeout,
                last: condition
                    .map(|c| format!("Programmed={} {}: {}", c.status, c.reason, c.message)),
            });
        }
        tokio::time::sleep(interval).await;
    }
}
