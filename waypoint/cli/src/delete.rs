//! `waypoint delete`: deletes waypoints by name, by revision, or all in a namespace.

use std::io::Write;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams};

use crate::args::DeleteArgs;
use crate::client::Session;
use crate::error::{Error, Op, Resource};
use crate::gateway::{REVISION, USE_WAYPOINT, api_resource};

/// Deletes, as istioctl: lists the namespace's Gateways first so that only waypoints (class
/// istio-waypoint) are deleted, and prints `waypoint <ns>/<name> deleted` for each. Unlike
/// istioctl, which prints "not found" and exits 0, a named waypoint that is missing is an error
/// naming it (after the others are deleted); with no names, `--name` (default `waypoint`) is
/// deleted. A namespace still labeled `istio.io/use-waypoint` with a deleted waypoint gets a
/// warning, since its traffic is then pointed at nothing (istioctl says nothing).
///
/// # Errors
/// [`Error::WaypointNotFound`] naming the missing ones; any error of the list or a delete.
pub async fn delete(
    session: &Session,
    args: &DeleteArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let ns = session.namespace.as_str();
    let mut params = ListParams::default();
    if let Some(revision) = &args.revision {
        params = params.labels(&format!("{REVISION}={revision}"));
    }
    let waypoints: Vec<String> = session
        .waypoints(Some(ns), &params)
        .await?
        .into_iter()
        .filter_map(|gw| gw.metadata.name)
        .collect();
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(session.client.clone(), ns, &api_resource());
    let (targets, mut missing) = if args.all || args.revision.is_some() {
        (waypoints, Vec::new())
    } else {
        let wanted = if args.names.is_empty() {
            vec![args.name.clone()]
        } else {
            args.names.clone()
        };
        wanted.into_iter().partition(|n| waypoints.contains(n))
    };
    if targets.is_empty() && missing.is_empty() {
        writeln!(out, "No waypoints found.").map_err(Error::Output)?;
        return Ok(());
    }

    let mut deleted = Vec::new();
    for name in targets {
        let op = Op {
            verb: "delete",
            resource: Resource::Gateways,
            namespace: Some(ns),
            name: Some(&name),
        };
        match gateways.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                writeln!(out, "waypoint {ns}/{name} deleted").map_err(Error::Output)?;
                deleted.push(name);
            }
            Err(e) => match op.classify(&session.server, e) {
                // Deleted by someone else since the list.
                Error::WaypointNotFound { .. } => missing.push(name),
                other => return Err(other),
            },
        }
    }

    if !deleted.is_empty() {
        warn_if_still_used(session, &deleted, out).await?;
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::WaypointNotFound {
            namespace: ns.to_owned(),
            names: missing,
        })
    }
}

/// Best effort: a namespace we may not read is not worth failing a delete that succeeded.
async fn warn_if_still_used(
    session: &Session,
    deleted: &[String],
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let ns = session.namespace.as_str();
    let namespaces: Api<Namespace> = Api::all(session.client.clone());
    let Ok(namespace) = namespaces.get(ns).await else {
        return Ok(());
    };
    let used = namespace
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(USE_WAYPOINT))
        .filter(|used| deleted.contains(used));
    if let Some(used) = used {
        writeln!(
            out,
            "⚠️ Warning: namespace {ns} is still labeled \"{USE_WAYPOINT}: {used}\", a waypoint that \
             no longer exists. Consider running `kubectl label namespace {ns} {USE_WAYPOINT}-`"
        )
        .map_err(Error::Output)?;
    }
    Ok(())
}
