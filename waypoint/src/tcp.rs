//! A tunnel that is not HTTP: carried as TCP to one endpoint of its service, under the L4
//! parts of the waypoint's authorization policies.

use crate::Waypoint;
use crate::server::Tunnel;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies `io` to an endpoint and back.
pub async fn passthrough<S>(
    wp: Arc<Waypoint>,
    tunnel: Arc<Tunnel>,
    authority: SocketAddr,
    mut io: S,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let rules = wp.rules.snapshot();
    if let Err(denied) = rules.authorize_tcp(&tunnel.target, &tunnel.peer(), tunnel.port) {
        tracing::event!(target: "access", tracing::Level::WARN, src.identity = %tunnel.peer_identity, %authority, error = %denied, "TCP connection denied");
        return;
    }
    let state = wp.state.snapshot();
    let endpoint = match &tunnel.service {
        Some(svc) => {
            let traffic = rules
                .traffic
                .get(&tunnel.target)
                .map(|t| t.load_balancer)
                .unwrap_or_default();
            let candidates = wp.endpoints.candidates(&state, svc, tunnel.port, None);
            wp.endpoints.pick(&candidates, traffic, &[])
        }
        None => state
            .workload_by_ip(&wp.cfg.network, authority.ip())
            .map(|w| wp.endpoints.workload(w.clone(), authority)),
    };
    let Some(ep) = endpoint else {
        tracing::event!(target: "access", tracing::Level::WARN, %authority, "TCP connection: no healthy endpoint");
        return;
    };
    let mut upstream = match wp
        .connections
        .dial(&ep, Some(tunnel.client_addr), None)
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::event!(target: "access", tracing::Level::WARN, %authority, error = %e, "TCP connection failed");
            return;
        }
    };
    let result = tokio::io::copy_bidirectional(&mut io, &mut upstream).await;
    match result {
        Ok((up, down)) => tracing::event!(
            target: "access",
            tracing::Level::INFO,
            src.identity = %tunnel.peer_identity,
            %authority,
            dst.addr = %ep.addr,
            bytes_received = up,
            bytes_sent = down,
            "TCP connection complete"
        ),
        Err(e) => {
            tracing::event!(target: "access", tracing::Level::INFO, %authority, error = %e, "TCP connection ended")
        }
    }
}
