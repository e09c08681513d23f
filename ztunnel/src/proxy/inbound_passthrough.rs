//! Inbound plaintext (15006): connections from clients outside the mesh to a local workload,
//! subject to policy (they carry no identity). Also the pieces every inbound path shares:
//! connecting to the local workload and copying while policy keeps allowing.

use super::{ProxyInputs, copy, is_own_port, reset};
use crate::metrics::{ConnectionInfo, ConnectionRecord, Direction, Outcome};
use crate::rbac::{self, Connection};
use crate::state::Workload;
use crate::traceparent::TraceParent;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(
    inputs: Arc<ProxyInputs>,
    listener: TcpListener,
    drain: tokio::sync::watch::Receiver<bool>,
) {
    super::accept_loop(
        "inbound plaintext",
        listener,
        drain,
        move |stream, peer, _| {
            let inputs = inputs.clone();
            async move { handle(inputs, stream, peer).await }
        },
    )
    .await
}

async fn handle(inputs: Arc<ProxyInputs>, mut client: TcpStream, peer: SocketAddr) {
    // `peer` and the original destination come canonical (IPv4 as IPv4) from the accept loop.
    let Some(dst) = inputs.original_dst(&client) else {
        return reset(client);
    };
    let state = inputs.state.snapshot();
    let dst_workload = match state.workload_by_ip(&inputs.cfg.network, dst.ip()) {
        Some(w) if inputs.is_local(w) && !is_own_port(dst.port()) => w.clone(),
        _ => {
            tracing::event!(target: "access", tracing::Level::WARN, src.addr = %peer, dst.addr = %dst, direction = "inbound", error = "not a local workload", "connection failed");
            return reset(client);
        }
    };
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst,
    };
    let info = ConnectionInfo {
        direction: Direction::Inbound,
        src_addr: peer,
        src_workload: state
            .workload_by_ip(&inputs.cfg.network, peer.ip())
            .cloned(),
        src_identity: None,
        dst_addr: dst,
        hbone_addr: None,
        dst_workload: Some(dst_workload.clone()),
        dst_service: state.inbound_service(&dst_workload, dst.port(), None),
        dst_identity: None,
        mtls: false,
        trace_id: TraceParent::new().trace_id(),
    };
    let record = ConnectionRecord::open(inputs.metrics.clone(), info);
    if let Err(denied) = rbac::evaluate(state.policies_for(&dst_workload), &conn) {
        record.finish(Outcome::Denied(denied.to_string()));
        return reset(client);
    }
    let mut upstream = match connect_local(&inputs, &dst_workload, peer, dst).await {
        Ok(s) => s,
        Err(e) => {
            record.finish(Outcome::ConnectFailed(format!("connecting to {dst}: {e}")));
            return reset(client);
        }
    };
    match copy_under_policy(
        &inputs,
        &dst_workload,
        &conn,
        &mut client,
        &mut upstream,
        &record,
    )
    .await
    {
        Ok(()) => record.finish(Outcome::Ok),
        Err(outcome) => {
            record.finish(outcome);
            reset(upstream);
            reset(client);
        }
    }
}

/// Connects to `dst`, an address of the local workload `workload`, from the original client's
/// address `src` when `ENABLE_ORIG_SRC` is on (the default in shared mode, where the pod's
/// namespace was set up for it; in dedicated mode the node's routing must bring the replies
/// back).
pub async fn connect_local(
    inputs: &ProxyInputs,
    workload: &Workload,
    src: SocketAddr,
    dst: SocketAddr,
) -> std::io::Result<TcpStream> {
    if !inputs.cfg.enable_orig_src || src.is_ipv4() != dst.is_ipv4() {
        return inputs.dialer.dial(dst).await;
    }
    match (&inputs.dialer.netns, &inputs.orig_src) {
        // A pod calling itself, from any of its addresses: the source is its own anyway, and
        // a socket kept to `lo` would not take replies routed by the pod's own addresses.
        (Some(_), Some(installed))
            if installed.covers(dst) && !workload.workload_ips.contains(&src.ip()) =>
        {
            inputs
                .dialer
                .dial_from(dst, src, Some(mesh_common::ORIG_SRC_MARK))
                .await
        }
        // A pod whose namespace could not be set up: from the pod's own address.
        (Some(_), _) => inputs.dialer.dial(dst).await,
        (None, _) => {
            inputs
                .dialer
                .dial_from(dst, src, inputs.cfg.packet_mark)
                .await
        }
    }
}

/// Copies between the client side and the workload until done, re-checking policy whenever
/// the state changes: a connection that a new policy denies is cut.
pub async fn copy_under_policy<D, U>(
    inputs: &ProxyInputs,
    dst_workload: &Workload,
    conn: &Connection,
    downstream: &mut D,
    upstream: &mut U,
    record: &ConnectionRecord,
) -> Result<(), Outcome>
where
    D: copy::Source + copy::Sink,
    U: copy::Source + copy::Sink,
{
    let mut changes = inputs.state.subscribe();
    // The state may have changed since the first check: look once more at the start.
    changes.mark_changed();
    let copy = copy::bidirectional(downstream, upstream, &record.bytes);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            r = &mut copy => return r.map_err(|e| Outcome::Failed(e.to_string())),
            Ok(()) = changes.changed() => {
                let state = inputs.state.snapshot();
                let w = state.workload_by_uid(&dst_workload.uid).cloned();
                let verdict = match &w {
                    Some(w) => rbac::evaluate(state.policies_for(w), conn),
                    None => Err(rbac::Denied::Explicit("destination workload removed".into())),
                };
                if let Err(denied) = verdict {
                    tracing::info!(dst = %conn.dst, reason = %denied, "policy changed: closing open connection");
                    return Err(Outcome::Denied(format!("401 Unauthorized (re-check): {denied}")));
                }
            }
        }
    }
}
