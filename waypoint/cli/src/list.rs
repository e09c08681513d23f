//! `waypoint list`: the waypoints of a namespace, or of all, as istioctl's table.

use std::io::Write;

use kube::api::ListParams;

use crate::args::ListArgs;
use crate::client::Session;
use crate::error::Error;
use crate::gateway::{REVISION, WAYPOINT_FOR, label, programmed};
use crate::table;

/// Prints `[NAMESPACE] NAME REVISION TRAFFIC TYPE PROGRAMMED`, sorted by namespace and name.
/// A Gateway without `istio.io/waypoint-for` shows `service`, what istiod applies for it
/// (istioctl shows `none`, which reads as "unused").
///
/// # Errors
/// [`Error::GatewayApiMissing`], [`Error::Forbidden`], [`Error::Unreachable`], ...
pub async fn list(
    session: &Session,
    args: &ListArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let namespace = (!args.all_namespaces).then_some(session.namespace.as_str());
    let mut waypoints = session.waypoints(namespace, &ListParams::default()).await?;
    if waypoints.is_empty() {
        writeln!(out, "No waypoints found.").map_err(Error::Output)?;
        return Ok(());
    }
    waypoints.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });

    let mut header = vec!["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"];
    if args.all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for gw in &waypoints {
        let mut row = Vec::with_capacity(5);
        if args.all_namespaces {
            row.push(gw.metadata.namespace.clone().unwrap_or_default());
        }
        row.push(gw.metadata.name.clone().unwrap_or_default());
        row.push(label(gw, REVISION).unwrap_or("default").to_owned());
        row.push(label(gw, WAYPOINT_FOR).unwrap_or("service").to_owned());
        row.push(programmed(gw).map_or_else(|| "False".to_owned(), |c| c.status));
        rows.push(row);
    }
    out.write_all(table::render(&rows).as_bytes())
        .map_err(Error::Output)
}
