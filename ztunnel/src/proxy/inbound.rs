//! Inbound HBONE (15008): mTLS connections from other agents (or waypoints), each CONNECT
//! stream checked and carried to a local workload.
//!
//! Answers as Istio's ztunnel does: 400 for a method other than CONNECT, an authority that is
//! not an `<ip>:<port>`, or one that is not a local workload reached on its own address; 401
//! when policy denies; 503 when the workload cannot be reached. 200 otherwise, then bytes.

use super::{ProxyInputs, is_own_port};
use crate::hbone::server::{self, IncomingStream};
use crate::metrics::{ConnectionInfo, ConnectionRecord, Direction, Outcome};
use crate::rbac::{self, Connection};
use http::StatusCode;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The HBONE listener.
pub async fn serve(
    inputs: Arc<ProxyInputs>,
    listener: TcpListener,
    drain: tokio::sync::watch::Receiver<bool>,
) {
    let configs = Arc::new(crate::tls::ServerConfigs::default());
    super::accept_loop("hbone", listener, drain, move |stream, peer, drain| {
        let inputs = inputs.clone();
        let configs = configs.clone();
        async move {
            let (tls, td) = match server_tls(&inputs, &configs, &stream) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "no certificate to serve HBONE with");
                    return;
                }
            };
            let handler = {
                let inputs = inputs.clone();
                move |incoming| handle(inputs.clone(), incoming)
            };
            if let Err(e) = server::serve(stream, tls, &td, drain, handler).await {
                tracing::warn!(%peer, error = %e, "HBONE connection failed");
            }
        }
    })
    .await
}

/// The certificate presented is that of the local workload whose address the client reached
/// (dedicated mode: the one workload), with its trust domain, the one clients must be in.
fn server_tls(
    inputs: &ProxyInputs,
    configs: &crate::tls::ServerConfigs,
    stream: &tokio::net::TcpStream,
) -> Result<(Arc<rustls::ServerConfig>, String), String> {
    let local = stream
        .local_addr()
        .map(crate::sys::canonical)
        .map_err(|e| e.to_string())?;
    let state = inputs.state.snapshot();
    let id = match state.workload_by_ip(&inputs.cfg.network, local.ip()) {
        Some(w) if inputs.is_local(w) => w.identity(),
        _ => inputs
            .source(&state)
            .map(|(_, id)| id)
            .ok_or_else(|| format!("{local} is not a local workload"))?,
    };
    Ok((configs.get(&inputs.certs, &id)?, id.trust_domain))
}

fn reject(incoming: IncomingStream, status: StatusCode, why: &str) {
    tracing::event!(
        target: "access",
        tracing::Level::WARN,
        src.addr = %incoming.peer_addr,
        src.identity = %incoming.peer_identity,
        dst.addr = %incoming.local_addr,
        dst.hbone_addr = %incoming.request.uri(),
        direction = "inbound",
        trace_id = incoming.traceparent().map(|t| t.trace_id().to_string()).as_deref(),
        error = %format!("{}: {why}", status.as_u16()),
        "connection failed"
    );
    incoming.reject(status);
}

/// Serves one CONNECT stream.
pub async fn handle(inputs: Arc<ProxyInputs>, incoming: IncomingStream) {
    let authority = match incoming.connect_target() {
        Ok(a) => a,
        Err(why) => return reject(incoming, StatusCode::BAD_REQUEST, &why),
    };
    let state = inputs.state.snapshot();
    let dst_workload = match state.workload_by_ip(&inputs.cfg.network, authority.ip()) {
        Some(w) if inputs.is_local(w) => w.clone(),
        _ => {
            return reject(
                incoming,
                StatusCode::BAD_REQUEST,
                &format!("{} is not a local workload", authority.ip()),
            );
        }
    };
    if !incoming.local_addr.ip().is_unspecified() && incoming.local_addr.ip() != authority.ip() {
        let why = format!(
            "authority {authority} does not match the address reached, {}",
            incoming.local_addr
        );
        return reject(incoming, StatusCode::BAD_REQUEST, &why);
    }
    if is_own_port(authority.port()) {
        return reject(
            incoming,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("port {} belongs to the agent", authority.port()),
        );
    }
    // The source is the outer connection's peer. `forwarded` is the client's own claim: it
    // is logged, never trusted for policy or for the source address we connect from.
    let src_addr = incoming.peer_addr;
    if let Some(claimed) = incoming.forwarded_for()
        && claimed.ip() != src_addr.ip()
    {
        tracing::debug!(%claimed, peer = %src_addr, "forwarded address differs from the peer");
    }
    let conn = Connection {
        src_identity: Some(incoming.peer_identity.clone()),
        src_ip: incoming.peer_addr.ip(),
        dst: authority,
    };
    let info = ConnectionInfo {
        direction: Direction::Inbound,
        src_addr,
        src_workload: state
            .workload_by_ip(&inputs.cfg.network, src_addr.ip())
            .cloned(),
        src_identity: Some(incoming.peer_identity.clone()),
        dst_addr: incoming.local_addr,
        hbone_addr: Some(authority),
        dst_workload: Some(dst_workload.clone()),
        dst_service: state.inbound_service(
            &dst_workload,
            authority.port(),
            incoming.forwarded_host(),
        ),
        dst_identity: Some(dst_workload.identity()),
        mtls: true,
        trace_id: incoming.traceparent().unwrap_or_default().trace_id(),
    };
    let record = ConnectionRecord::open(inputs.metrics.clone(), info);
    if let Err(denied) = rbac::evaluate(state.policies_for(&dst_workload), &conn) {
        incoming.reject(StatusCode::UNAUTHORIZED);
        return record.finish(Outcome::Denied(format!("401 Unauthorized: {denied}")));
    }
    let mut upstream = match super::inbound_passthrough::connect_local(
        &inputs,
        &dst_workload,
        src_addr,
        authority,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            incoming.reject(StatusCode::SERVICE_UNAVAILABLE);
            return record.finish(Outcome::ConnectFailed(format!(
                "503 Service Unavailable: connecting to {authority}: {e}"
            )));
        }
    };
    let mut tunnel = match incoming.accept() {
        Ok(t) => t,
        Err(e) => return record.finish(Outcome::Failed(format!("answering CONNECT: {e}"))),
    };
    let copied = super::inbound_passthrough::copy_under_policy(
        &inputs,
        &dst_workload,
        &conn,
        &mut tunnel,
        &mut upstream,
        &record,
    )
    .await;
    match copied {
        Ok(()) => record.finish(Outcome::Ok),
        Err(outcome) => {
            tunnel.reset();
            super::reset(upstream);
            record.finish(outcome)
        }
    }
}
