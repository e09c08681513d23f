//! `waypoint apply`: server-side apply of the waypoint Gateway, then optionally waiting for it
//! and enrolling the namespace, in istioctl's order and with its messages.

use std::io::Write;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::json;

use crate::args::ApplyArgs;
use crate::client::Session;
use crate::error::{Error, Op, Resource};
use crate::gateway::{DATAPLANE_MODE, USE_WAYPOINT, Waypoint, api_resource};
use crate::status::wait_programmed;

/// The server-side apply field manager (istioctl uses `istioctl`; this is our CLI).
pub const FIELD_MANAGER: &str = "waypoint";

/// Applies the waypoint in the session's namespace.
///
/// As istioctl: the namespace must exist; `--enroll-namespace` warns when the namespace is not
/// in ambient; the apply does not force, so a field another manager owns is a conflict error.
/// Unlike istioctl, which only prints a warning and exits 0, a namespace already using another
/// waypoint without `--overwrite` is an error, and nothing is applied.
///
/// `args.cluster` is not read here: the session carries the namespace.
///
/// # Errors
/// [`Error`]: namespace not found, Gateway API CRDs missing, forbidden, conflict, wait timeout.
pub async fn apply(
    session: &Session,
    args: &ApplyArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let ns = session.namespace.as_str();
    let waypoint = Waypoint::from_args(&args.waypoint, Some(ns.to_owned()))?;
    let name = waypoint.name.as_str();

    let namespaces: Api<Namespace> = Api::all(session.client.clone());
    let ns_op = Op {
        verb: "get",
        resource: Resource::Namespaces,
        namespace: None,
        name: Some(ns),
    };
    let namespace = namespaces
        .get(ns)
        .await
        .map_err(|e| ns_op.classify(&session.server, e))?;
    let labels = namespace.metadata.labels.unwrap_or_default();
    let current = labels.get(USE_WAYPOINT).filter(|c| !c.is_empty());
    if args.enroll_namespace {
        if let Some(current) = current
            && current != name
            && !args.overwrite
        {
            return Err(Error::NamespaceUsesOtherWaypoint {
                namespace: ns.to_owned(),
                current: current.clone(),
            });
        }
        if labels.get(DATAPLANE_MODE).map(String::as_str) != Some("ambient") {
            writeln!(
                out,
                "⚠️ Warning: namespace is not enrolled in ambient. Consider running \
                 `kubectl label namespace {ns} {DATAPLANE_MODE}=ambient`"
            )
            .map_err(Error::Output)?;
        }
    }

    let gateways: Api<DynamicObject> =
        Api::namespaced_with(session.client.clone(), ns, &api_resource());
    let patch_op = Op {
        verb: "patch",
        resource: Resource::Gateways,
        namespace: Some(ns),
        name: Some(name),
    };
    gateways
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(waypoint.gateway()),
        )
        .await
        .map_err(|e| patch_op.classify(&session.server, e))?;
    writeln!(out, "✅ waypoint {ns}/{name} applied").map_err(Error::Output)?;

    if args.wait {
        wait_programmed(
            session,
            &gateways,
            name,
            args.waypoint_timeout,
            args.poll_interval,
        )
        .await?;
        writeln!(out, "✅ waypoint {ns}/{name} is ready!").map_err(Error::Output)?;
    }

    if args.enroll_namespace {
        if current.map(String::as_str) != Some(name) {
            let label_op = Op {
                verb: "patch",
                ..ns_op
            };
            let patch = json!({"metadata": {"labels": {USE_WAYPOINT: name}}});
            namespaces
                .patch(ns, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(|e| label_op.classify(&session.server, e))?;
        }
        writeln!(
            out,
            "✅ namespace {ns} labeled with \"{USE_WAYPOINT}: {name}\""
        )
        .map_err(Error::Output)?;
    }
    Ok(())
}
